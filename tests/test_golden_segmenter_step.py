"""Two Segmenter updates (SGD Nesterov, polynomial lr) against the original's train_steps.npz.

The original took both updates on the same batch in train mode with every Dropout at p=0, from the converted
checkpoint (empty optimizer state). train_steps.npz stores, per state-dict key, either the full values (small
tensors) or fingerprints (per-axis sums plus sampled entries) of the gradients and of the change; the golden
README gives the tolerances used here.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax import convert
from cast_jax.models import build_model
from cast_jax.train.segmentation import (SegmentationObjective, masked_cross_entropy, segmenter_optimizer,
                                         segmenter_schedule)
from conftest import fast_compile_options, fast_jit, fingerprint
from test_golden_segmenter import converted_variables, require_folder, segmentation_folders, segmenter_spec

FOLDERS = segmentation_folders('segmenter') or ['<segmenter fixtures missing>']
# Gradients that are exactly zero in exact arithmetic (the graph poolings' centroid attention output biases: the
# original's largest entry there is ~1e-13) or tiny (~1e-6) come out as float32 rounding noise of the whole
# backward pass, up to ~1e-8 here, on both sides. So each gradient tolerance is the README's 1e-4 of the tensor's
# largest gradient plus float32's epsilon times the step's largest gradient over all tensors.
FLOAT32_EPS = 1.2e-7
# The second step's gradients are less well conditioned: two float32 builds of the same program (XLA CPU's
# convolutions from YNNPACK or XLA's own, optimisation level 0 or 3) differ there by up to ~1.1e-4 of a tensor's
# largest gradient, above the README's 1e-4. So each gradient also gets SAFETY times its measured noise: the
# largest change when the same two steps run from images moved by one float32 ulp (random signs). Ours and the
# original's are two float32 computations, each within about that noise of exact arithmetic.
SAFETY = 2.0


def torch_layout(spec):
  """torch key -> (collection, Flax path, function turning our array into the torch layout)."""

  def locate(key: str, shape):
    branch, sub = key.split('.', 1)
    sub = re.sub(r'^blocks[1-9]\.(\d+)\.', r'blocks.\1.', sub) if branch == 'encoder' else sub
    mapped = convert._flax_leaf(convert._split_path(convert._rename(sub, spec, branch)), np.zeros(shape))
    if mapped is None:
      return None
    collection, path, _ = mapped
    if path[-1] == 'kernel' and len(shape) == 4:
      to_torch = lambda a: np.transpose(a, (3, 2, 0, 1))  # noqa: E731
    elif path[-1] == 'kernel':
      to_torch = lambda a: np.transpose(a)  # noqa: E731
    else:
      to_torch = lambda a: a  # noqa: E731
    return collection, path, to_torch

  return locate


def lookup(tree, path):
  for name in path:
    tree = tree[name]
  return np.asarray(tree)


@pytest.mark.parametrize('folder', FOLDERS)
def test_segmenter_two_sgd_steps_match_original(folder, tmp_path):
  path = require_folder(folder)
  meta = json.loads((path / 'meta.json').read_text())
  train = meta['train']
  inputs = np.load(path / 'inputs.npz')
  golden = np.load(path / 'train_steps.npz')
  layout = json.loads(str(golden['layout']))

  spec = segmenter_spec(meta, int(inputs['superpixels'].max()) + 1)
  variables = converted_variables(path, meta, spec, tmp_path)
  # The original's steps ran with every Dropout at p=0 (its drop paths are 0 too).
  model = build_model(spec.replace(pool_dropout=0.0, fusion_dropout=0.0, decoder_dropout=0.0))
  lr_fn = segmenter_schedule(train['lr0'], train['iter_max'], train['min_lr'], train['power'])
  np.testing.assert_allclose([lr_fn(k) for k in range(train['steps'])], golden['lr'], rtol=1e-12)

  objective = SegmentationObjective(model=model, optimizer=segmenter_optimizer(lr_fn, variables['params']),
                                    num_classes=meta['n_cls'], learning_rate_fn=lr_fn)
  state = objective.init_state(variables, jax.random.PRNGKey(0))
  batch = {'image': jnp.asarray(inputs['image'].transpose(0, 2, 3, 1)),
           'superpixels': jnp.asarray(inputs['superpixels']), 'label': jnp.asarray(inputs['labels'])}
  # The step a loop runs (jitted, state donated); the gradients it applies are read from the jitted
  # ``gradients`` at the same state (the same computation: train_step is gradients then apply_gradients).
  options = fast_compile_options()
  gradients = fast_jit(objective.gradients)
  step = objective.jit_step(**({'compiler_options': options} if options else {}))

  def two_steps(state, batch):
    grads, losses, lrs = [], [], []
    for _ in range(train['steps']):
      g, aux = gradients(state, batch)
      grads.append(jax.tree_util.tree_map(np.asarray, g))
      state, metrics = step(state, batch)
      np.testing.assert_allclose(float(metrics['loss']), float(aux['loss']), rtol=1e-6)
      losses.append(float(metrics['loss']))
      lrs.append(float(metrics['lr']))
    return state, grads, losses, lrs

  # The noise sample first: ``step`` donates the state it is given.
  signs = np.random.default_rng(0).choice([-1.0, 1.0], size=batch['image'].shape)
  nudged_batch = {**batch, 'image': batch['image'] * jnp.asarray(1.0 + signs * np.finfo(np.float32).eps, jnp.float32)}
  _, nudged_grads, _, _ = two_steps(objective.init_state(variables, jax.random.PRNGKey(0)), nudged_batch)
  state, grads, losses, lrs = two_steps(state, batch)
  np.testing.assert_allclose(losses, golden['loss'], rtol=1e-5)
  np.testing.assert_allclose(lrs, golden['lr'], rtol=1e-6)  # the jitted schedule runs in float32

  locate = torch_layout(spec)
  start = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  after = {'params': state.params, 'batch_stats': state.batch_stats}
  checked = {'full': 0, 'fp': 0}
  failures = []
  noise = [FLOAT32_EPS * float(np.nanmax(np.abs(golden[f'grad{n}']))) for n in (1, 2)]

  def compare(what, ours, want, atol, rtol=0.0):
    err = np.abs(np.asarray(ours, np.float64).reshape(-1) - want)
    excess = float(np.max(err - atol - rtol * np.abs(want)))
    if excess > 0:
      failures.append(f'{what}: max |diff| {err.max():.3g} over tolerance {atol:.3g} (+{rtol} rel) by {excess:.3g}')

  for key, entry in layout.items():
    mode, shape = entry['mode'], tuple(entry['shape'])
    where = locate(key, shape)
    if mode == 'unchanged':
      # The encoder's final norm and head: unused by cast_seg_deit, so not in the port at all.
      assert key.startswith(('encoder.norm.', 'encoder.head.')), f'{key}: the original left it unchanged'
      continue
    if mode == 'int':
      assert where is None and key.endswith('num_batches_tracked'), key  # a counter the port does not need
      continue
    collection, flax_path, to_torch = where
    ours_after = to_torch(lookup(after[collection], flax_path))
    ours_start = to_torch(lookup(start[collection], flax_path))
    ours_grads = [to_torch(lookup(g, flax_path)) if collection == 'params' else None for g in grads]
    nudged_key_grads = [to_torch(lookup(g, flax_path)) if collection == 'params' else None for g in nudged_grads]
    sl = slice(entry['offset'], entry['offset'] + entry['size'])
    if mode == 'full':
      compare(f'{key} after', ours_after, golden['after'][sl], 1e-5)
      for n, ours in enumerate(ours_grads, start=1):
        want = golden[f'grad{n}'][sl]
        if np.isnan(want).all():
          assert ours is None, f'{key}: the original computes no gradient for it'
          continue
        measured = SAFETY * float(np.abs(ours - nudged_key_grads[n - 1]).max())
        compare(f'{key} grad{n}', ours, want, 1e-4 * float(np.abs(want).max()) + noise[n - 1] + measured)
    elif mode == 'fp':
      pos = golden['fp_index'][entry['index_offset']:entry['index_offset'] + entry['index_size']]
      want = golden['delta_fp'][sl]
      compare(f'{key} delta', fingerprint(ours_after.astype(np.float64) - ours_start, pos), want, 1e-5, 1e-4)
      for n, ours in enumerate(ours_grads, start=1):
        want = golden[f'grad{n}_fp'][sl]
        if np.isnan(want).all():
          assert ours is None, f'{key}: the original computes no gradient for it'
          continue
        measured = SAFETY * float(np.abs(fingerprint(ours, pos) - fingerprint(nudged_key_grads[n - 1], pos)).max())
        compare(f'{key} grad{n}', fingerprint(ours, pos), want, 1e-4 * float(np.abs(want).max()) + measured)
    else:
      raise AssertionError(f'{key}: unknown layout mode {mode!r}')
    checked[mode] += 1
  print('\n'.join(failures))
  assert not failures, f'{len(failures)} comparisons fail'
  # Every parameter and statistic of the port was compared (none is left out by a naming slip).
  ours_count = sum(len(convert.flatten(t)) for t in after.values())
  assert checked['full'] + checked['fp'] == ours_count, (checked, ours_count)


def test_cross_entropy_ignores_255_and_rejects_other_ids():
  logits = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2, 2, 3)), jnp.float32)
  labels = jnp.asarray([[[0, 255], [2, 1]]])
  expected = -np.mean([jax.nn.log_softmax(logits[0, 0, 0])[0], jax.nn.log_softmax(logits[0, 1, 0])[2],
                       jax.nn.log_softmax(logits[0, 1, 1])[1]])
  np.testing.assert_allclose(masked_cross_entropy(logits, labels), expected, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(masked_cross_entropy)(logits, labels), expected, rtol=1e-6)
  bad = jnp.asarray([[[0, 255], [3, 1]]])
  with pytest.raises(ValueError, match=r'\[3\] outside \[0, 3\)'):
    masked_cross_entropy(logits, bad)
  assert np.isnan(jax.jit(masked_cross_entropy)(logits, bad))  # under jit: NaN, never silently dropped
