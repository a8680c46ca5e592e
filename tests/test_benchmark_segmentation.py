"""``python -m cast_jax.benchmark --only seg_train_step --only sliding_window`` in CI's tiny sizes: both run through
the command line and report sensible numbers (a finite loss, the windows an image of that size needs)."""

from __future__ import annotations

import json
import math

import pytest

from cast_jax import benchmark

TINY = ['--seg-crop', '64', '--seg-batch', '2', '--seg-clusters', '8,4,2,1', '--seg-classes', '4',
        '--seg-image', '64x90', '--repeats', '1']


@pytest.mark.slow
def test_segmentation_benchmarks_in_tiny_mode(capsys):
  """Slow (four compilations of the small-width model, ~70 s of CPU): run with -m slow."""
  assert benchmark.main(['--only', 'seg_train_step', '--only', 'sliding_window'] + TINY) == 0
  step, window = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert step['name'] == 'seg_train_step' and (step['batch'], step['crop'], step['superpixels']) == (2, 64, 16)
  assert step['images_per_s'] > 0 and step['compile_s'] > 0 and math.isfinite(step['loss'])
  assert 0.5 * math.log(4) < step['loss'] < 3 * math.log(4)  # near chance for random weights and labels
  assert window['name'] == 'sliding_window' and (window['window'], window['stride']) == (64, 32)
  assert window['windows'] == 2  # anchors along 90 px: [0, 26]
  assert window['image_s'] > 0 and 0 < window['seeds_s_per_image'] < window['image_s']
