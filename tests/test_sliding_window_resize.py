"""``sliding_window.bilinear_resize`` and ``loading.resample_position_table``: separable resizes that stay fast at
real sizes (a three-operand ``np.einsum`` once made the ADE20K sliding window take hours per image)."""

from __future__ import annotations

import time

import numpy as np

from cast_jax.loading import resample_position_table
from cast_jax.models.resize import interpolation_matrix
from cast_jax.sliding_window import bilinear_resize


def test_bilinear_resize_is_the_interpolation_matrices_on_both_axes():
  x = np.random.default_rng(0).normal(size=(16, 24, 5)).astype(np.float32)
  rh, rw = interpolation_matrix(16, 21, 'bilinear'), interpolation_matrix(24, 37, 'bilinear')
  want = np.einsum('Hh,hwc,Ww->HWc', rh, x.astype(np.float64), rw)
  got = bilinear_resize(x, (21, 37))
  assert got.dtype == np.float32 and got.shape == (21, 37, 5)
  np.testing.assert_allclose(got, want, atol=1e-6)
  # Upsampling by exactly 2 interpolates halfway rows with weights 1/4 and 3/4 (align_corners=False).
  ramp = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 3, 1), np.float32)
  np.testing.assert_allclose(bilinear_resize(ramp, (8, 3))[:, 0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])


def test_a_full_size_window_grid_resizes_in_seconds():
  """The ADE20K evaluation's merge: 150 class logits on a 512 x 683 grid. The single-einsum version looped over
  ~3.6e13 index combinations here; the separable one needs ~6e10 multiply-adds."""
  grid = np.random.default_rng(1).normal(size=(256, 342, 150)).astype(np.float32)
  start = time.perf_counter()
  out = bilinear_resize(grid, (512, 683))
  assert time.perf_counter() - start < 60.0
  assert out.shape == (512, 683, 150) and np.isfinite(out).all()
  np.testing.assert_array_equal(bilinear_resize(grid, grid.shape[:2]), grid)  # the identity resize is exact


def test_position_table_resample_matches_the_direct_formula():
  rng = np.random.default_rng(2)
  table = rng.normal(size=(1, 1 + 28 * 28, 8)).astype(np.float32)
  got = resample_position_table(table, (1, 1 + 64 * 64, 8), extra_tokens=1)
  matrix = interpolation_matrix(28, 64, 'bicubic')
  grid = table[0, 1:].astype(np.float64).reshape(28, 28, 8)
  want = np.einsum('Hh,hwd,Ww->HWd', matrix, grid, matrix).reshape(1, 64 * 64, 8).astype(np.float32)
  np.testing.assert_array_equal(got[:, :1], table[:, :1])
  np.testing.assert_allclose(got[:, 1:], want, atol=1e-6)
