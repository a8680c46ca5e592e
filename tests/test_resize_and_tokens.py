"""PyTorch-exact resizing, the sin-cos position table, and level-0 superpixel tokens.

The bicubic reference below is written pixel by pixel from the formula of PyTorch's ``upsample_bicubic2d``
(docs/original_behaviour.md#pytorch-exact-resizes); the token tests compare the matrix-based segment means with
the naive way of upsampling everything to full resolution first.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax.models import resize, segments, tokens
from conftest import fast_jit


resize_jit = fast_jit(resize.resize_2d, static_argnums=(1, 2))

# --------------------------------------------------------------------------------------------------------------
# Interpolation.


@pytest.mark.parametrize('method', ['bilinear', 'bicubic'])
@pytest.mark.parametrize('in_size, out_size', [(7, 20), (28, 128), (5, 5), (20, 7), (1, 4), (3, 64)])
def test_interpolation_matrix_rows_sum_to_one(method, in_size, out_size):
  matrix = resize.interpolation_matrix(in_size, out_size, method)
  assert matrix.shape == (out_size, in_size)
  np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize('method', ['bilinear', 'bicubic'])
def test_same_size_resize_is_the_identity(method):
  for size in (1, 5, 28):
    np.testing.assert_array_equal(resize.interpolation_matrix(size, size, method), np.eye(size))
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  np.testing.assert_allclose(resize_jit(x, (5, 7), method), x, rtol=0, atol=1e-6)


@pytest.mark.parametrize('in_hw, out_hw', [((7, 7), (20, 20)), ((4, 4), (32, 32)), ((5, 9), (13, 31)),
                                           ((28, 28), (128, 128))])
def test_bilinear_upsampling_equals_jax_image_resize(in_hw, out_hw):
  x = np.random.default_rng(1).normal(size=(2,) + in_hw + (3,)).astype(np.float32)
  ours = resize_jit(x, out_hw, 'bilinear')
  reference = fast_jit(jax.image.resize, static_argnums=(1, 2))(x, (2,) + out_hw + (3,), 'bilinear')
  assert ours.shape == reference.shape
  np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-6)


def torch_bicubic_reference(image, out_h, out_w):
  """PyTorch's upsample_bicubic2d, align_corners=False, of one (h, w, C) image, one output pixel at a time.

  Source coordinate (o + 0.5) * in / out - 0.5 (not clamped), taps floor(src) - 1 .. floor(src) + 2 with
  their indices clamped to the image, Keys weights with A = -0.75.
  """
  a = -0.75
  in_h, in_w, _ = image.shape

  def near(x):
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  def taps(o, in_size, out_size):
    src = (in_size / out_size) * (o + 0.5) - 0.5
    start = math.floor(src)
    t = src - start
    weights = np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])
    indices = [min(max(start - 1 + k, 0), in_size - 1) for k in range(4)]
    return indices, weights

  image = np.asarray(image, np.float64)
  out = np.zeros((out_h, out_w, image.shape[2]))
  for oy in range(out_h):
    rows, wy = taps(oy, in_h, out_h)
    for ox in range(out_w):
      cols, wx = taps(ox, in_w, out_w)
      patch = image[rows][:, cols]  # (4, 4, C)
      out[oy, ox] = np.einsum('m,n,mnc->c', wy, wx, patch)
  return out


@pytest.mark.parametrize('in_hw, out_hw', [((7, 7), (20, 20)), ((28, 28), (128, 128)), ((5, 5), (5, 5)),
                                           ((6, 9), (17, 31)), ((12, 12), (5, 5))])
def test_bicubic_matches_pytorch_formula(in_hw, out_hw):
  x = np.random.default_rng(2).normal(size=(1,) + in_hw + (3,)).astype(np.float32)
  ours = np.asarray(resize_jit(x, out_hw, 'bicubic'))[0]
  np.testing.assert_allclose(ours, torch_bicubic_reference(x[0], *out_hw), rtol=0, atol=2e-5)


def test_bicubic_differs_from_jax_image_resize():
  # The reason resize.py exists: jax's bicubic (A = -0.5, renormalised edges) is not PyTorch's.
  x = np.random.default_rng(3).normal(size=(1, 7, 7, 1)).astype(np.float32)
  ours = np.asarray(resize_jit(x, (20, 20), 'bicubic'))
  theirs = np.asarray(fast_jit(jax.image.resize, static_argnums=(1, 2))(x, (1, 20, 20, 1), 'bicubic'))
  assert np.abs(ours - theirs).max() > 1e-2


def test_unknown_interpolation_method_is_rejected():
  with pytest.raises(ValueError, match="unknown interpolation method 'nearest'"):
    resize.interpolation_taps(4, 8, 'nearest')


# --------------------------------------------------------------------------------------------------------------
# Position table.


def test_sincos_table_is_row_first():
  grid_h, grid_w, dim = 3, 5, 16
  table = resize.sincos_position_table(grid_h, grid_w, dim)
  assert table.shape == (grid_h * grid_w, dim) and table.dtype == np.float32
  quarter = dim // 4
  omega = 1.0 / 10000.0 ** (np.arange(quarter) / quarter)
  for r in range(grid_h):
    for c in range(grid_w):
      row = table[r * grid_w + c]
      np.testing.assert_allclose(row[:quarter], np.sin(r * omega), atol=1e-6)
      np.testing.assert_allclose(row[quarter:2 * quarter], np.cos(r * omega), atol=1e-6)
      np.testing.assert_allclose(row[2 * quarter:3 * quarter], np.sin(c * omega), atol=1e-6)
      np.testing.assert_allclose(row[3 * quarter:], np.cos(c * omega), atol=1e-6)
  with pytest.raises(ValueError, match='divisible by 4'):
    resize.sincos_position_table(2, 2, 18)


# --------------------------------------------------------------------------------------------------------------
# Level-0 tokens.


def voronoi_superpixels(rng, batch, size, num_segments, missing):
  """(batch, size, size) int32 maps: nearest of ``num_segments`` random seeds, id ``missing`` left unused."""
  yy, xx = np.mgrid[:size, :size]
  maps = []
  for _ in range(batch):
    seeds = rng.uniform(0, size, (num_segments, 2))
    dist = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    labels = np.argmin(dist, axis=-1)
    labels = np.where(labels >= missing, labels + 1, labels)  # shift ids up past the missing one
    maps.append(labels)
  return np.stack(maps).astype(np.int32)


def test_pixel_tokens_equal_upsample_then_segment_mean():
  rng = np.random.default_rng(4)
  batch, dim, num_segments, missing = 2, 6, 10, 3
  features = rng.normal(size=(batch, 4, 4, dim)).astype(np.float32)
  pos_grid = rng.normal(size=(6, 6, dim)).astype(np.float32)  # a grid other than the features' on purpose
  superpixels = voronoi_superpixels(rng, batch, 32, num_segments - 1, missing)
  assert superpixels.max() == num_segments - 1 and not (superpixels == missing).any()

  toks, counts = fast_jit(tokens.pixel_tokens, static_argnums=3)(features, pos_grid, superpixels, num_segments)

  # The naive way: full-resolution features and position embedding, then a mean over each segment's pixels.
  def naive(features, pos_grid, superpixels):
    up_features = resize.resize_2d(features, (32, 32), 'bilinear')
    up_pos = resize.resize_2d(pos_grid[None], (32, 32), 'bicubic')
    values = (up_features + up_pos).reshape(batch, 32 * 32, dim)
    return segments.segment_mean(values, superpixels.reshape(batch, -1), num_segments)

  expected, expected_counts = fast_jit(naive)(features, pos_grid, superpixels)
  toks, counts = np.asarray(toks), np.asarray(counts)
  assert toks.shape == (batch, num_segments, dim) and toks.dtype == np.float32
  np.testing.assert_array_equal(counts, np.asarray(expected_counts))
  np.testing.assert_array_equal(counts[:, missing], 0.0)
  np.testing.assert_allclose(toks, expected, rtol=1e-5, atol=1e-5)
  assert np.all(toks[:, missing] == 0.0)
  # Sanity of the data: the segments are not all alike.
  assert np.std(np.delete(toks, missing, axis=1), axis=1).min() > 0.1


def test_grid_tokens_equal_nearest_downsample_then_mean():
  rng = np.random.default_rng(5)
  batch, dim, num_segments = 2, 5, 11
  features = rng.normal(size=(batch, 4, 4, dim)).astype(np.float32)
  pos_table = rng.normal(size=(16, dim)).astype(np.float32)
  superpixels = voronoi_superpixels(rng, batch, 32, 9, missing=4)
  # Id 10 covers pixels that the stride-8 sampling never reads: present at full resolution, empty here.
  superpixels[:, 1:7, 1:7] = 10

  toks, counts, ids = fast_jit(tokens.grid_tokens, static_argnums=3)(features, pos_table, superpixels,
                                                                      num_segments)

  expected_ids = np.zeros((batch, 16), np.int64)
  expected = np.zeros((batch, num_segments, dim))
  expected_counts = np.zeros((batch, num_segments))
  for b in range(batch):
    for i in range(4):
      for j in range(4):
        segment = superpixels[b, 8 * i, 8 * j]  # PyTorch 'nearest': the top-left pixel of the cell
        expected_ids[b, 4 * i + j] = segment
        expected[b, segment] += features[b, i, j] + pos_table[4 * i + j]
        expected_counts[b, segment] += 1
  expected /= np.maximum(expected_counts, 1)[..., None]

  np.testing.assert_array_equal(np.asarray(ids), expected_ids)
  np.testing.assert_array_equal(np.asarray(counts), expected_counts)
  np.testing.assert_allclose(toks, expected, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(counts)[:, [4, 10]] == 0) and np.all(np.asarray(toks)[:, [4, 10]] == 0.0)


def test_grid_tokens_reject_a_map_that_is_not_a_stride_multiple():
  with pytest.raises(ValueError, match='times an integer stride'):
    tokens.grid_tokens(jnp.zeros((1, 4, 4, 2)), jnp.zeros((16, 2)), jnp.zeros((1, 30, 32), jnp.int32), 4)
