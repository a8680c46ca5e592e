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
from cast_jax.evaluators.miou import confusion_matrix, confusion_matrix_numpy, scores, sum_over_processes
from cast_jax.sliding_window import SlidingWindow, sliding_window_inference
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


def torch_bilinear(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """(H, W, C) -> out_hw as PyTorch's CPU ``upsample_bilinear2d`` (align_corners=False, no antialias) writes it,
  tap by tap in float32: src = scale (dst + 0.5) - 0.5 clamped at 0, i1 = i0 + 1 inside the image,
  out = l0h (l0w x00 + l1w x01) + l1h (l0w x10 + l1w x11). Independent of ``interpolation_matrix``."""
  x = np.asarray(x, np.float32)

  def taps(in_size, out_size):
    src = np.float32(in_size / out_size) * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = src.astype(np.int64)
    i1 = i0 + (i0 < in_size - 1)
    l1 = src - i0.astype(np.float32)
    return i0, i1, np.float32(1) - l1, l1

  h0, h1, lh0, lh1 = taps(x.shape[0], out_hw[0])
  w0, w1, lw0, lw1 = taps(x.shape[1], out_hw[1])
  lh0, lh1, lw0, lw1 = lh0[:, None, None], lh1[:, None, None], lw0[None, :, None], lw1[None, :, None]
  top = lw0 * x[h0][:, w0] + lw1 * x[h0][:, w1]
  bottom = lw0 * x[h1][:, w0] + lw1 * x[h1][:, w1]
  return lh0 * top + lh1 * bottom


def pixelwise_scores(grid_red: np.ndarray) -> np.ndarray:
  """PixelwiseModel's (H, W, 9) logits of a red channel."""
  return -(grid_red[..., None] - CENTRES) ** 2


def test_sliding_window_resizes_the_merged_grid_once_to_out_size():
  """``out_size`` (the original size): the window grid's merged logits go straight to it, as merge_windows to
  ori_shape, not through the given (already resized) image's size."""
  rng = np.random.default_rng(3)
  settings = SlidingWindow(window=32, stride=24, window_batch=2)
  image = rng.standard_normal((20, 30, 3)).astype(np.float32)  # upsampled to a 32 x 48 grid
  out = sliding_window_inference(lambda x, s: x, image, settings, out_size=(27, 41))
  grid = torch_bilinear(image, (32, 48))
  direct = torch_bilinear(grid, (27, 41))
  np.testing.assert_allclose(out['merged_logits'], direct, atol=1e-5)
  assert out['prediction'].shape == (27, 41)
  twice = torch_bilinear(torch_bilinear(grid, (20, 30)), (27, 41))
  assert np.abs(twice - direct).max() > 1e-2  # the old double resize is another function
  with pytest.raises(ValueError, match='out_size must be a positive'):
    sliding_window_inference(lambda x, s: x, image, settings, out_size=(0, 41))


def test_rescaled_image_is_scored_on_logits_resized_once_to_the_original_size(config):
  """The recipe shrinks the 64 px PartWorld images to 40 px (img_scale (80, 40)); the 48 px window upsamples
  that to a 48 px grid; the merged grid logits go once to 64 px, softmax, argmax (the original's path). The
  evaluator's counts equal that reference exactly, and differ from the old 48 -> 40 -> 64 double resize."""
  config.data.img_scale = (80, 40)
  ev = evaluator(config, window=48, stride=16, window_batch=2)
  got = ev.confusion({'params': {}})
  assert got.dtype == np.int64
  source = inputs.make_source(config.data, config.data.eval_split)
  direct, twice = (np.zeros((9, 9), np.int64) for _ in range(2))
  differing = 0
  for i in range(len(source)):
    example = ev._example(source, i)  # pylint: disable=protected-access
    resized, label = example['image'], example['label_map']
    assert resized.shape[:2] == (40, 40) and label.shape == (64, 64)
    logits = pixelwise_scores(torch_bilinear(resized, (48, 48))[..., 0])
    once = torch_bilinear(logits, (64, 64))
    top2 = np.sort(once, -1)[..., -2:]
    # No near-ties (logits up to ~18, float32 steps ~2e-6): the order of float operations cannot flip an argmax.
    assert (top2[..., 1] - top2[..., 0]).min() > 2e-5
    prediction = jax.nn.softmax(once, -1).argmax(-1)
    old = torch_bilinear(torch_bilinear(logits, (40, 40)), (64, 64)).argmax(-1)
    direct += confusion_matrix_numpy(label, prediction, 9)
    twice += confusion_matrix_numpy(label, old, 9)
    differing += int(((prediction != old) & (label != 255)).sum())
  np.testing.assert_array_equal(got, direct)
  assert differing > 0 and not np.array_equal(direct, twice)
  assert scores(direct)['miou'] != pytest.approx(scores(twice)['miou'], rel=1e-6)  # run() scores the counts


def test_counts_summed_over_processes_exactly_beyond_int32():
  """Three processes whose counts exceed 2^31: a gather that casts to int32 (jax without x64) would wrap them;
  the two-digit gather recombines them exactly in int64."""
  per_process = np.array([[[3_000_000_000, 7], [0, 2**31]], [[2**31 - 1, 1], [5, 0]],
                          [[1 << 40, 0], [123, 2**33 + 9]]], np.int64)
  sent = []  # what each process puts on the wire: one gather per process, here each alone

  def alone(x):
    sent.append(x)
    return np.asarray(x)[None]

  for counts in per_process:
    np.testing.assert_array_equal(sum_over_processes(counts, alone), counts)
  assert all(message.dtype == np.int32 for message in sent)  # within what jax gathers without x64
  total = sum_over_processes(per_process[0], lambda x: np.stack(sent))  # the gather of all three messages
  assert total.dtype == np.int64
  np.testing.assert_array_equal(total, per_process.sum(0))
  assert not np.array_equal(per_process.astype(np.int32).astype(np.int64).sum(0), per_process.sum(0))
  with pytest.raises(ValueError, match=r'counts must lie in \[0, 2\^61\)'):
    sum_over_processes(np.array([-1]), alone)
  with pytest.raises(ValueError, match='integer array'):
    sum_over_processes(np.array([1.5]), alone)
