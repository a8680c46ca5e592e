"""``segmentation.segmenter_optimizer``: the original's SGD (Nesterov, no decay) or, as an option, AdamW."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cast_jax.train import segmentation


def _one_update(optimizer, params, grads):
  state = optimizer.init(params)
  updates, _ = optimizer.update(grads, state, params)
  return optax.apply_updates(params, updates)


def test_sgd_first_step_is_nesterov_momentum_sgd():
  params = {'w': jnp.array([1.0, -2.0])}
  grads = {'w': jnp.array([0.5, 0.25])}
  new = _one_update(segmentation.segmenter_optimizer(0.1, params), params, grads)
  # torch SGD, Nesterov, first step: buf = g; d = g + 0.9 g; p -= lr d
  np.testing.assert_allclose(new['w'], params['w'] - 0.1 * 1.9 * grads['w'], rtol=1e-6)


def test_adamw_first_step_moves_each_parameter_by_the_rate_plus_decay():
  params = {'w': jnp.array([1.0, -2.0])}
  grads = {'w': jnp.array([0.5, -0.25])}
  new = _one_update(segmentation.segmenter_optimizer(1e-2, params, kind='adamw', weight_decay=0.1), params, grads)
  # Adam's first step is lr * sign(g) (bias-corrected m / sqrt(v)); decoupled decay adds lr * wd * p.
  expected = params['w'] - 1e-2 * np.sign(grads['w']) - 1e-2 * 0.1 * params['w']
  np.testing.assert_allclose(new['w'], expected, rtol=1e-4)


def test_bad_choices_raise_clearly():
  params = {'w': jnp.zeros(2)}
  with pytest.raises(ValueError, match="'sgd'.*'adamw'"):
    segmentation.segmenter_optimizer(0.1, params, kind='lamb')
  with pytest.raises(ValueError, match='weight decay'):
    segmentation.segmenter_optimizer(0.1, params, kind='sgd', weight_decay=1e-4)
