"""Segmentation pictures: palette, boundaries, mean colours, panel layout, validation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cast_jax import visualize
from cast_jax.visualize import (GAP, PALETTE, TITLE_HEIGHT, batch_panel, boundaries, colorize, hierarchy_panel,
                                mean_colour, overlay_boundaries, save_png)


def two_regions():
  """A 4 x 5 map: id 3 in columns 0-1, id 7 in columns 2-4, except that id 3 also holds (3, 2)."""
  ids = np.full((4, 5), 7)
  ids[:, :2] = 3
  ids[3, 2] = 3
  return ids


def random_image(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_palette_is_fixed_distinct_and_not_black():
  assert PALETTE.shape == (256, 3) and PALETTE.dtype == np.uint8
  assert len(np.unique(PALETTE, axis=0)) == 256
  np.testing.assert_array_equal(PALETTE, visualize._make_palette())  # deterministic
  colours = PALETTE.astype(float)
  assert np.linalg.norm(colours[1:] - colours[:-1], axis=1).min() > 100  # consecutive ids far apart
  assert PALETTE.max(axis=1).min() > 100  # nothing close to the black of negative ids


def test_colorize():
  ids = np.array([[0, 1, 255], [256, -1, -7]])
  rgb = colorize(ids)
  assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[0], PALETTE[[0, 1, 255]])
  np.testing.assert_array_equal(rgb[1, 0], PALETTE[0])  # ids wrap modulo 256
  np.testing.assert_array_equal(rgb[1, 1:], 0)  # negative ids are black
  np.testing.assert_array_equal(colorize(ids), rgb)
  all_ids = colorize(np.arange(256).reshape(16, 16)).reshape(-1, 3)
  assert len(np.unique(all_ids, axis=0)) == 256


def test_boundaries_of_two_regions():
  expected = np.array([
      [0, 1, 0, 0, 0],
      [0, 1, 0, 0, 0],
      [0, 1, 1, 0, 0],  # (2, 2) lies above the id-3 pixel at (3, 2)
      [0, 0, 1, 0, 0],
  ], bool)
  np.testing.assert_array_equal(boundaries(two_regions()), expected)
  assert not boundaries(np.zeros((3, 3), np.int32)).any()


def test_overlay_boundaries_paints_only_boundary_pixels():
  image = random_image(4, 5)
  out = overlay_boundaries(image, two_regions(), color=(1, 2, 3))
  edge = boundaries(two_regions())
  np.testing.assert_array_equal(out[edge], np.tile([1, 2, 3], (edge.sum(), 1)))
  np.testing.assert_array_equal(out[~edge], image[~edge])
  assert out.dtype == np.uint8 and not np.shares_memory(out, image)


def test_mean_colour_equals_region_means():
  image = random_image(4, 5, seed=1)
  ids = two_regions() * 1000 - 5000  # negative and sparse ids work as well
  out = mean_colour(image, ids)
  assert out.dtype == np.uint8 and out.shape == image.shape
  for segment in np.unique(ids):
    region = ids == segment
    expected = np.round(image[region].astype(float).mean(axis=0))
    np.testing.assert_array_equal(out[region], np.tile(expected, (region.sum(), 1)))


@pytest.mark.parametrize('levels', [0, 1, 3])
def test_hierarchy_panel_layout(levels):
  height, width = 20, 24
  image = random_image(height, width)
  superpixels = np.arange(height * width).reshape(height, width) // 16
  hierarchy = superpixels[None] // 4 ** np.arange(1, levels + 1)[:, None, None]  # (levels, H, W)
  panel = hierarchy_panel(image, superpixels, hierarchy)
  columns = levels + 2
  assert panel.dtype == np.uint8
  assert panel.shape == (2 * height + GAP, columns * width + (columns - 1) * GAP, 3)
  np.testing.assert_array_equal(panel[:height, :width], image)  # top left: the image itself
  np.testing.assert_array_equal(panel[height:height + GAP], 255)  # white gap between the rows
  np.testing.assert_array_equal(panel[:, width:width + GAP], 255)  # ... and between the columns
  np.testing.assert_array_equal(panel[height + GAP:, width + GAP:2 * width + GAP], colorize(superpixels))

  titled = hierarchy_panel(image, superpixels, hierarchy, titles=['x'] * columns)
  assert titled.shape == (TITLE_HEIGHT + panel.shape[0],) + panel.shape[1:]
  np.testing.assert_array_equal(titled[TITLE_HEIGHT:], panel)
  assert (titled[:TITLE_HEIGHT] < 255).any()  # some title ink


def test_batch_panel_stacks_at_most_max_images():
  batch, height, width = 5, 16, 16
  images = np.stack([random_image(height, width, seed=s) for s in range(batch)])
  superpixels = np.tile(np.arange(height * width).reshape(height, width) // 8, (batch, 1, 1))
  hierarchies = np.stack([superpixels // 4, superpixels // 16], axis=1)
  out = batch_panel(images, superpixels, hierarchies, max_images=3)
  one = hierarchy_panel(images[0], superpixels[0], hierarchies[0])
  assert out.shape == (3 * one.shape[0] + 2 * GAP, one.shape[1], 3)
  np.testing.assert_array_equal(out[:one.shape[0]], one)
  assert batch_panel(images[:2], superpixels[:2], hierarchies[:2]).shape[0] == 2 * one.shape[0] + GAP


def test_save_png_round_trips(tmp_path):
  picture = random_image(6, 7)
  path = save_png(picture, tmp_path / 'sub' / 'panel.png')
  np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)
  with pytest.raises(ValueError, match=r'array must be uint8 \(H, W, 3\) or \(H, W\); got float32'):
    save_png(picture.astype(np.float32), tmp_path / 'bad.png')


def test_validation_errors():
  image = random_image(8, 8)
  ids = np.zeros((8, 8), np.int32)
  with pytest.raises(ValueError, match=r'image must be uint8 \(H, W, 3\); got float32 \(3, 8, 8\)'):
    mean_colour(np.zeros((3, 8, 8), np.float32), ids)
  with pytest.raises(ValueError, match=r'image must be uint8 \(H, W, 3\); got int64 \(8, 8, 3\)'):
    overlay_boundaries(image.astype(np.int64), ids)
  with pytest.raises(ValueError, match=r"ids \(8, 9\) must match the image's \(H, W\) = \(8, 8\)"):
    mean_colour(image, np.zeros((8, 9), np.int32))
  with pytest.raises(ValueError, match=r'ids must be an integer array \(H, W\); got float64 \(8, 8\)'):
    colorize(np.zeros((8, 8)))
  with pytest.raises(ValueError, match=r'ids must be an integer array \(H, W\); got int64 \(1, 8, 8\)'):
    boundaries(np.zeros((1, 8, 8), np.int64))
  with pytest.raises(ValueError, match='color must be 3 values'):
    overlay_boundaries(image, ids, color=(0, 0, 300))
  with pytest.raises(ValueError, match=r'hierarchy must be an integer array \(L, H, W\)'):
    hierarchy_panel(image, ids, ids)
  with pytest.raises(ValueError, match=r"hierarchy \(2, 4, 8\) must match the image's"):
    hierarchy_panel(image, ids, np.zeros((2, 4, 8), np.int32))
  with pytest.raises(ValueError, match='titles must hold L \\+ 2 = 4 strings; got 3'):
    hierarchy_panel(image, ids, np.zeros((2, 8, 8), np.int32), titles=['a', 'b', 'c'])
  with pytest.raises(ValueError, match=r'images must be uint8 \(B, H, W, 3\); got uint8 \(8, 8, 3\)'):
    batch_panel(image, ids[None], ids[None, None])
  with pytest.raises(ValueError, match='batch sizes differ'):
    batch_panel(image[None], np.stack([ids, ids]), ids[None, None])
  with pytest.raises(ValueError, match='need at least one image'):
    batch_panel(image[None], ids[None], ids[None, None], max_images=0)
