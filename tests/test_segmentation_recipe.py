"""Segmentation recipes (mmseg 0.14 semantics): static shapes, alignment, cat_max_ratio, padding, scale, photometric.

A synthetic scene of coloured rectangles, one colour per class, and a superpixel_fn that packs each pixel's
colour into its id: so the superpixel map shows exactly which uint8 view it was computed on, and any
misalignment between image, labels and superpixels shows up as a wrong colour.
"""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from cast_jax.data import segmentation as seg

CROP = 64
# Class -> RGB; class 0 is the background. Colours far apart so that no two classes can be confused.
COLOURS = np.array([(30, 60, 90), (200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 30)], np.uint8)
# The padding, as the original's superpixel code sees it: trunc(mean), then (-x) mod 256.
PAD_VIEW = np.array([123, 116, 103], np.uint8)


def packed_rgb(view: np.ndarray) -> np.ndarray:
  """A superpixel_fn: the id is the pixel's colour, r + 256 g + 65536 b."""
  v = view.astype(np.int32)
  return v[..., 0] + 256 * v[..., 1] + 65536 * v[..., 2]


def unpack(superpixels: np.ndarray) -> np.ndarray:
  """Inverse of ``packed_rgb``: (H, W) int32 -> the (H, W, 3) uint8 view the superpixel_fn was given."""
  return np.stack([superpixels % 256, superpixels // 256 % 256, superpixels // 65536], -1).astype(np.uint8)


def scene(h: int = 96, w: int = 128, background: int = 0) -> dict:
  """An asymmetric scene: four rectangles of classes 1..4 on ``background``; 'image' is COLOURS[label]."""
  label = np.full((h, w), background, np.uint8)
  label[int(.1 * h):int(.5 * h), int(.05 * w):int(.35 * w)] = 1
  label[int(.55 * h):int(.95 * h), int(.1 * w):int(.45 * w)] = 2
  label[int(.2 * h):int(.7 * h), int(.55 * w):int(.8 * w)] = 3
  label[int(.75 * h):, int(.7 * w):] = 4
  return {'image': COLOURS[label], 'label_map': label}


def recipe(**kwargs) -> seg.SegmentationTrain:
  kwargs = {'crop_size': CROP, 'img_scale': (256, 64), **kwargs}
  return seg.SegmentationTrain(packed_rgb, **kwargs)


def interior(label: np.ndarray, margin: int = 2) -> np.ndarray:
  """Pixels whose (2 margin + 1)^2 neighbourhood lies in the crop and holds a single label.

  There nearest (labels) and bilinear (image) resampling read the same uniform region. Near the crop's edge
  the neighbourhood is unknown, so those pixels are left out.
  """
  padded = np.pad(label.astype(np.int64), margin, constant_values=-1)
  same = np.ones(label.shape, bool)
  for dy in range(2 * margin + 1):
    for dx in range(2 * margin + 1):
      same &= padded[dy:dy + label.shape[0], dx:dx + label.shape[1]] == label
  return same


def test_shapes_and_dtypes_are_static():
  for h, w in [(20, 30), (96, 128), (300, 90)]:
    example = scene(h, w)
    for seed in range(4):
      out = recipe()(example, np.random.default_rng(seed))
      assert sorted(out) == ['image', 'label_map', 'superpixels']
      assert out['image'].shape == (CROP, CROP, 3) and out['image'].dtype == np.float32
      assert out['label_map'].shape == (CROP, CROP) and out['label_map'].dtype == np.int32
      assert out['superpixels'].shape == (CROP, CROP) and out['superpixels'].dtype == np.int32


@pytest.mark.parametrize('flip_prob', [0.0, 0.5, 1.0])
def test_image_labels_and_superpixels_stay_aligned(flip_prob):
  normalized_colours = seg.normalize(COLOURS[None])[0]
  example = scene()
  for seed in range(15):
    out = recipe(photometric=False, flip_prob=flip_prob)(example, np.random.default_rng(seed))
    label, view = out['label_map'], unpack(out['superpixels'])
    inside = interior(label) & (label != 255)
    assert inside.sum() >= 200
    # The image where the label says class k is class k's colour.
    np.testing.assert_allclose(out['image'][inside], normalized_colours[label[inside]], atol=1e-5)
    # The superpixels were computed on the same pixels: the view is the colour, inverted, give or take the
    # one-unit truncation of the float round trip.
    seen = np.negative(view[inside]).astype(np.int32)
    error = COLOURS[label[inside]].astype(np.int32) - seen
    assert error.min() >= 0 and error.max() <= 1


def test_flip_mirrors_image_labels_and_superpixels_together():
  example = scene(200, 260)
  for seed in range(6):
    # Resized to a short side of 128..512: every crop is full, nothing is padded.
    kept = recipe(img_scale=(1024, 256), flip_prob=0.0)(example, np.random.default_rng(seed))
    flipped = recipe(img_scale=(1024, 256), flip_prob=1.0)(example, np.random.default_rng(seed))
    assert (kept['label_map'] != 255).all()
    np.testing.assert_array_equal(flipped['label_map'], kept['label_map'][:, ::-1])
    # Photometric distortion draws after the flip, from the same stream, so it is the same in both.
    np.testing.assert_array_equal(flipped['image'], kept['image'][:, ::-1])
    np.testing.assert_array_equal(flipped['superpixels'], kept['superpixels'][:, ::-1])


class CountingRng:
  """Wraps a Generator and counts ``integers`` calls (two per candidate crop box)."""

  def __init__(self, seed):
    self.rng, self.calls = np.random.default_rng(seed), 0

  def integers(self, *args):
    self.calls += 1
    return self.rng.integers(*args)


def test_random_crop_checks_at_most_ten_boxes_and_ignores_the_ignore_label():
  half_ignored = np.zeros((100, 100), np.uint8)
  half_ignored[:, 50:] = 255  # one real class only, whatever the box: every check fails
  rng = CountingRng(0)
  seg.random_crop_offset(half_ignored, 32, 0.75, 255, rng)
  assert rng.calls == 2 * 11  # the first box, then 10 redraws; the last one is kept unchecked
  stripes = np.tile(np.arange(100) % 2, (100, 1)).astype(np.uint8)  # every box: two classes at ~50 %
  rng = CountingRng(0)
  seg.random_crop_offset(stripes, 32, 0.75, 255, rng)
  assert rng.calls == 2
  rng = CountingRng(0)
  seg.random_crop_offset(half_ignored, 32, 1.0, 255, rng)  # cat_max_ratio 1: no check at all
  assert rng.calls == 2


def _balanced(label: np.ndarray, ratio: float = 0.75) -> bool:
  classes, counts = np.unique(label[label != 255], return_counts=True)
  return len(classes) > 1 and counts.max() / counts.sum() < ratio


def test_cat_max_ratio_steers_crops_away_from_one_dominant_class():
  size, square = 200, 60
  label = np.zeros((size, size), np.uint8)
  label[:square, :square] = 1  # class 0 covers 91 % of the image
  example = {'image': COLOURS[label], 'label_map': label}
  # Share of all crop boxes that pass the check (brute force over every offset, via an integral image).
  ones = np.pad(label.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
  k = size - CROP + 1
  in_box = ones[CROP:, CROP:] - ones[:k, CROP:] - ones[CROP:, :k] + ones[:k, :k]
  share = in_box / CROP ** 2
  p = ((share > 0.25) & (share < 0.75)).mean()
  assert 0.05 < p < 0.3, p
  kwargs = dict(img_scale=(size, size), ratio_range=(1.0, 1.0), photometric=False)  # no rescale
  trials = 200
  with_check = sum(_balanced(recipe(**kwargs)(example, np.random.default_rng(s))['label_map'])
                   for s in range(trials)) / trials
  without = sum(_balanced(recipe(cat_max_ratio=1.0, **kwargs)(example, np.random.default_rng(s))['label_map'])
                for s in range(trials)) / trials
  expected_with = 1 - (1 - p) ** 11  # accepted within 10 checks, or the unchecked 11th box happens to pass
  assert abs(without - p) < 4 * np.sqrt(p * (1 - p) / trials), (without, p)
  assert with_check > expected_with - 4 * np.sqrt(expected_with * (1 - expected_with) / trials), (with_check, p)
  assert with_check > 2 * without


def test_padding_uses_ignore_label_and_mean_colour_never_a_class():
  example = scene(30, 40)
  example['label_map'] = example['label_map'] + 1  # classes 1..5: no raw 0, no 255
  example['image'] = COLOURS[example['label_map'] - 1]
  padded_somewhere = 0
  for seed in range(20):
    # The resized image's short side is at most 32 < 64: every output is padded at the bottom and right.
    out = recipe(img_scale=(64, 32), ratio_range=(0.5, 1.0))(example, np.random.default_rng(seed))
    valid = out['label_map'] != 255
    rows, cols = valid.any(1).sum(), valid.any(0).sum()
    assert rows < CROP and cols < CROP
    expected = np.zeros_like(valid)
    expected[:rows, :cols] = True
    np.testing.assert_array_equal(valid, expected)  # the real pixels are a top-left rectangle
    assert set(np.unique(out['label_map'][valid])) <= {1, 2, 3, 4, 5}
    assert (out['image'][~valid] == 0).all()  # 0 in normalized space: the mean colour
    assert (np.abs(out['image'][valid]).max(-1) > 0).all()
    np.testing.assert_array_equal(unpack(out['superpixels'])[~valid], np.broadcast_to(np.negative(PAD_VIEW), (
        (~valid).sum(), 3)))
    padded_somewhere += (~valid).sum() > 0
  assert padded_somewhere == 20


def test_reduce_zero_label_ade_style():
  raw = np.array([[0, 1, 2], [150, 255, 7]], np.uint8)
  np.testing.assert_array_equal(seg.reduce_zero_label(raw), [[255, 0, 1], [149, 255, 6]])
  out = recipe(reduce_zero_label=True, photometric=False)(scene(), np.random.default_rng(0))
  labels = set(np.unique(out['label_map']))
  assert labels <= {0, 1, 2, 3, 255} and 255 in labels  # background (raw 0) becomes ignore; class 4 -> 3


def test_rescale_size_follows_mmcv():
  assert seg.rescaled_hw((375, 500), (2048, 512)) == (512, 683)  # the short side reaches 512
  assert seg.rescaled_hw((100, 1000), (2048, 512)) == (205, 2048)  # the long-side bound wins
  assert seg.rescaled_hw((375, 500), (1024, 256)) == (256, 341)


def test_output_scale_follows_ratio_range():
  # 40 x 60 into (256 r, 64 r): the short-side bound wins, so the image becomes about (64 r, 96 r); with a
  # 192 crop nothing is cropped away and the unpadded part measures the scale.
  example = scene(40, 60)
  ratios, aspects = [], []
  rng = np.random.default_rng(0)  # one stream, as a worker would use
  for _ in range(300):
    out = recipe(crop_size=192, photometric=False, cat_max_ratio=1.0)(example, rng)
    valid = out['label_map'] != 255
    rows, cols = valid.any(1).sum(), valid.any(0).sum()
    ratios.append(rows / 64)
    aspects.append(cols / rows)
  ratios = np.array(ratios)
  assert ratios.min() >= 0.49 and ratios.max() <= 2.0
  assert ratios.min() < 0.56 and ratios.max() > 1.94
  # r ~ U(0.5, 2): mean 1.25, sd 0.43, so the mean of 300 is within 0.1 (4 standard errors).
  assert abs(ratios.mean() - 1.25) < 0.1
  assert abs(np.mean(ratios < 1.25) - 0.5) < 0.12  # half the draws below the midpoint
  assert np.allclose(aspects, 1.5, atol=0.05)


def test_photometric_distortion_changes_pixels_never_labels():
  example = scene(200, 260)
  changed = 0
  for seed in range(40):
    plain = recipe(photometric=False)(example, np.random.default_rng(seed))
    distorted = recipe()(example, np.random.default_rng(seed))
    np.testing.assert_array_equal(distorted['label_map'], plain['label_map'])
    changed += not np.array_equal(distorted['image'], plain['image'])
  assert changed >= 0.8 * 40  # each op has p = 0.5: all four skipped 1 time in 16


def test_photometric_distortion_keeps_grey_grey_and_rgb_hsv_matches_mmcv_bgr():
  rng = np.random.default_rng(0)
  grey = np.repeat(rng.integers(0, 256, (16, 16, 1), dtype=np.uint8), 3, -1)
  for seed in range(20):
    out = seg.photometric_distortion(grey, np.random.default_rng(seed))
    assert out.dtype == np.uint8 and out.shape == grey.shape
    assert (out == out[..., :1]).all()  # brightness and contrast act per value; saturation 0 has no hue
  colour = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  # Why the recipe may stay in RGB: cv2's RGB<->HSV is its BGR<->HSV with the channels swapped.
  np.testing.assert_array_equal(cv2.cvtColor(colour, cv2.COLOR_RGB2HSV),
                                cv2.cvtColor(colour[..., ::-1].copy(), cv2.COLOR_BGR2HSV))


class ScriptedRng:
  """Returns the scripted values, in order, to ``integers`` and ``uniform`` calls."""

  def __init__(self, *values):
    self.values = list(values)

  def integers(self, *args):
    return self.values.pop(0)

  uniform = integers


def test_photometric_distortion_ops_one_at_a_time():
  # Draw order: brightness coin [delta], mode, (mode 1: contrast coin [factor]), saturation coin [factor],
  # hue coin [delta], (mode 0: contrast coin [factor]).
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  out = seg.photometric_distortion(image, ScriptedRng(1, 20.7, 0, 0, 0, 0))
  np.testing.assert_array_equal(out, np.clip(image + np.float32(20.7), 0, 255).astype(np.uint8))
  out = seg.photometric_distortion(image, ScriptedRng(0, 1, 1, 1.5, 0, 0))
  np.testing.assert_array_equal(out, np.clip(image * np.float32(1.5), 0, 255).astype(np.uint8))
  out = seg.photometric_distortion(image, ScriptedRng(0, 0, 1, 0.0, 0, 1, 0.5))  # contrast last, mode 0
  np.testing.assert_array_equal(out, np.repeat((image.max(-1, keepdims=True) * np.float32(0.5)).astype(np.uint8), 3,
                                               -1))  # saturation 0 leaves V = max(R, G, B) in every channel
  red = np.zeros((2, 2, 3), np.uint8)
  red[..., 0] = 255
  cyan = seg.photometric_distortion(red, ScriptedRng(0, 0, 0, 1, 90, 0))  # hue 0 + 90 of 180: the opposite hue
  np.testing.assert_array_equal(cyan[0, 0], [0, 255, 255])
  wrapped = seg.photometric_distortion(red, ScriptedRng(0, 0, 0, 1, -18, 0))  # hue (0 - 18) mod 180 = 162
  np.testing.assert_array_equal(cv2.cvtColor(wrapped, cv2.COLOR_RGB2HSV)[0, 0], [162, 255, 255])


def test_superpixel_view_round_trip_and_inversion_quirk():
  values = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, -1)  # (256, 1, 3)
  normalized = seg.normalize(values)
  plain = seg.superpixel_view(normalized, invert_quirk=False)
  loss = values.astype(int) - plain
  assert loss.min() >= 0 and loss.max() <= 1  # float32 round trip, then truncation
  assert (loss == 0).mean() > 0.97
  np.testing.assert_array_equal(seg.superpixel_view(normalized), (256 - plain.astype(int)) % 256)
  zeros = np.zeros((2, 2, 3), np.float32)  # Pad's fill value
  np.testing.assert_array_equal(seg.superpixel_view(zeros, invert_quirk=False)[0, 0], PAD_VIEW)
  np.testing.assert_array_equal(seg.superpixel_view(zeros)[0, 0], [133, 140, 153])


def test_invert_quirk_flag_is_what_the_superpixel_fn_sees():
  example = scene()
  on = recipe()(example, np.random.default_rng(3))
  off = recipe(invert_quirk=False)(example, np.random.default_rng(3))
  np.testing.assert_array_equal(on['image'], off['image'])
  np.testing.assert_array_equal(unpack(on['superpixels']), np.negative(unpack(off['superpixels'])))


def test_same_seed_same_output_and_recipe_pickles():
  example = scene()
  train = pickle.loads(pickle.dumps(recipe()))
  a = recipe()(example, np.random.default_rng(7))
  b = train(example, np.random.default_rng(7))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_eval_resizes_like_the_mmseg_test_pipeline():
  example = scene(40, 60)
  out = seg.SegmentationEval(img_scale=(256, 64), reduce_zero_label=True)(example)
  assert out['image'].shape == (64, 96, 3) and out['image'].dtype == np.float32
  np.testing.assert_array_equal(out['ori_shape'], [40, 60])
  np.testing.assert_array_equal(out['label_map'], seg.reduce_zero_label(example['label_map']))  # original size
  assert out['label_map'].dtype == np.int32
  # Downscaled: the long side reaches its bound first; a window no larger than the short side changes nothing.
  out = seg.SegmentationEval(img_scale=(256, 64), window_size=64)(scene(200, 100))
  assert out['image'].shape == (128, 64, 3)


def test_eval_upsamples_a_short_side_below_the_window():
  flat = {'image': np.full((20, 200, 3), (10, 120, 250), np.uint8)}
  out = seg.SegmentationEval(img_scale=(256, 64), window_size=64)(flat)
  # (20, 200) -> (26, 256) by the long bound, then the short side 26 -> 64 and the long int(256 / 26 * 64).
  assert out['image'].shape == (64, 630, 3)
  np.testing.assert_allclose(out['image'], np.broadcast_to(seg.normalize(flat['image'][:1, :1]), out['image'].shape),
                             atol=1e-5)
  assert 'label_map' not in out


def test_torch_bilinear_resize_small_cases():
  # align_corners=False: 2 -> 4 samples at source coordinates -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped).
  x = np.array([[0.0], [4.0]], np.float32)[:, :, None]  # (2, 1, 1)
  np.testing.assert_allclose(seg.torch_bilinear_resize(x, (4, 1))[:, 0, 0], [0, 1, 3, 4])
  # Downsampling 4 -> 2 by 2 averages neighbouring pairs.
  y = np.arange(4, dtype=np.float32)[None, :, None]
  np.testing.assert_allclose(seg.torch_bilinear_resize(y, (1, 2))[0, :, 0], [0.5, 2.5])


def test_dataset_presets():
  train, evaluation = seg.segmentation_recipes('ade20k', packed_rgb)
  assert (train.crop_size, train.img_scale, train.reduce_zero_label) == (512, (2048, 512), True)
  assert (evaluation.img_scale, evaluation.window_size) == ((2048, 512), 512)
  train, evaluation = seg.segmentation_recipes('pascal_context', packed_rgb)
  assert (train.crop_size, train.img_scale, train.reduce_zero_label) == (480, (4160, 520), False)
  assert (evaluation.img_scale, evaluation.window_size) == ((4160, 520), 480)
  out = train(scene(375, 500), np.random.default_rng(0))  # full-size crop, once
  assert out['image'].shape == (480, 480, 3) and out['superpixels'].shape == (480, 480)
