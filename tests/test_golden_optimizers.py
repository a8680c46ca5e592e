"""The segmentation optimizers against the original's two recorded updates (train_steps.npz of the golden
folders of kind 'segmenter' and 'spml').

The Segmenter (``kind == 'segmenter'``): torch SGD, momentum 0.9, Nesterov, no decay, on the polynomial schedule.
SPML (``kind == 'spml'``):

The original's gradients (``grad1``/``grad2``, read before its step) are fed to ``optim.spml_sgd_groups`` with the
``lr_poly`` warm-up schedule; every parameter stored in full must come out as the original's ``after`` (1e-5
absolute). The group of every parameter (x1 / x2 / x10 / x20, decay or not) and the leaves in no group come
from ``spml_group_rule`` and the trainable mask, checked against meta.json's lists. The classifier, not part of
cast_jax's models, is named ``classifier/...`` here with the converter's leaf naming.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from cast_jax import convert
from cast_jax.models import ModelSpec
from cast_jax.models.variants import is_frozen
from cast_jax.torch_pickle import load_torch_checkpoint
from cast_jax.train import optim, schedules
from conftest import checkpoint_path, fast_jit, golden_paths_or_skip, require_golden

BACKBONE, CLASSIFIER = 'embedding_model.vit_backbone.', 'prediction_model.'


def _flax_name(key: str, value, spec: ModelSpec):
  """A parameter's state-dict key -> its '/'-joined Flax path (None for buffers)."""
  if key.startswith(BACKBONE):
    mapped = convert._flax_leaf(convert._split_path(convert._rename(key[len(BACKBONE):], spec, 'encoder')), value)
    prefix = ()
  else:
    mapped = convert._flax_leaf(convert._split_path(key[len(CLASSIFIER):]), value)
    prefix = ('classifier',)
  if mapped is None or mapped[0] != 'params':
    return None
  return '/'.join(prefix + mapped[1])


def _folders_or_skip(kind: str = 'spml'):
  """Absolute paths of the golden folders of ``kind`` with a train_steps.npz (none: skip, or fail in CI)."""
  require_golden()
  return golden_paths_or_skip(kind, needs=('train_steps.npz',))


def _full(steps, layout, key, array: str):
  entry = layout[key]
  return steps[array][entry['offset']:entry['offset'] + entry['size']].reshape(entry['shape'])


def test_segmenter_nesterov_sgd_on_the_polynomial_reproduces_the_originals_two_updates():
  for folder in _folders_or_skip('segmenter'):
    train = json.loads((folder / 'meta.json').read_text())['train']
    steps = np.load(folder / 'train_steps.npz')
    layout = json.loads(str(steps['layout']))
    lr_fn = schedules.polynomial(train['lr0'], train['iter_max'], train['power'], train['min_lr'])
    assert train['iter_warmup'] == 0 and train['steps'] == 2  # the fixture's protocol: two updates from the start
    np.testing.assert_allclose([lr_fn(0), lr_fn(1)], steps['lr'], rtol=1e-12)  # host: float64, as the original
    np.testing.assert_allclose(float(jax.jit(lr_fn)(jnp.int32(1))), steps['lr'][1], rtol=1e-6)

    model = load_torch_checkpoint(checkpoint_path(folder))['model']  # meta.json's 'checkpoint'
    full = [k for k, e in layout.items() if e['mode'] == 'full' and not k.endswith(('running_mean', 'running_var'))]
    params = {k: np.asarray(model[k], np.float32) for k in full}
    grads = [{k: _full(steps, layout, k, g) for k in full} for g in ('grad1', 'grad2')]
    # Parameters without a gradient (the encoder's unused norm/head) are recorded as unchanged, not in full.
    assert {k.split('.')[0] for k in full} == {'encoder', 'decoder'}
    assert not set(full) & set(train['params_without_grad'])
    assert not any(np.isnan(g[k]).any() for g in grads for k in full)
    trainable = {k: True for k in full}
    labels = {k: 'all' for k in full}
    optimizer = optim.sgd_groups(lr_fn, {'all': optim.Group(1.0, 0.0)}, labels, trainable, momentum=0.9,
                                 nesterov=True)
    after = jax.device_get(_two_updates(optimizer, params, *grads))
    for key in full:
      want = _full(steps, layout, key, 'after')
      err = float(np.abs(after[key] - want).max())
      assert err <= 1e-5, f'{folder.name} {key}: {err:.3g}'
    # Without Nesterov the same gradients give visibly different weights: the test can tell them apart.
    plain = optim.sgd_groups(lr_fn, {'all': optim.Group(1.0, 0.0)}, labels, trainable, momentum=0.9)
    other = jax.device_get(_two_updates(plain, params, *grads))
    assert max(float(np.abs(other[k] - _full(steps, layout, k, 'after')).max()) for k in full) > 1e-4


def _two_updates(optimizer, params, g1, g2):
  @fast_jit
  def run(params, g1, g2):
    state = optimizer.init(params)
    for g in (g1, g2):
      updates, state = optimizer.update(g, state, params)
      params = jax.tree_util.tree_map(jnp.add, params, updates)
    return params

  return run(params, g1, g2)


def test_spml_lr_poly_with_warmup_matches_the_recorded_rates():
  for folder in _folders_or_skip():
    meta = json.loads((folder / 'meta.json').read_text())['train']
    steps = np.load(folder / 'train_steps.npz')
    lr_fn = schedules.spml_lr_poly(meta['base_lr'], meta['max_iteration'], meta['warmup_iteration'])
    mults = [g['lr_mult'] for g in meta['param_groups']]
    for i, it in enumerate(meta['iterations']):
      lr = lr_fn(it)  # on the host: float64, as the original's Python
      np.testing.assert_allclose(lr, steps['lr'][i], rtol=1e-12)  # the README's tolerance for lr
      np.testing.assert_allclose([m * lr for m in mults], steps['group_lr'][i], rtol=1e-12)
      # Under jit (float32) the same value to float32 precision.
      np.testing.assert_allclose(float(jax.jit(lr_fn)(jnp.int32(it))), lr, rtol=1e-6)


def test_spml_sgd_groups_reproduce_the_originals_two_updates():
  for folder in _folders_or_skip():
    meta = json.loads((folder / 'meta.json').read_text())
    train, backbone = meta['train'], meta['backbone']
    spec = ModelSpec(kind='cast_seg', embed_dim=backbone['embed_dim'], depth=tuple(backbone['depth']),
                     num_clusters=tuple(backbone['num_clusters']), image_size=backbone['img_size'],
                     max_segments=meta['num_superpixels'])
    snapshot = load_torch_checkpoint(checkpoint_path(folder))  # meta.json's 'checkpoint': the initial snapshot
    initial = {BACKBONE[:-len('vit_backbone.')] + k: v for k, v in snapshot['embedding_model'].items()}
    initial.update({CLASSIFIER + k: v for k, v in snapshot['prediction_model'].items()})
    steps = np.load(folder / 'train_steps.npz')
    layout = json.loads(str(steps['layout']))

    names = {k: _flax_name(k, v, spec) for k, v in initial.items()}
    params = {names[k]: np.asarray(v, np.float32) for k, v in initial.items() if names[k]}
    labels = optim.group_labels(params, lambda path, _: optim.spml_group_rule()(tuple(path[0].split('/')), _))
    # Trainable: what requires grad and is in a group. cls_token requires grad but SPML puts it in no group.
    trainable = {n: not (is_frozen(spec, tuple(n.split('/'))) or n == 'cls_token') for n in params}

    # Groups and the leaves in no group, as meta.json lists them.
    by_group = {(g['lr_mult'], g['weight_decay']): sorted(names[k] for k in g['keys'])
                for g in train['param_groups']}
    groups = optim.spml_groups(train['weight_decay'])
    for name, group in groups.items():
      ours = sorted(n for n, l in labels.items() if l == name and trainable[n])
      assert ours == by_group[(group.lr_mult, group.weight_decay)], name
    assert sorted(n for n, t in trainable.items() if not t) == sorted(names[k] for k in train['not_in_any_group'])

    lr_fn = schedules.spml_lr_poly(train['base_lr'], train['max_iteration'], train['warmup_iteration'])
    assert train['iterations'] == list(range(train['steps']))  # from the snapshot: the optimizer's counts 0, 1, ...
    optimizer = optim.spml_sgd_groups(lr_fn, groups, labels, trainable, momentum=train['momentum'])

    def grads(which):
      out = {}
      for key, name in names.items():
        entry = layout.get(key)
        if name is None:
          continue
        if entry is not None and entry['mode'] == 'full':
          g = steps[which][entry['offset']:entry['offset'] + entry['size']].reshape(entry['shape'])
          assert not np.isnan(g).any(), key
          out[name] = g.astype(np.float32)
        else:  # only fingerprints recorded: any value, this leaf is not compared
          out[name] = np.zeros_like(params[name])
      return out

    after = jax.device_get(_two_updates(optimizer, params, grads('grad1'), grads('grad2')))
    compared, moved = 0, set()
    for key, name in names.items():
      entry = layout.get(key)
      if name is None or entry is None or entry['mode'] != 'full':
        continue
      want = steps['after'][entry['offset']:entry['offset'] + entry['size']].reshape(entry['shape'])
      err = float(np.abs(after[name] - want).max())
      assert err <= 1e-5, f'{folder.name} {key} ({name}): {err:.3g}'
      if not trainable[name]:
        np.testing.assert_array_equal(after[name], params[name])  # cls_token: a gradient, never an update
      elif float(np.abs(want - params[name]).max()) > 1e-4:  # far above the tolerance: a wrong group shows
        moved.add(labels[name])
      compared += 1
    # Every parameter stored in full was compared (none dropped by a naming slip); buffers are not parameters.
    stored = [k for k, e in layout.items() if e['mode'] == 'full' and not k.endswith(('running_mean', 'running_var'))]
    assert compared == len(stored) > 0, (compared, len(stored))
    assert moved == set(groups), moved  # every group has leaves whose update the comparison can see
    for key, entry in layout.items():  # what the original never changed stays put here too
      if entry['mode'] == 'unchanged':
        np.testing.assert_array_equal(after[names[key]], params[names[key]])
