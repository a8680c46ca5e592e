"""What ``cast_jax.train.tasks`` hands the loop: config fields reach the pipeline they name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax.models import build_model
from cast_jax.train import loop, tasks
from cast_jax.train.config_lib import load_config_file
from conftest import REPO_ROOT


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_supervised_label_smoothing_reaches_the_mixed_targets(smoothing):
  config = load_config_file(REPO_ROOT / 'configs' / 'deit_demo.py:test')
  config.label_smoothing = smoothing
  spec = loop.model_spec(config)
  model = build_model(spec)
  size = spec.image_size
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                             jnp.zeros((1, size, size), jnp.int32)))['params']
  task = tasks.build_task(config, spec, model, params, (6, 6, 0))
  targets = next(task.make_iterator(8, 0, 1))['targets']
  np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
  # timm's smoothing puts smoothing / num_classes on every class, so it is the smallest target left after mixing.
  np.testing.assert_allclose(targets.min(), smoothing / spec.num_classes, atol=1e-7)


def test_evaluation_subsets_spread_over_a_class_sorted_source():
  from cast_jax.train.inputs import _EvenSubset  # pylint: disable=import-outside-toplevel

  sorted_by_class = [f'class{i // 25}' for i in range(100)]  # a folder source: 4 classes, 25 images each
  subset = _EvenSubset(sorted_by_class, 8)
  assert [subset[i] for i in range(len(subset))] == ['class0'] * 2 + ['class1'] * 2 + ['class2'] * 2 + ['class3'] * 2
  assert [_EvenSubset(list(range(5)), 5)[i] for i in range(5)] == [0, 1, 2, 3, 4]
  with pytest.raises(IndexError):
    subset[8]
