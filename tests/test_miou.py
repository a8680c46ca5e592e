"""The ``miou`` evaluator against brute force: mmseg 0.14's per-image intersections and unions summed over the
split, nan-mean over classes with a union, x100; aAcc; 255 ignored; padding rows of the last batch masked out;
whole-image batches (jitted) and sliding windows giving the same counts.

The model is a pixelwise stand-in (class scores from each pixel's red value), so the brute force can compute
its prediction directly; the real Segmenter runs through the evaluator in tests/test_seg_wiring.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax.data.segmentation import normalize
from cast_jax.evaluators import EvalContext, build
from cast_jax.evaluators.miou import confusion_matrix, confusion_matrix_numpy, scores
from cast_jax.train import inputs, sharding
from cast_jax.train.config_lib import load_config_file
from conftest import REPO_ROOT

CENTRES = np.linspace(-2.0, 2.0, 9).astype(np.float32)


class PixelwiseModel:
  """apply(variables, images (B, H, W, 3), superpixels, train) -> {'masks': (B, H, W, 9)}: class c scores
  -(red - CENTRES[c])^2 (a pixelwise rule, so sliding windows average identical values)."""

  def apply(self, variables, images, superpixels, train=False):
    del variables, superpixels, train
    return {'masks': -(images[..., :1] - jnp.asarray(CENTRES)) ** 2}


def brute_force(config, split: str, num_classes: int = 9) -> dict[str, float]:
  """mmseg 0.14 ``eval_metrics``: per-image areas by loops over classes, summed, then IoU and nan-mean."""
  source = inputs.make_source(config.data, split)
  inter, union, label_area = (np.zeros(num_classes) for _ in range(3))
  total = correct = 0
  for i in range(len(source)):
    example = source[i]
    red = normalize(np.asarray(example['image']))[..., 0]
    prediction = np.argmax(-(red[..., None] - CENTRES) ** 2, -1)
    label = np.asarray(example['label_map']).astype(np.int64)
    valid = label != 255
    for c in range(num_classes):
      p, l = (prediction == c) & valid, (label == c) & valid
      inter[c] += np.sum(p & l)
      union[c] += np.sum(p | l)
      label_area[c] += np.sum(l)
    total += valid.sum()
    correct += np.sum((prediction == label) & valid)
  with np.errstate(divide='ignore', invalid='ignore'):
    return {'miou': np.nanmean(inter / union) * 100, 'macc': np.nanmean(inter / label_area) * 100,
            'aacc': correct / total * 100}


def evaluator(config, **options):
  config.evals.miou.update(options)
  context = EvalContext(config, PixelwiseModel(), sharding.make_mesh(1), uses_superpixels=True)
  (ev,) = build(config, context)
  return ev


@pytest.fixture()
def config():
  return load_config_file(REPO_ROOT / 'configs' / 'seg_demo.py:test')  # 6 PartWorld validation images, 64 px


def test_confusion_matrix_under_jit_matches_counting():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, (3, 7, 6))
  labels[rng.random(labels.shape) < 0.2] = 255
  predictions = rng.integers(0, 5, (3, 7, 6))
  valid = np.array([True, False, True])
  got = jax.jit(confusion_matrix, static_argnums=2)(labels, predictions, 5, valid[:, None, None])
  expected = np.zeros((5, 5), np.int64)
  for b, y, x in np.ndindex(labels.shape):
    if valid[b] and labels[b, y, x] != 255:
      expected[labels[b, y, x], predictions[b, y, x]] += 1
  np.testing.assert_array_equal(np.asarray(got), expected)
  np.testing.assert_array_equal(confusion_matrix_numpy(labels[valid], predictions[valid], 5), expected)


def test_scores_follow_mmseg():
  confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2: no label, no prediction -> no union
  result = scores(confusion)
  iou = [5 / (6 + 7 - 5), 3 / (5 + 4 - 3)]
  assert result['miou'] == pytest.approx(np.mean(iou) * 100)
  assert result['aacc'] == pytest.approx(8 / 11 * 100)
  assert result['macc'] == pytest.approx((5 / 6 + 3 / 5) / 2 * 100)


@pytest.mark.parametrize('batch_size', [4, 2])
def test_whole_images_in_batches_match_brute_force(config, batch_size):
  """6 images in jitted batches of 4 (the second has 2 padding rows) or of 2 (no padding): the same counts."""
  ev = evaluator(config, batch_size=batch_size)
  result, _ = ev.run({'params': {}}, step=0)
  expected = brute_force(config, config.data.eval_split)
  assert result['num_examples'] == 6
  for key in ('miou', 'macc', 'aacc'):
    assert result[key] == pytest.approx(expected[key], rel=1e-12), key


def test_sliding_windows_match_brute_force(config):
  """A 48 px window with stride 16 over the 64 px images: 4 windows each, averaged; same prediction."""
  ev = evaluator(config, window=48, stride=16, window_batch=3)
  result, _ = ev.run({'params': {}}, step=0)
  expected = brute_force(config, config.data.eval_split)
  for key in ('miou', 'macc', 'aacc'):
    assert result[key] == pytest.approx(expected[key], rel=1e-12), key


def test_label_outside_the_classes_is_refused(config):
  ev = evaluator(config, num_classes=3)  # PartWorld's object maps hold ids up to 8
  with pytest.raises(ValueError, match=r'validation example \d+: label map holds class ids .* outside \[0, 3\)'):
    ev.run({'params': {}}, step=0)
