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


def _moco_task(config, abstract=False):
  spec = loop.model_spec(config)
  model = build_model(spec)
  size = spec.image_size
  init = lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3)), jnp.zeros((2, size, size), jnp.int32))
  variables = jax.eval_shape(init) if abstract else init()
  # (steps per epoch, total steps, warm-up steps): no warm-up, so that step 0 has a non-zero rate.
  return spec, variables, tasks.build_task(config, spec, model, variables['params'], (6, 6, 0))


@pytest.mark.slow  # a MoCo step's compile: ~1 min on an idle 2-core CPU; the routing is tested fast below
def test_frozen_params_keep_the_stem_at_its_initial_values_through_a_jitted_moco_step():
  """``frozen_params`` (MoCo-v3's frozen random patch projection, here CAST's conv stem): the matched leaves
  keep their values in the base and the momentum encoder, hold no optimizer state, and everything else trains."""
  config = load_config_file(REPO_ROOT / 'configs' / 'demo.py:test')
  config.frozen_params = ('encoder/patch_embed',)
  _, variables, task = _moco_task(config)
  state = task.objective.init_state(variables, jax.random.PRNGKey(1))
  batch = next(task.make_iterator(config.batch_size, 0, 1))
  batch = {k: jnp.asarray(batch[k]) for k in task.batch_keys}
  new_state, _ = jax.jit(task.objective.train_step)(state, batch)

  stem_before = jax.tree_util.tree_leaves(state.params['encoder']['patch_embed'])
  stem_after = jax.tree_util.tree_leaves(new_state.params['encoder']['patch_embed'])
  assert stem_before
  for before, after in zip(stem_before, stem_after):
    np.testing.assert_array_equal(before, after)
  for before, after in zip(jax.tree_util.tree_leaves(state.ema_params['encoder']['patch_embed']),
                           jax.tree_util.tree_leaves(new_state.ema_params['encoder']['patch_embed'])):
    np.testing.assert_array_equal(before, after)
  moved = [not np.array_equal(b, a) for b, a in zip(jax.tree_util.tree_leaves(state.params['encoder']['blocks_0']),
                                                     jax.tree_util.tree_leaves(new_state.params['encoder']['blocks_0']))]
  assert all(moved), 'the rest of the encoder must still train'
  stem_size = sum(leaf.size for leaf in stem_before)
  frozen = [l for l in jax.tree_util.tree_leaves(task.trainable_labels) if l == 'frozen']
  assert len(frozen) >= len(stem_before)
  assert stem_size > 0


def test_frozen_params_route_the_matched_leaves_to_no_update_under_jit():
  from cast_jax.train import optim  # pylint: disable=import-outside-toplevel

  params = {'encoder': {'patch_embed': {'proj_0': {'kernel': jnp.ones((3, 3))}}, 'patch_embedding_norm': jnp.ones(3),
                        'blocks_0': {'kernel': jnp.ones((2, 2))}}, 'head': {'bias': jnp.ones(2)}}
  labels = optim.freeze_matching(jax.tree_util.tree_map(lambda _: 'trainable', params), ['encoder/patch_embed/'])
  assert labels['encoder']['patch_embed']['proj_0']['kernel'] == 'frozen'
  assert labels['encoder']['patch_embedding_norm'] == 'trainable'  # the trailing '/' keeps a name prefix out
  assert labels['encoder']['blocks_0']['kernel'] == labels['head']['bias'] == 'trainable'
  optimizer = optim.adamw(0.1, labels, weight_decay=0.5, decay_mask=optim.decay_all(params))
  grads = jax.tree_util.tree_map(jnp.ones_like, params)

  @jax.jit
  def step(p):
    updates, _ = optimizer.update(grads, optimizer.init(p), p)
    return jax.tree_util.tree_map(lambda a, u: a + u, p, updates)

  new = step(params)
  np.testing.assert_array_equal(new['encoder']['patch_embed']['proj_0']['kernel'], 1.0)  # no step, no decay
  assert np.all(np.asarray(new['encoder']['blocks_0']['kernel']) < 0.9)
  assert np.all(np.asarray(new['encoder']['patch_embedding_norm']) < 0.9)


def test_frozen_params_errors_name_the_problem():
  config = load_config_file(REPO_ROOT / 'configs' / 'demo.py:test')
  config.frozen_params = ('encoder/patch_emb3d',)
  with pytest.raises(ValueError, match=r"matches no parameter.*top-level names: \['encoder', 'predictor', "
                                       r"'projector'\]"):
    _moco_task(config, abstract=True)
  config.frozen_params = ('encoder/(',)
  with pytest.raises(ValueError, match='not a regular expression'):
    _moco_task(config, abstract=True)
  seg = load_config_file(REPO_ROOT / 'configs' / 'seg_demo.py:test')
  seg.frozen_params = ('encoder/patch_embed',)
  with pytest.raises(ValueError, match='read by the moco and supervised trainers only'):
    tasks.build_task(seg, loop.model_spec(seg), None, {}, (6, 6, 1))


def test_lr_multipliers_scale_the_matched_groups_update_under_jit():
  """``config.lr_multipliers`` (('predictor/', 10.0),): the moco trainer's AdamW moves the predictor exactly 10x
  as far as the single-group optimizer would, everything else exactly as far; without the field the optimizer
  is the original's single group. Frozen leaves stay frozen."""
  config = load_config_file(REPO_ROOT / 'configs' / 'demo.py:test')
  assert tuple(map(tuple, config.lr_multipliers)) == (('predictor/', 10.0),)  # the demo's own setting
  config.lr_multipliers = ()
  _, variables, plain_task = _moco_task(config)
  config.lr_multipliers = (('predictor/', 10.0),)
  config.frozen_params = ('encoder/patch_embed/',)
  _, _, task = _moco_task(config)
  config.lr_multipliers = ()
  _, _, frozen_only = _moco_task(config)
  params = variables['params']
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.3), params)

  def first_update(optimizer):
    return jax.jit(lambda p: optimizer.update(grads, optimizer.init(p), p)[0])(params)

  scaled, reference = first_update(task.objective.optimizer), first_update(frozen_only.objective.optimizer)
  for path, up in jax.tree_util.tree_flatten_with_path(scaled)[0]:
    name = '/'.join(getattr(k, 'key', str(k)) for k in path)
    ref = reference
    for k in path:
      ref = ref[k.key]
    factor = 10.0 if name.startswith('predictor/') else 1.0
    np.testing.assert_allclose(np.asarray(up), factor * np.asarray(ref), rtol=1e-5, atol=1e-9, err_msg=name)
    if name.startswith('encoder/patch_embed/'):
      assert not np.any(np.asarray(up))
  assert np.any(np.asarray(jax.tree_util.tree_leaves(scaled['predictor'])[0]))
  # Without the field the original's single group (a checkpoint's optimizer state keeps its layout).
  assert set(plain_task.objective.optimizer.init(params).inner_states) == {'trainable', 'frozen'}
  assert set(task.objective.optimizer.init(params).inner_states) == {'base', 'predictor/', 'frozen'}



def test_lr_multipliers_errors_name_the_problem():
  config = load_config_file(REPO_ROOT / 'configs' / 'demo.py:test')
  config.lr_multipliers = (('predicter/', 10.0),)
  with pytest.raises(ValueError, match=r"lr_multipliers pattern 'predicter/' matches no parameter"):
    _moco_task(config, abstract=True)
  config.lr_multipliers = (('predictor/',),)
  with pytest.raises(ValueError, match=r'must be pairs \(pattern, multiplier\)'):
    _moco_task(config, abstract=True)
  deit = load_config_file(REPO_ROOT / 'configs' / 'deit_demo.py:test')
  deit.lr_multipliers = (('head/', 10.0),)
  with pytest.raises(ValueError, match='read by the moco trainer only'):
    tasks.build_task(deit, loop.model_spec(deit), None, {}, (6, 6, 1))


def test_predictor_first_steps_hold_everything_but_the_predictor_under_jit():
  """``predictor_first_steps=2``: the first two AdamW updates move only the predictor, the third moves all."""
  config = load_config_file(REPO_ROOT / 'configs' / 'demo.py:test')
  config.predictor_first_steps = 2
  _, variables, task = _moco_task(config)
  params = variables['params']
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.3), params)
  optimizer = task.objective.optimizer

  @jax.jit
  def three_updates(p):
    state, moved = optimizer.init(p), []
    for _ in range(3):
      updates, state = optimizer.update(grads, state, p)
      moved.append({name: jnp.any(jnp.stack([jnp.any(u != 0) for u in jax.tree_util.tree_leaves(updates[name])]))
                    for name in ('encoder', 'projector', 'predictor')})
    return moved

  moved = jax.device_get(three_updates(params))
  assert [bool(m['predictor']) for m in moved] == [True, True, True]
  assert [bool(m['encoder']) for m in moved] == [False, False, True]
  assert [bool(m['projector']) for m in moved] == [False, False, True]
  deit = load_config_file(REPO_ROOT / 'configs' / 'deit_demo.py:test')
  deit.predictor_first_steps = 8
  with pytest.raises(ValueError, match='predictor_first_steps is read by the moco trainer only'):
    tasks.build_task(deit, loop.model_spec(deit), None, {}, (6, 6, 1))
