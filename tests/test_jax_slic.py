"""cast_jax.superpixels.jax_slic: the contract, determinism, jit, batch independence, Lab, and the host path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import color, data

from cast_jax.data import augment
from cast_jax.superpixels import compute_superpixels, compute_superpixels_batch, preset, validate_superpixels
from cast_jax.superpixels.jax_slic import (block_grid, device_superpixel_fn, enforce_connectivity, rgb_to_lab, slic_batch,
                                           slic_from_normalized)
from cast_jax.superpixels.quality import fragments


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
  return np.asarray(Image.fromarray(getattr(data, name)()).resize(size, Image.BILINEAR))


def _slic(images, connectivity: bool = True):
  """slic_batch at 48 segments with every static argument by keyword, as the host path calls it: one compile
  per input shape and dtype for the whole module."""
  return np.asarray(slic_batch(images, num_segments=48, iterations=10, compactness=10.0, connectivity=connectivity))


def _batch() -> np.ndarray:
  """Two real photos and a noise image, 72x96 (not a multiple of the cell side: padded blocks are exercised)."""
  noise = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
  return np.stack([_photo('astronaut', (96, 72)), _photo('chelsea', (96, 72)), noise])


def test_rgb_to_lab_matches_skimage():
  rgb = np.random.default_rng(1).integers(0, 256, (4096, 3)).astype(np.uint8)
  rgb[:8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 1, 1], [10, 10, 10], [11, 0, 3]]
  expected = color.rgb2lab(rgb[None] / 255.0)[0]
  got = np.asarray(jax.jit(rgb_to_lab)(rgb / np.float32(255)))
  # float32 arithmetic against skimage's float64: L*, a*, b* span ~100-200 units, so 1e-3 is ~1e-5 relative.
  np.testing.assert_allclose(got, expected, atol=1e-3)


@pytest.mark.parametrize('height,width,count,expected', [(224, 224, 196, (14, 14, 16, 16)), (64, 64, 64, (8, 8, 8, 8)),
                                                          (10, 30, 1, (1, 1, 10, 30)), (72, 96, 48, (6, 8, 12, 12))])
def test_block_grid(height, width, count, expected):
  rows, cols, cell_h, cell_w = block_grid(height, width, count)
  assert (rows, cols, cell_h, cell_w) == expected
  assert rows * cols <= count and (rows - 1) * cell_h < height <= rows * cell_h and (cols - 1) * cell_w < width


def test_contract_on_real_and_random_images():
  images = _batch()
  labels = _slic(images)
  assert labels.shape == images.shape[:3] and labels.dtype == np.int32
  for image_labels in labels:
    validate_superpixels(image_labels, 48)  # int32, dense from 0, at most 48
  # On photos nearly every cell keeps its centre; the ids follow the image content, not the grid.
  assert labels[0].max() + 1 >= 40 and labels[1].max() + 1 >= 40
  grid = np.arange(48).reshape(6, 8).repeat(12, 0).repeat(12, 1)
  assert (labels[0] != grid).mean() > 0.05


def test_deterministic_jitted_and_batch_independent():
  images = _batch()
  first = _slic(images)
  np.testing.assert_array_equal(first, _slic(images))
  for i in range(len(images)):  # alone or in a batch, the same map
    np.testing.assert_array_equal(first[i], _slic(images[i:i + 1])[0])
  # Under an enclosing jit (as inside a train step), with float [0, 1] input: the same map again.
  outer = jax.jit(lambda x: slic_batch(x, num_segments=48, iterations=10, compactness=10.0, connectivity=True) + 0)
  np.testing.assert_array_equal(first, np.asarray(outer(jnp.asarray(images, jnp.float32) / 255.0)))


def test_connectivity_is_enforced():
  images = _batch()
  connected = _slic(images)
  loose = np.asarray(_slic(images, connectivity=False))
  assert [fragments(labels) for labels in connected] == [1.0, 1.0, 1.0]
  assert max(fragments(labels) for labels in loose) > 1.0  # the pass had work to do
  for labels in loose:
    validate_superpixels(labels, 48)  # the contract holds without it too


def test_enforce_connectivity_absorbs_small_pieces():
  labels = np.zeros((1, 8, 8), np.int32)
  labels[0, :, 4:] = 1
  labels[0, 1:3, 5:7] = 0  # a 2x2 piece of id 0 inside id 1: absorbed by id 1
  labels[0, 6, 1] = 2  # a lone pixel of id 2 is its id's only piece: kept
  out = np.asarray(jax.jit(lambda x: enforce_connectivity(x, 3, 8, 8))(labels))[0]
  expected = labels[0].copy()
  expected[1:3, 5:7] = 1
  np.testing.assert_array_equal(out, expected)


def _snake(size: int = 31) -> tuple[np.ndarray, int]:
  """(size, size) ids: id 0 a one-pixel-wide path winding through every even row (511 px at 31), each odd row
  its own id except where the path turns. Every id is one 4-connected piece."""
  labels = np.zeros((size, size), np.int32)
  num_ids = 1
  for row in range(1, size, 2):
    labels[row] = num_ids
    labels[row, size - 1 if (row // 2) % 2 == 0 else 0] = 0  # the path turns at alternating ends
    num_ids += 1
  return labels, num_ids


def test_enforce_connectivity_settles_a_long_winding_piece_in_few_rounds():
  """Hooking merges whole trees, so a 511-pixel path is one piece within 8 rounds. (The earlier
  min-propagation moved about a pixel per round: with 32 rounds it split the path and gave 254 of its pixels
  to the neighbouring ids.)"""
  labels, num_ids = _snake()
  assert (labels == 0).sum() == 511
  out = np.asarray(jax.jit(lambda x: enforce_connectivity(x, num_ids, 8, 8))(labels[None]))[0]
  np.testing.assert_array_equal(out, labels)  # every id already connected: nothing moves


def test_scatter_and_block_sums_agree():
  """'auto' is the scatter on CPU; the block reductions (GPU / TPU) add the same numbers in another order, so
  only a near-tie can tell them apart."""
  images = _batch()
  maps = {accumulate: np.asarray(slic_batch(images, num_segments=48, iterations=10, compactness=10.0,
                                            connectivity=True, accumulate=accumulate))
          for accumulate in ('auto', 'scatter', 'blocks')}
  np.testing.assert_array_equal(maps['auto'], maps['scatter'])
  for scatter, blocks in zip(maps['scatter'], maps['blocks']):
    validate_superpixels(blocks, 48)
    assert (scatter == blocks).mean() >= 0.999
  with pytest.raises(ValueError, match='accumulate'):
    slic_batch(images, num_segments=48, accumulate='atomic')


def test_cells_cut_by_the_image_edge_keep_their_centres():
  """70x90 at 48: 6x8 cells of 12x12 px, the last row and column cut short (padded blocks). On a flat image
  every centre stays in its cell, so all 48 ids survive; padding that leaked into the centres' sums pushed the
  last row off the image (35 ids)."""
  labels = np.asarray(slic_batch(np.full((1, 70, 90, 3), 120, np.uint8), num_segments=48, iterations=10,
                                 compactness=10.0, connectivity=True))[0]
  assert labels.max() + 1 == 48
  validate_superpixels(labels, 48)


def test_follows_a_colour_edge():
  """Two flat halves split off the grid lines: no superpixel straddles the edge."""
  image = np.zeros((72, 96, 3), np.uint8)  # cells are 12 px wide: the edge at 27 is off the grid lines
  image[:, 27:] = (200, 40, 40)
  labels = _slic(image[None])[0]
  left, right = set(np.unique(labels[:, :27])), set(np.unique(labels[:, 27:]))
  assert not left & right


def test_from_normalized_views_matches_uint8():
  images = _batch()
  normalized = np.stack([augment.normalize(image) for image in images])
  np.testing.assert_array_equal(np.asarray(slic_from_normalized(normalized, num_segments=48)),
                                _slic(images))


def test_host_path_through_compute_superpixels():
  images = _batch()
  config = preset('jax_slic', num_segments=48)
  one = compute_superpixels(images[1], config)
  validate_superpixels(one, 48)
  np.testing.assert_array_equal(one, _slic(images[1:2])[0])
  np.testing.assert_array_equal(compute_superpixels_batch(images, config), _slic(images))
  # max_segments below the request: fewer cells are made, the contract holds.
  validate_superpixels(compute_superpixels(images[0], config, max_segments=20), 20)


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match='batch axis'):
    slic_batch(np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match='uint8'):
    slic_batch(np.zeros((1, 8, 8, 3), np.int32))
  with pytest.raises(ValueError, match='float'):
    compute_superpixels(np.zeros((8, 8, 3), np.float32), 'jax_slic')
