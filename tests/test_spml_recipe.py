"""SPML's fine-tuning augmentation (``cast_jax.data.spml``): the exact geometry of flip, rescale, top-left pad and
crop on small arrays with scripted draws, then the whole recipe (superpixels on the half-size crop, normalisation,
label checks, pickling)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cast_jax.data import spml
from cast_jax.evaluate.spml_inputs import IMAGENET_MEAN, IMAGENET_STD, train_crop_superpixels


class ScriptedRng:
  """``uniform(lo, hi)`` returns lo + f (hi - lo) for the next scripted fraction f; records every call."""

  def __init__(self, fractions):
    self.fractions, self.calls = list(fractions), []

  def uniform(self, low, high):
    self.calls.append((low, high))
    return low + self.fractions.pop(0) * (high - low)


def ramp(height, width):
  image = (np.arange(height * width * 3, dtype=np.float32).reshape(height, width, 3) / 100).astype(np.float32)
  label = np.arange(height * width, dtype=np.uint8).reshape(height, width)
  return image, label


def test_flip_half_scale_and_top_left_pad():
  """6x4, flipped (0.7 >= 0.5), ratio 0.5 -> 3x2 (int truncation), padded to 4x4 with the image at the top-left:
  mean colour / 255 at the bottom and right; both crop offsets come from U(0, 0)."""
  image, label = ramp(6, 4)
  rng = ScriptedRng([0.7, 0.0, 0.4, 0.4])
  crop, crop_label = spml.augment_geometry(image, label, rng, crop_size=4)
  assert rng.calls == [(0.0, 1.0), (0.5, 1.5), (0.0, 0), (0.0, 0)]
  flipped_label = label[:, ::-1]
  # cv2 INTER_NEAREST halving reads rows 0, 2, 4 and columns 0, 2; INTER_LINEAR halving averages 2x2 blocks.
  want_label = np.full((4, 4), 255, np.uint8)
  want_label[:3, :2] = flipped_label[::2, ::2]
  np.testing.assert_array_equal(crop_label, want_label)
  np.testing.assert_array_equal(want_label[:3, :2], [[3, 1], [11, 9], [19, 17]])
  flipped = image[:, ::-1]
  blocks = flipped.reshape(3, 2, 2, 2, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(crop[:3, :2], blocks, atol=1e-6)
  np.testing.assert_array_equal(crop[3, :], np.broadcast_to(IMAGENET_MEAN, (4, 3)))
  np.testing.assert_array_equal(crop[:, 2:], np.broadcast_to(IMAGENET_MEAN, (4, 2, 3)))
  assert crop.dtype == np.float32


def test_no_flip_unit_scale_and_crop_offsets_are_floored():
  """10x8, not flipped (0.2 < 0.5), ratio 1, a 4x4 crop at floor(U(0, 6)) = floor(3.0) = 3 rows down and
  floor(U(0, 4)) = floor(3.96) = 3 columns right: nothing padded."""
  image, label = ramp(10, 8)
  rng = ScriptedRng([0.2, 0.5, 0.5, 0.99])
  crop, crop_label = spml.augment_geometry(image, label, rng, crop_size=4)
  assert rng.calls == [(0.0, 1.0), (0.5, 1.5), (0.0, 6), (0.0, 4)]
  np.testing.assert_array_equal(crop_label, label[3:7, 3:7])
  np.testing.assert_array_equal(crop, image[3:7, 3:7])


def test_pad_only_along_the_short_side_then_crop_along_the_long_one():
  """A 3x8 image (ratio 1) under a 4x4 crop: one padded row at the bottom, columns cropped at floor(0.5 x 4)."""
  image, label = ramp(3, 8)
  rng = ScriptedRng([0.9, 0.5, 0.0, 0.5])
  crop, crop_label = spml.augment_geometry(image, label, rng, crop_size=4)
  want = np.full((4, 4), 255, np.uint8)
  want[:3] = label[:, ::-1][:, 2:6]
  np.testing.assert_array_equal(crop_label, want)
  np.testing.assert_array_equal(crop[3], np.broadcast_to(IMAGENET_MEAN, (4, 3)))


def test_the_recipe_superpixels_the_half_size_crop_and_normalises():
  rng_image = np.random.default_rng(3)
  image = rng_image.integers(0, 256, (40, 48, 3), dtype=np.uint8)
  label = rng_image.integers(0, 5, (40, 48)).astype(np.uint8)
  label[:4] = 255
  recipe = spml.SPMLTrain(crop_size=32, num_superpixels=16, max_segments=64, num_classes=5)
  out = recipe({'image': image, 'label_map': label}, np.random.default_rng(0))
  assert out['image'].shape == (32, 32, 3) and out['image'].dtype == np.float32
  assert out['label_map'].shape == (32, 32) and out['label_map'].dtype == np.int32
  assert out['superpixels'].shape == (16, 16) and out['superpixels'].dtype == np.int32
  # The same draws by hand: the geometry on the [0, 1] image, superpixels of that crop, then normalisation.
  crop01, crop_label = spml.augment_geometry(image.astype(np.float32) / np.float32(255), label,
                                             np.random.default_rng(0), 32)
  np.testing.assert_array_equal(out['label_map'], crop_label)
  np.testing.assert_array_equal(out['image'], (crop01 - IMAGENET_MEAN) / IMAGENET_STD)
  np.testing.assert_array_equal(out['superpixels'], train_crop_superpixels(crop01, 16, 0.5, 64))
  # Seed 0 draws a flip and ratio 0.7698: 40x48 -> 30x36, so rows 30 and 31 of the crop are padding, which is
  # exactly 0 after normalisation (the mean colour) and 255 in the labels.
  np.testing.assert_array_equal(out['image'][30:], 0.0)
  np.testing.assert_array_equal(out['label_map'][30:], 255)
  assert (out['label_map'][:30] != 255).any() and (out['image'][:30] != 0).all(axis=-1).mean() > 0.9
  # A uint8 crop and its float [0, 1] form give the same superpixels (the original truncates x * 255).
  np.testing.assert_array_equal(train_crop_superpixels(image[:32, :32], 16, 0.5, 64),
                                train_crop_superpixels(image[:32, :32].astype(np.float32) / 255, 16, 0.5, 64))
  again = pickle.loads(pickle.dumps(recipe))({'image': image, 'label_map': label}, np.random.default_rng(0))
  np.testing.assert_array_equal(again['superpixels'], out['superpixels'])


def test_bad_labels_and_images_without_labels_raise():
  image = np.zeros((20, 20, 3), np.uint8)
  recipe = spml.SPMLTrain(crop_size=16, num_superpixels=16, max_segments=64, num_classes=5)
  with pytest.raises(ValueError, match=r'label ids \[7\] are outside \[0, 5\)'):
    recipe({'image': image, 'label_map': np.full((20, 20), 7, np.uint8)}, np.random.default_rng(0))
  with pytest.raises(ValueError, match='needs a label map'):
    recipe({'image': image}, np.random.default_rng(0))
  with pytest.raises(ValueError, match='does not cover its image'):
    recipe({'image': image, 'label_map': np.zeros((10, 20), np.uint8)}, np.random.default_rng(0))
