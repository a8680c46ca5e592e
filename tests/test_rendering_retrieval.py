"""The cross-rendering retrieval diagnostic: renderings, scores and the path through a real encoder."""

import numpy as np
import pytest

from cast_jax.evaluate import rendering_retrieval as rr


def test_render_pairs_share_object_and_differ_in_appearance():
  first, second, labels = rr.render_pairs(3, 64, source_size=64)
  assert first.shape == second.shape == (3, 64, 64, 3) and first.dtype == np.uint8 and labels.shape == (3,)
  assert not np.array_equal(first, second)
  same, _, _ = rr.render_pairs(3, 64, source_size=64, appearance=0)
  np.testing.assert_array_equal(same, first)


def test_retrieval_scores_count_exact_and_class_matches():
  labels = np.array([0, 0, 1, 1])
  a = np.eye(4)
  # Query 0 finds 0 (exact), 1 finds 0 (same class), 2 finds 3 (same class), 3 finds 0 (wrong class).
  b = np.array([[1, 1, 0, 1], [.5, .5, .5, .5], [-1, -1, -1, -1], [0, 0, 1, 0]], float)
  scores = rr.retrieval_scores(a, b, labels)
  assert scores['instance_top1'] == 25.0 and scores['class_match'] == 75.0 and scores['chance'] == 25.0
  with pytest.raises(ValueError, match='both be'):
    rr.retrieval_scores(a, b[:3], labels)


def test_identical_renderings_are_always_found_by_an_untrained_encoder():
  import jax
  from cast_jax.models import ModelSpec, build_model
  from cast_jax.superpixels import compute_superpixels, preset

  spec = ModelSpec(kind='cast', variant='small', image_size=64, embed_dim=24, depth=(1, 1, 1, 1), num_heads=2,
                   num_clusters=(16, 8, 4, 2), max_segments=64)
  model = build_model(spec)
  first, _, labels = rr.render_pairs(8, 64, source_size=64)
  config = preset('moco', num_segments=36, iterations=4)
  superpixel_fn = lambda im: compute_superpixels(im, config)
  x = np.stack([np.zeros((64, 64, 3), np.float32)] * 2)
  variables = model.init(jax.random.PRNGKey(0), x, np.zeros((2, 64, 64), np.int32), train=False)
  apply = jax.jit(lambda x, s: model.apply(variables, x, s, train=False)['features'])
  features = rr.encode(apply, first, superpixel_fn, batch_size=4)
  assert features.shape[0] == 8
  scores = rr.retrieval_scores(features, rr.encode(apply, first, superpixel_fn, batch_size=4), labels)
  assert scores['instance_top1'] == 100.0
