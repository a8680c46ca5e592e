"""Superpixel bookkeeping (segment means, validity masks, input checks) and farthest point sampling.

Every jitted helper is compared with a plain numpy loop written here from the spec, never with the code under
test; FPS is checked against a numpy transcription of DGL's ``farthest_point_sampler`` (the reference in
/work/shared/spec/fps_reference_dgl_semantics.py, without torch).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cast_jax.models.cast as cast_module
from cast_jax.models import ModelSpec, build_model, segments
from cast_jax.models.fps import farthest_point_sampling
from cast_jax.models.graph_pool import GraphPooling
from conftest import fast_jit


# --------------------------------------------------------------------------------------------------------------
# Segment means and validity masks.


def numpy_segment_mean(values, ids, num_segments):
  """Per-image mean of ``values`` (B, P, C) over pixels with the same id, by an explicit loop."""
  batch, pixels, channels = values.shape
  sums = np.zeros((batch, num_segments, channels), np.float64)
  counts = np.zeros((batch, num_segments), np.int64)
  for b in range(batch):
    for p in range(pixels):
      sums[b, ids[b, p]] += values[b, p]
      counts[b, ids[b, p]] += 1
  means = np.zeros_like(sums)
  for b in range(batch):
    for s in range(num_segments):
      if counts[b, s]:
        means[b, s] = sums[b, s] / counts[b, s]
  return means, counts


def test_segment_mean_matches_numpy_loop_with_empty_segments():
  rng = np.random.default_rng(0)
  num_segments = 10
  values = rng.normal(size=(3, 40, 5)).astype(np.float32)
  # Image 0 uses ids 0..7, image 1 skips 2 and 5, image 2 only 0..2: every image has empty ids, and the
  # batches do not share them, so an offset mix-up between images would show.
  ids = np.stack([rng.integers(0, 8, 40), rng.choice([0, 1, 3, 4, 6, 7, 8, 9], 40), rng.integers(0, 3, 40)])
  ids[0, :8] = np.arange(8)  # every id of image 0 occurs at least once
  ids = ids.astype(np.int32)
  expected_means, expected_counts = numpy_segment_mean(values, ids, num_segments)
  assert (expected_counts == 0).any(axis=1).all(), 'the data must give every image an empty segment'

  means, counts = jax.jit(segments.segment_mean, static_argnums=2)(values, ids, num_segments)
  means, counts = np.asarray(means), np.asarray(counts)
  assert means.shape == (3, num_segments, 5) and counts.shape == (3, num_segments)
  np.testing.assert_array_equal(counts, expected_counts)
  np.testing.assert_allclose(means, expected_means, rtol=1e-5, atol=1e-6)
  empty = expected_counts == 0
  assert np.all(means[empty] == 0.0), 'empty segments must give exact zeros'

  sums = np.asarray(jax.jit(segments.segment_sum, static_argnums=2)(values, ids, num_segments))
  np.testing.assert_allclose(sums, expected_means * expected_counts[..., None], rtol=1e-5, atol=1e-5)


def test_batch_valid_mask_uses_the_max_id_of_the_whole_batch():
  # Image 0 reaches id 3 only, image 1 reaches 6: both get 7 valid slots (the original's S = max + 1).
  ids = jnp.asarray([[0, 1, 3, 3, 2], [6, 0, 0, 1, 4]], jnp.int32)
  valid = np.asarray(jax.jit(segments.batch_valid_mask, static_argnums=1)(ids, 9))
  expected = np.array([[True] * 7 + [False] * 2] * 2)
  np.testing.assert_array_equal(valid, expected)

  only_zero = np.asarray(segments.batch_valid_mask(jnp.zeros((3, 4), jnp.int32), 5))
  np.testing.assert_array_equal(only_zero, np.array([[True, False, False, False, False]] * 3))


def test_downsample_nearest_takes_the_top_left_pixel_of_each_cell():
  ids = np.arange(2 * 16 * 24).reshape(2, 16, 24)
  down = np.asarray(segments.downsample_nearest(jnp.asarray(ids), 8))
  expected = np.array([[[ids[b, 8 * i, 8 * j] for j in range(3)] for i in range(2)] for b in range(2)])
  np.testing.assert_array_equal(down, expected)


# --------------------------------------------------------------------------------------------------------------
# Input validation.

GOOD_SUPERPIXELS = np.tile(np.arange(16, dtype=np.int32).reshape(1, 4, 4).repeat(16, 1).repeat(16, 2), (2, 1, 1))


@pytest.mark.parametrize('superpixels, kwargs, fragments', [
    (np.where(GOOD_SUPERPIXELS == 3, 16, GOOD_SUPERPIXELS), {}, ['superpixel id 16 is out of range',
                                                                'max_segments=16']),
    (np.where(GOOD_SUPERPIXELS == 3, -2, GOOD_SUPERPIXELS), {}, ['must be >= 0', 'found -2']),
    (GOOD_SUPERPIXELS[0], {}, ['(batch, height, width)', '(64, 64)']),
    (GOOD_SUPERPIXELS[..., None], {}, ['(batch, height, width)']),
    (GOOD_SUPERPIXELS.astype(np.float32), {}, ['integer array', 'float32']),
    (GOOD_SUPERPIXELS, {'batch_size': 3}, ['batch size 2', 'images batch size 3']),
    (GOOD_SUPERPIXELS, {'image_hw': (64, 48)}, ['spatial shape (64, 64)', 'image size (64, 48)']),
], ids=['id-too-large', 'negative-id', 'ndim-2', 'ndim-4', 'float-dtype', 'batch-mismatch', 'spatial-mismatch'])
def test_validate_superpixels_rejects_bad_maps(superpixels, kwargs, fragments):
  with pytest.raises(ValueError) as info:
    segments.validate_superpixels(jnp.asarray(superpixels), 16, **kwargs)
  for fragment in fragments:
    assert fragment in str(info.value)


def test_validate_superpixels_accepts_a_good_map():
  assert segments.validate_superpixels(jnp.asarray(GOOD_SUPERPIXELS), 16, (64, 64), batch_size=2) is None
  # The largest allowed id is max_segments - 1.
  assert segments.validate_superpixels(jnp.asarray(GOOD_SUPERPIXELS), 16) is None
  with pytest.raises(ValueError, match='out of range'):
    segments.validate_superpixels(jnp.asarray(GOOD_SUPERPIXELS), 15)


def _stem_must_not_run(*args, **kwargs):
  raise AssertionError('the conv stem was built before the inputs were validated')


TINY_CAST = ModelSpec(kind='cast', embed_dim=48, depth=(1, 1, 1, 1), num_clusters=(8, 4, 2, 1), image_size=64,
                      max_segments=16)
GOOD_IMAGES = np.zeros((2, 64, 64, 3), np.float32)


@pytest.mark.parametrize('images, superpixels, fragments', [
    (GOOD_IMAGES, np.where(GOOD_SUPERPIXELS == 3, 16, GOOD_SUPERPIXELS), ['out of range', 'max_segments=16']),
    (GOOD_IMAGES, np.where(GOOD_SUPERPIXELS == 3, -1, GOOD_SUPERPIXELS), ['must be >= 0']),
    (GOOD_IMAGES, GOOD_SUPERPIXELS[0], ['(batch, height, width)']),
    (GOOD_IMAGES, GOOD_SUPERPIXELS.astype(np.float32), ['integer array']),
    (GOOD_IMAGES, GOOD_SUPERPIXELS[:1], ['batch size 1', 'images batch size 2']),
    (GOOD_IMAGES, GOOD_SUPERPIXELS[:, :32, :32], ['spatial shape (32, 32)', 'image size (64, 64)']),
    (GOOD_IMAGES.transpose(0, 3, 1, 2), GOOD_SUPERPIXELS, ['channels-last', '(2, 3, 64, 64)']),
    (GOOD_IMAGES.astype(np.uint8), GOOD_SUPERPIXELS, ['normalized floats', 'uint8']),
], ids=['id-too-large', 'negative-id', 'ndim', 'float-ids', 'batch-mismatch', 'spatial-mismatch', 'nchw-images',
        'uint8-images'])
def test_model_rejects_bad_inputs_before_any_computation(monkeypatch, images, superpixels, fragments):
  # If validation came after tokenisation, building the stem would raise an AssertionError instead.
  monkeypatch.setattr(cast_module, 'ConvStem', _stem_must_not_run)
  model = build_model(TINY_CAST)
  with pytest.raises(ValueError) as info:
    model.init(jax.random.PRNGKey(0), jnp.asarray(images), jnp.asarray(superpixels))
  for fragment in fragments:
    assert fragment in str(info.value)


def test_shape_and_dtype_checks_also_fire_while_tracing():
  # Under jit the id range cannot be checked, but shapes and dtypes are static and still are.
  model = build_model(TINY_CAST)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  with pytest.raises(ValueError, match='integer array'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), images, jax.ShapeDtypeStruct((2, 64, 64), jnp.float32))
  with pytest.raises(ValueError, match='batch size 3'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), images, jax.ShapeDtypeStruct((3, 64, 64), jnp.int32))


# --------------------------------------------------------------------------------------------------------------
# Farthest point sampling.


def dgl_farthest_point_sampler(points, num_samples, start_index=0):
  """DGL's farthest_point_sampler, CPU semantics, in float64 numpy.

  Keeps each point's squared distance to the nearest pick so far; the next pick is found by a scan with a
  strict '>' from a best value of -1, so ties go to the lowest index.
  """
  points = np.asarray(points, np.float64)
  batch, num_points, _ = points.shape
  out = np.zeros((batch, num_samples), np.int64)
  for b in range(batch):
    sample = start_index
    out[b, 0] = sample
    dist = None
    for i in range(num_samples - 1):
      d = ((points[b] - points[b, sample]) ** 2).sum(-1)
      dist = d.copy() if dist is None else np.minimum(dist, d)
      best, sample = -1.0, 0
      for j in range(num_points):
        if dist[j] > best:
          best, sample = dist[j], j
      out[b, i + 1] = sample
  return out


fps_jit = fast_jit(farthest_point_sampling, static_argnums=(1, 2))


@pytest.mark.parametrize('batch, num_points, channels, num_samples', [
    (1, 5, 2, 5), (2, 17, 48, 9), (3, 64, 3, 16), (2, 197, 8, 65)])
def test_fps_matches_dgl_reference(batch, num_points, channels, num_samples):
  rng = np.random.default_rng(num_points)
  points = rng.normal(size=(batch, num_points, channels)).astype(np.float32)
  picks = np.asarray(fps_jit(points, num_samples, 0))
  assert picks.dtype == np.int32 and picks.shape == (batch, num_samples)
  np.testing.assert_array_equal(picks, dgl_farthest_point_sampler(points, num_samples))
  assert np.all(picks[:, 0] == 0)
  # Distinct random points: nothing is picked twice while unpicked points remain.
  assert all(len(set(row)) == num_samples for row in picks.tolist())


def test_fps_start_index_and_too_many_samples():
  rng = np.random.default_rng(1)
  points = rng.normal(size=(2, 11, 4)).astype(np.float32)
  picks = np.asarray(fps_jit(points, 6, 3))
  np.testing.assert_array_equal(picks, dgl_farthest_point_sampler(points, 6, start_index=3))
  assert np.all(picks[:, 0] == 3)
  with pytest.raises(ValueError, match='cannot sample 12 points from 11'):
    farthest_point_sampling(jnp.asarray(points), 12)


def test_fps_ties_go_to_the_lowest_index():
  # Integer coordinates make the distances exact in float32, so the ties below are real ties.
  # Element 0: points 2 and 3 are duplicates at the largest distance (50) from the start: 2 wins. Then 1 and
  # 4 tie at distance 1: 1 wins. Once every distance is 0, the first maximum is index 0 (DGL repeats it).
  # Element 1: four points at distance 9 from the start; each later pick breaks the tie towards the lowest
  # index, and the duplicate of point 1 (index 5) is never picked.
  points = np.array([
      [[0, 0], [1, 0], [5, 5], [5, 5], [-1, 0], [0, 0]],
      [[0, 0], [3, 0], [0, 3], [-3, 0], [0, -3], [3, 0]],
  ], np.float32)
  picks = np.asarray(fps_jit(points, 6, 0))
  np.testing.assert_array_equal(picks, [[0, 2, 1, 4, 0, 0], [0, 1, 2, 3, 4, 0]])
  np.testing.assert_array_equal(picks, dgl_farthest_point_sampler(points, 6))


def masked_fps_input(tokens, excluded):
  """GraphPooling's FPS input: excluded tokens replaced by the mean of the others, that mean prepended."""
  keep = (~excluded).astype(np.float32)[..., None]
  mean = (tokens * keep).sum(1, keepdims=True) / np.maximum(keep.sum(1, keepdims=True), 1.0)
  filled = np.where(excluded[..., None], mean, tokens)
  return np.concatenate([mean, filled], axis=1).astype(np.float32)


def test_fps_in_the_masked_setting_never_picks_masked_tokens():
  rng = np.random.default_rng(2)
  batch, num_tokens, num_clusters = 4, 20, 8
  # Masked tokens get large values: if they were not replaced by the mean they would be picked first.
  tokens = rng.normal(size=(batch, num_tokens, 6)).astype(np.float32)
  mask = rng.random((batch, num_tokens)) < 0.4
  mask[0] = False  # one element with nothing masked
  mask[1] = np.arange(num_tokens) < num_tokens - num_clusters  # exactly K unmasked tokens: all must be picked
  tokens[mask] *= 50.0
  points = masked_fps_input(tokens, mask)
  picks = np.asarray(fps_jit(points, num_clusters + 1, 0))
  np.testing.assert_array_equal(picks, dgl_farthest_point_sampler(points, num_clusters + 1))
  chosen = picks[:, 1:] - 1
  assert np.all(chosen >= 0)
  for b in range(batch):
    assert not mask[b, chosen[b]].any(), f'element {b} picked a masked token'
    assert len(set(chosen[b].tolist())) == num_clusters
  assert sorted(chosen[1].tolist()) == list(range(num_tokens - num_clusters, num_tokens))


def test_graph_pooling_samples_like_the_reference_and_ignores_padding():
  """GraphPooling's own FPS picks, and the padding contract at module level.

  The same 12 tokens are pooled once as they are, and once followed by 4 padding slots with large garbage
  values marked invalid: nothing may change.
  """
  rng = np.random.default_rng(3)
  batch, num_tokens, dim, num_clusters = 2, 12, 24, 4
  # Real tokens sit away from the origin, so the zero tokens of empty superpixels are the farthest points:
  # FPS would pick them first if the mask were ignored.
  tokens = (3.0 + rng.normal(size=(batch, num_tokens, dim))).astype(np.float32)
  empty = np.zeros((batch, num_tokens), bool)
  empty[0, [2, 7]] = True
  empty[1, 5] = True
  tokens[empty] = 0.0
  tokens[1, 9] += 2.0  # and one far real token, so that the picks are not trivially the lowest indices
  cls = rng.normal(size=(batch, 1, dim)).astype(np.float32)
  pool = GraphPooling(num_clusters)
  variables = fast_jit(pool.init)(jax.random.PRNGKey(0), cls, tokens, empty)
  apply = fast_jit(pool.apply)
  plain = apply(variables, cls, tokens, empty)

  expected = dgl_farthest_point_sampler(masked_fps_input(tokens, empty), num_clusters + 1)[:, 1:] - 1
  np.testing.assert_array_equal(np.asarray(plain.sampled_inds), expected)
  assert 9 in np.asarray(plain.sampled_inds)[1]
  for b in range(batch):
    assert not empty[b, np.asarray(plain.sampled_inds)[b]].any()
  assert plain.logits.shape == (batch, num_tokens, num_clusters)
  assert plain.centroids.shape == (batch, num_clusters, dim) and plain.cls.shape == (batch, 1, dim)

  padding = 100.0 * rng.normal(size=(batch, 4, dim)).astype(np.float32)
  padded_tokens = np.concatenate([tokens, padding], axis=1)
  padded_empty = np.concatenate([empty, np.zeros((batch, 4), bool)], axis=1)
  valid = np.concatenate([np.ones((batch, num_tokens), bool), np.zeros((batch, 4), bool)], axis=1)
  padded = apply(variables, cls, padded_tokens, padded_empty, valid)
  np.testing.assert_array_equal(np.asarray(padded.sampled_inds), np.asarray(plain.sampled_inds))
  np.testing.assert_allclose(np.asarray(padded.logits)[:, :num_tokens], plain.logits, atol=1e-5)
  np.testing.assert_allclose(padded.centroids, plain.centroids, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(padded.cls, plain.cls, rtol=1e-5, atol=1e-5)
