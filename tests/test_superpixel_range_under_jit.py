"""Under jit, superpixel values cannot be checked, so out-of-range ids must be contained and reported."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cast_jax.models import ModelSpec, build_model
from conftest import quick_variables


def _grid_ids(size: int, side: int) -> np.ndarray:
  idx = np.arange(size) // (size // side)
  return (idx[:, None] * side + idx[None, :]).astype(np.int32)


def test_out_of_range_ids_are_flagged_and_do_not_leak_into_other_images():
  spec = ModelSpec(kind='cast', embed_dim=48, depth=(1, 1, 1, 1), num_clusters=(8, 4, 2, 1), image_size=64,
                   max_segments=16)
  model = build_model(spec)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  good = _grid_ids(64, 4)  # ids 0..15, every slot used
  bad = good.copy()
  bad[:16, :16] = 99  # out of range for max_segments=16
  bad[16:24, 40:48] = -3  # negative: would land in the previous image's slots if offsets were naive
  variables = quick_variables(model, images, jnp.asarray(np.stack([good, good])))
  forward = jax.jit(lambda x, y: model.apply(variables, x, y))

  both = forward(images, jnp.asarray(np.stack([bad, good])))
  clean = forward(images, jnp.asarray(np.stack([good, good])))  # same shapes: no second compilation
  np.testing.assert_array_equal(np.asarray(both['intermediates']['superpixels_in_range']), [False, True])
  np.testing.assert_array_equal(np.asarray(clean['intermediates']['superpixels_in_range']), [True, True])
  np.testing.assert_allclose(np.asarray(both['features'][1]), np.asarray(clean['features'][1]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(both['intermediates']['block1'][1]),
                             np.asarray(clean['intermediates']['block1'][1]), atol=1e-5)
  # The dropped pixels leave their slots empty instead of inventing a segment.
  assert bool(both['intermediates']['padding_mask1'][0, 0]) or int(both['intermediates']['superpixel_counts'][0]) < 16


def test_token_count_follows_the_map_the_model_samples():
  """The original's token count is max id + 1 of the stride-8 map it pools over, not of the full map."""
  spec = ModelSpec(kind='cast', embed_dim=48, depth=(1, 1, 1, 1), num_clusters=(8, 4, 2, 1), image_size=64,
                   max_segments=16)
  model = build_model(spec)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 64, 3)), jnp.float32)
  ids = _grid_ids(64, 4) % 12  # ids 0..11 at every sampled pixel
  hidden = ids.copy()
  hidden[1::8, 1::8] = 15  # id 15 only at pixels the stride-8 sampling skips
  variables = quick_variables(model, images, jnp.asarray(np.stack([ids, ids])))
  forward = jax.jit(lambda y: model.apply(variables, images, y))
  plain, with_hidden = forward(jnp.asarray(np.stack([ids, ids]))), forward(jnp.asarray(np.stack([hidden, hidden])))
  assert int(np.asarray(with_hidden['intermediates']['valid_tokens']).sum(axis=1)[0]) == 12
  np.testing.assert_allclose(np.asarray(with_hidden['features']), np.asarray(plain['features']), atol=1e-6)
