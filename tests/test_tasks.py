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


def _supervised_task(config):
  spec = loop.model_spec(config)
  model = build_model(spec)
  size = spec.image_size
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                             jnp.zeros((1, size, size), jnp.int32)))['params']
  return spec, tasks.build_task(config, spec, model, params, (6, 6, 1))


@pytest.mark.parametrize('mixing', ['off', 'mixup', 'cutmix'])
def test_supervised_mixing_follows_the_config(mixing):
  """mix_prob / mixup_alpha / cutmix_alpha reach the batch mixing: off gives the plain one-hot labels."""
  config = load_config_file(REPO_ROOT / 'configs' / 'deit_demo.py:test')
  config.label_smoothing = 0.0
  config.mix_prob = 0.0 if mixing == 'off' else 1.0
  config.mixup_alpha = 0.8 if mixing == 'mixup' else 0.0
  config.cutmix_alpha = 1.0 if mixing == 'cutmix' else 0.0
  spec, task = _supervised_task(config)
  iterator = task.make_iterator(8, 0, 1)
  batches = [next(iterator) for _ in range(3)]
  for batch in batches:
    one_hot = np.eye(spec.num_classes, dtype=np.float32)[batch['label']]
    if mixing == 'off':
      np.testing.assert_array_equal(batch['targets'], one_hot)
    else:  # two classes share each row (unless a row is paired with a same-class image)
      np.testing.assert_allclose(batch['targets'].sum(axis=1), 1.0, rtol=1e-6)
  if mixing != 'off':
    assert any(np.any((b['targets'] > 0.01) & (b['targets'] < 0.99)) for b in batches)


def test_supervised_lr_schedule_choice():
  config = load_config_file(REPO_ROOT / 'configs' / 'deit_demo.py:test')
  config.warmup_epochs = 1
  config.lr_schedule = 'deit_epoch'
  _, epoch_task = _supervised_task(config)
  config.lr_schedule = 'warmup_cosine'
  _, step_task = _supervised_task(config)
  peak = config.base_lr * config.batch_size / 512
  epoch_lr = [float(epoch_task.objective.learning_rate_fn(s)) for s in range(6)]
  step_lr = [float(step_task.objective.learning_rate_fn(s)) for s in range(6)]
  assert epoch_lr == [epoch_lr[0]] * 6  # one epoch of 6 steps: constant (timm's warm-up start)
  np.testing.assert_allclose(step_lr[:2], [0.0, peak], rtol=1e-6)  # linear warm-up over one step, then cosine
  assert step_lr[1] > step_lr[3] > step_lr[5] > 0
  config.lr_schedule = 'linear'
  with pytest.raises(ValueError, match='unknown lr_schedule'):
    _supervised_task(config)
