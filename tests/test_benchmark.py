"""``python -m cast_jax.benchmark``: each model measurement runs and reports sensible fields (tiny sizes)."""

from __future__ import annotations

import pytest

from cast_jax import benchmark


def test_forward_reports_speed_and_flop_rate():
  result = benchmark.bench_forward('small', batch=2, image_size=64, num_superpixels=64, repeats=1, dtype='float32')
  assert result['name'] == 'forward' and result['images_per_s'] > 0 and result['compile_s'] > 0
  assert result['gflops_per_s'] is not None and result['gflops_per_s'] > 0


def test_matmul_ceiling():
  result = benchmark.bench_matmul(repeats=1)
  assert result['shape'] == '6304x384 @ 384x1536' and result['gflops_per_s'] > 0


def test_grid_superpixels_must_be_square():
  with pytest.raises(ValueError, match='square number'):
    benchmark.bench_train_step('small', batch=2, image_size=64, num_superpixels=66, repeats=1, dtype='float32')
