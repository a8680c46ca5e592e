"""Parameter groups (lr multiplier, weight decay) apart from the trainable mask; AdamW, torch SGD (Nesterov) and
SPML's SGD built from groups, each against its PyTorch update rule written out by hand; the Schedule lengths and
the polynomial schedules."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cast_jax.train import optim, schedules

PARAMS = {'backbone': {'kernel': np.array([[0.5, -1.0], [2.0, 0.25]], np.float32), 'bias': np.array([0.1, -0.2],
                                                                                                     np.float32)},
          'classifier': {'kernel': np.array([[1.5], [-0.5]], np.float32), 'bias': np.array([0.3], np.float32)},
          'pos_embed': np.array([1.0, 2.0], np.float32)}
TRAINABLE = {'backbone': {'kernel': True, 'bias': True}, 'classifier': {'kernel': True, 'bias': True},
             'pos_embed': False}
GRADS = [jax.tree_util.tree_map(lambda p, s=s: np.sin(np.arange(p.size) + s).reshape(p.shape).astype(np.float32),
                                PARAMS) for s in range(3)]
LABELS = optim.group_labels(PARAMS, optim.spml_group_rule())
GROUPS = optim.spml_groups(weight_decay=0.1)


def _run(optimizer, steps=3):
  @jax.jit
  def run(params):
    state = optimizer.init(params)
    for g in GRADS[:steps]:
      updates, state = optimizer.update(g, state, params)
      params = jax.tree_util.tree_map(jnp.add, params, updates)
    return params, state

  return jax.device_get(run(PARAMS))


def _group(path):
  return GROUPS[optim.spml_group_rule()(path, None)]


def _paths():
  return [('backbone', 'kernel'), ('backbone', 'bias'), ('classifier', 'kernel'), ('classifier', 'bias')]


def _get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def test_group_labels_follow_the_spml_rule():
  assert LABELS == {'backbone': {'kernel': 'backbone_weight', 'bias': 'backbone_bias'},
                    'classifier': {'kernel': 'classifier_weight', 'bias': 'classifier_bias'},
                    'pos_embed': 'backbone_weight'}
  assert [(g.lr_mult, g.weight_decay) for g in GROUPS.values()] == [(1, 0.1), (2, 0), (10, 0.1), (20, 0)]


def test_torch_sgd_groups_with_nesterov_and_decay():
  lr = lambda step: 0.1 / (1.0 + step)
  after, _ = _run(optim.sgd_groups(lr, GROUPS, LABELS, TRAINABLE, momentum=0.9, nesterov=True))
  for path in _paths():  # torch.optim.SGD(nesterov=True), written out
    group, p, buf = _group(path), _get(PARAMS, path).astype(np.float64), None
    for k, grads in enumerate(GRADS):
      d = _get(grads, path) + group.weight_decay * p
      buf = d if buf is None else 0.9 * buf + d
      p = p - group.lr_mult * lr(k) * (d + 0.9 * buf)
    np.testing.assert_allclose(_get(after, path), p, rtol=1e-5, atol=1e-6, err_msg=str(path))
  np.testing.assert_array_equal(after['pos_embed'], PARAMS['pos_embed'])  # frozen: no update, no decay


def test_adamw_groups_scale_the_rate_and_decay_per_group():
  after, _ = _run(optim.adamw_groups(0.01, GROUPS, LABELS, TRAINABLE), steps=1)
  for path in _paths():  # first AdamW step: m_hat = g, v_hat = g^2
    group, p, g = _group(path), _get(PARAMS, path), _get(GRADS[0], path)
    lr = 0.01 * group.lr_mult
    expected = p - lr * (g / (np.abs(g) + 1e-8) + group.weight_decay * p)
    np.testing.assert_allclose(_get(after, path), expected, rtol=1e-5, atol=1e-6, err_msg=str(path))
  np.testing.assert_array_equal(after['pos_embed'], PARAMS['pos_embed'])


def test_spml_sgd_folds_the_rate_into_the_buffer():
  lr = lambda step: 0.1 / (1.0 + step)
  after, state = _run(optim.spml_sgd_groups(lr, GROUPS, LABELS, TRAINABLE, momentum=0.9))
  for path in _paths():
    group, p, buf = _group(path), _get(PARAMS, path).astype(np.float64), 0.0
    for k, grads in enumerate(GRADS):
      buf = 0.9 * buf + group.lr_mult * lr(k) * (_get(grads, path) + group.weight_decay * p)
      p = p - buf
    np.testing.assert_allclose(_get(after, path), p, rtol=1e-5, atol=1e-6, err_msg=str(path))
  np.testing.assert_array_equal(after['pos_embed'], PARAMS['pos_embed'])
  # Frozen leaves hold no optimizer state: the buffers cover exactly the four trainable leaves.
  buffers = [x for x in jax.tree_util.tree_leaves(state) if np.ndim(x) > 0]
  assert sorted(b.size for b in buffers) == [1, 2, 2, 4]
  with pytest.raises(ValueError, match='needs the parameters'):
    optim.spml_sgd(0.1, weight_decay=0.1).update(GRADS[0], optim.spml_sgd(0.1).init(PARAMS))


def test_grouped_rejects_unknown_labels_and_bad_masks():
  with pytest.raises(ValueError, match=r"group labels \['backbone_bias'\] have no Group"):
    optim.grouped(lambda g: None, {'backbone_weight': optim.Group(), 'classifier_weight': optim.Group(),
                                   'classifier_bias': optim.Group()}, LABELS, TRAINABLE)
  with pytest.raises(ValueError, match="'frozen' is reserved"):
    optim.grouped(lambda g: None, {'frozen': optim.Group()}, LABELS, TRAINABLE)
  bad = jax.tree_util.tree_map(lambda _: 'yes', TRAINABLE)
  with pytest.raises(ValueError, match="trainable mask holds True/False or 'trainable'/'frozen'"):
    optim.sgd_groups(0.1, GROUPS, LABELS, bad)
  # The existing string mask works too.
  strings = jax.tree_util.tree_map(lambda t: optim.TRAINABLE if t else optim.FROZEN, TRAINABLE)
  after, _ = _run(optim.sgd_groups(0.1, GROUPS, LABELS, strings), steps=1)
  np.testing.assert_array_equal(after['pos_embed'], PARAMS['pos_embed'])
  assert not np.array_equal(after['backbone']['kernel'], PARAMS['backbone']['kernel'])


def test_schedule_lengths_with_and_without_the_partial_last_batch():
  dropped = schedules.Schedule.from_lengths(20210, 8, 2, 0.5)
  kept = schedules.Schedule.from_lengths(20210, 8, 2, 0.5, partial_last_batch=True)
  assert (dropped.steps_per_epoch, dropped.total_steps, dropped.warmup_steps) == (2526, 5052, 1263)
  assert (kept.steps_per_epoch, kept.total_steps) == (2527, 5054)  # iter_max = ceil(N/B) x epochs
  assert schedules.Schedule.from_lengths(100, 8, 1, 0.3).warmup_steps == 4  # round(3.6)
  assert schedules.Schedule.from_lengths(100, 8, 1, 0.3, rounding='floor').warmup_steps == 3
  assert schedules.Schedule.from_lengths(100, 8, 1.5, 0.3, rounding='ceil').total_steps == 18
  overridden = schedules.Schedule.from_lengths(100, 8, 5, 1, steps_per_epoch=6, total_steps=10)
  assert (overridden.steps_per_epoch, overridden.total_steps, overridden.warmup_steps) == (6, 10, 6)
  assert overridden.total_epochs == 1 and int(overridden.epoch(7)) == 1
  assert tuple(overridden) == (6, 10, 6)  # unpacks like the former lengths tuple
  with pytest.raises(ValueError, match='cannot fill one batch of 8'):
    schedules.Schedule.from_lengths(5, 8, 1)
  assert schedules.Schedule.from_lengths(5, 8, 1, partial_last_batch=True).steps_per_epoch == 1
  with pytest.raises(ValueError, match="unknown rounding 'up'"):
    schedules.Schedule.from_lengths(100, 8, 1, rounding='up')
  with pytest.raises(ValueError, match='warmup_steps must be in'):
    schedules.Schedule(10, 5, 6)
  config = ml_collections.ConfigDict(dict(batch_size=8, num_epochs=2, warmup_epochs=0.5, steps_per_epoch=-1,
                                          total_steps=-1, partial_last_batch=True))
  assert schedules.Schedule.from_config(config, 20210) == kept


def test_polynomial_and_spml_lr_poly():
  poly = schedules.polynomial(1e-3, 100, 0.9, 1e-5)
  assert poly(0) == pytest.approx(1e-3, rel=1e-12) and poly(100) == pytest.approx(1e-5, rel=1e-12)
  assert poly(50) == pytest.approx((1e-3 - 1e-5) * 0.5 ** 0.9 + 1e-5, rel=1e-12)
  jitted = jax.jit(poly)
  np.testing.assert_allclose([float(jitted(jnp.int32(k))) for k in (0, 37, 99)], [poly(k) for k in (0, 37, 99)],
                             rtol=1e-6)
  lr = schedules.spml_lr_poly(0.01, 12, 4)
  expected = [min(0.01 * (0.1 * (1 - it / 4) + it / 4), 0.01 * (1 - it / 12) ** 0.9) if it < 4
              else 0.01 * (1 - it / 12) ** 0.9 for it in range(13)]
  np.testing.assert_allclose([lr(it) for it in range(13)], expected, rtol=1e-12)
  assert lr(0) == pytest.approx(0.001) and lr(12) == 0.0
  # After warm-up the min picks the polynomial when it is the smaller one (a short run).
  short = schedules.spml_lr_poly(0.01, 5, 4)
  assert short(3) == pytest.approx(0.01 * (1 - 3 / 5) ** 0.9)
  np.testing.assert_allclose(schedules.spml_lr_poly(0.01, 12)(6), 0.01 * 0.5 ** 0.9, rtol=1e-12)
  with pytest.raises(ValueError, match='max_iteration must be positive'):
    schedules.spml_lr_poly(0.01, 0)
  assert math.isclose(float(jax.jit(lr)(jnp.int32(2))), lr(2), rel_tol=1e-6)


def test_the_schedule_object_fills_the_recipes_lengths():
  schedule = schedules.Schedule.from_lengths(100, 8, 3, 1)  # 12 steps/epoch, 36 steps, 12 warm-up
  pairs = [(schedule.warmup_cosine(0.1), schedules.warmup_cosine(0.1, 12, 36)),
           (schedule.momentum_cosine(0.99), schedules.momentum_cosine(0.99, 36)),
           (schedule.deit_epoch(0.1, 1), schedules.deit_epoch_lr(0.1, 1, 3, 12)),
           (schedule.deit_epoch(0.1, 1, original_off_by_one=False),
            schedules.deit_epoch_lr(0.1, 1, 3, 12, original_off_by_one=False)),
           (schedule.epoch_cosine(0.1), schedules.epoch_cosine(0.1, 3, 12)),
           (schedule.polynomial(0.1, 0.9, 1e-4), schedules.polynomial(0.1, 36, 0.9, 1e-4)),
           (schedule.spml_poly(0.1), schedules.spml_lr_poly(0.1, 36, 12))]
  for ours, reference in pairs:
    steps = jnp.arange(37)
    np.testing.assert_array_equal(np.asarray(ours(steps)), np.asarray(reference(steps)))
  # The forms differ where they should: per step (warm-up cosine) versus constant within an epoch (DeiT).
  deit = np.asarray(schedule.deit_epoch(0.1, 1)(jnp.arange(36)))
  assert len(set(deit[12:24].tolist())) == 1 and len(set(np.asarray(schedule.warmup_cosine(0.1)(
      jnp.arange(12, 24))).tolist())) == 12
