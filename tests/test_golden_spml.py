"""SPML's CAST embedding model and SoftmaxClassifier against the original (golden folders of kind 'spml').

Forward (eval mode): the fused tokens (``spix_embedding``), the classifier's logits at the superpixel map's
resolution, the level-4 cluster of every pixel (argmax chain; the original offsets ids by batch and makes them
contiguous with ``torch.unique``). Training: two updates of SPML's SGD on ``lr_poly`` from the snapshot meta.json names,
in train mode with every dropout at 0: the losses, the gradients of both updates and every parameter and
BatchNorm statistic after them (train_steps.npz, full values or fingerprints; tolerances from the README).
Everything is built from meta.json, so other fixture sets (class counts, batch, clusters) run the same checks.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax import convert
from cast_jax.models import ModelSpec, build_encoder
from cast_jax.models.spml import SPMLEmbedding, classifier_from_torch
from cast_jax.torch_pickle import load_torch_checkpoint
from conftest import (checkpoint_path, fast_jit, fingerprint, golden_paths, golden_paths_or_skip, missing_fixture,
                      require_golden)

BACKBONE, CLASSIFIER = 'embedding_model.vit_backbone.', 'prediction_model.'


def spml_folders(kind: str):
  """Absolute paths of the golden folders of meta.json ``kind`` ('spml', 'spml_retrieval'), wherever they sit."""
  return golden_paths(kind)


def folders_or_skip(kind: str = 'spml'):
  require_golden()
  return golden_paths_or_skip(kind)


def backbone_spec(meta: dict, **dropouts) -> ModelSpec:
  backbone = meta['backbone']
  assert backbone['model_stage'] == 'segmentation' and backbone['patch_size'] == 8, backbone
  return ModelSpec(kind='cast_seg', embed_dim=backbone['embed_dim'], depth=tuple(backbone['depth']),
                   num_heads=backbone['num_heads'], num_clusters=tuple(backbone['num_clusters']),
                   image_size=backbone['img_size'], max_segments=meta['num_superpixels'], **dropouts)


def encoder_variables(state: dict, spec: ModelSpec) -> dict:
  """``vit_backbone.*`` keys of a SPML state dict -> the encoder's Flax variables (the converter's renaming)."""
  stripped = {k[len('vit_backbone.'):]: v for k, v in state.items() if k.startswith('vit_backbone.')}
  branches, info = convert.split_branches({'model': stripped})
  return convert.convert_state(branches, info, spec).variables


def contiguous_clusters(level4: np.ndarray) -> np.ndarray:
  """Ours (B, h, w) -> the original's flat ``cluster_index``: batch offset by max + 1, then torch.unique inverse."""
  batch = level4.shape[0]
  offset = np.arange(batch).reshape(batch, 1, 1) * (level4.max() + 1) + level4
  return np.unique(offset.reshape(-1), return_inverse=True)[1].astype(np.int32)


def scaled_error(got, want) -> float:
  """The README's float tolerance: absolute, after scaling by the largest magnitude where it exceeds 1."""
  want = np.asarray(want, np.float64)
  return float(np.abs(np.asarray(got, np.float64) - want).max()) / max(1.0, float(np.abs(want).max()))


@functools.lru_cache(maxsize=None)
def finetune_setup(folder):
  meta = json.loads((folder / 'meta.json').read_text())
  # Token slots: the requested count, or more where SEEDS made more (the original's S is max id + 1).
  slots = max(meta['num_superpixels'], int(np.load(folder / 'inputs.npz')['superpixels'].max()) + 1)
  spec = backbone_spec({**meta, 'num_superpixels': slots}, pool_dropout=0.0, fusion_dropout=0.0)
  model = SPMLEmbedding(build_encoder(spec), num_classes=meta['classifier']['num_classes'])
  snapshot = load_torch_checkpoint(checkpoint_path(folder))  # meta.json's 'checkpoint': the initial snapshot
  enc = encoder_variables(snapshot['embedding_model'], spec)
  cls = classifier_from_torch(snapshot['prediction_model'])
  variables = {col: {'encoder': enc[col], 'classifier': cls[col]} for col in ('params', 'batch_stats')}
  return meta, spec, model, jax.tree_util.tree_map(jnp.asarray, variables)


def _inputs(folder):
  inputs = np.load(folder / 'inputs.npz')
  images = jnp.asarray(inputs['image'].transpose(0, 2, 3, 1))
  return images, jnp.asarray(inputs['superpixels']), jnp.asarray(inputs['labels'].astype(np.int32))


@pytest.mark.parametrize('index', range(max(1, len(spml_folders('spml')))))
def test_forward_tokens_logits_and_level4_clusters(index):
  folder = folders_or_skip()[index]
  meta, spec, model, variables = finetune_setup(folder)
  images, superpixels, _ = _inputs(folder)
  want = np.load(folder / 'outputs.npz')
  out = jax.device_get(fast_jit(functools.partial(model.apply, train=False))(variables, images, superpixels))

  slots = want['spix_embedding'].shape[1]  # the original's S = max id + 1 over the batch
  assert slots <= spec.max_segments
  err = scaled_error(out['tokens'][:, :slots], want['spix_embedding'])
  assert err <= 1e-4, f'{folder.name} spix_embedding: {err:.3g}'
  # The classifier reads the raw gathered embedding (not normalised), at the superpixel map's resolution.
  np.testing.assert_array_equal(out['embedding'][0, 3, 5], out['tokens'][0, superpixels[0, 3, 5]])
  norms = np.linalg.norm(out['normalized_embedding'], axis=-1)
  np.testing.assert_allclose(norms, 1.0, atol=1e-5)
  logits = want['logits'].transpose(0, 2, 3, 1)
  assert out['logits'].shape == logits.shape == (*superpixels.shape, meta['n_cls'])
  err = scaled_error(out['logits'], logits)
  assert err <= 1e-4, f'{folder.name} logits: {err:.3g}'
  sure = want['prediction_margin'] > 1e-5
  np.testing.assert_array_equal(out['logits'].argmax(-1)[sure], want['prediction'][sure])

  # Level-4 clusters: the argmax chain per pixel, identical where every level's margin is above noise.
  levels = range(1, len(spec.num_clusters) + 1)
  assert all(float(want[f'assign_margin{l}'].min()) > 1e-5 for l in levels)
  for level in levels:
    np.testing.assert_array_equal(out['intermediates'][f'logit{level}'].argmax(-1), want[f'assign{level}'])
  np.testing.assert_array_equal(contiguous_clusters(out['level4']), want['cluster_index'])
  batch = superpixels.shape[0]
  np.testing.assert_array_equal(np.repeat(np.arange(batch), superpixels[0].size), want['cluster_batch_index'])


def torch_locator(spec: ModelSpec):
  """state-dict key -> (collection, Flax path, our array -> torch layout), None for num_batches_tracked."""

  def locate(key: str, shape):
    if key.startswith(BACKBONE):
      sub, prefix = convert._rename(key[len(BACKBONE):], spec, 'encoder'), ('encoder',)
    elif key.startswith(CLASSIFIER):
      sub, prefix = key[len(CLASSIFIER):], ('classifier',)
    else:
      raise AssertionError(f'unexpected key {key}')
    mapped = convert._flax_leaf(convert._split_path(sub), np.zeros(shape))
    if mapped is None:
      return None
    collection, path, _ = mapped
    if path[-1] == 'kernel' and len(shape) == 4:
      to_torch = lambda a: np.transpose(a, (3, 2, 0, 1))  # noqa: E731
    elif path[-1] == 'kernel':
      to_torch = np.transpose
    else:
      to_torch = lambda a: a  # noqa: E731
    return collection, prefix + tuple(path), to_torch

  return locate


def _lookup(tree, path):
  for name in path:
    tree = tree[name]
  return np.asarray(tree, np.float64)


# Gradients exactly zero in exact arithmetic come out as float32 rounding noise of the whole backward pass on both
# sides; each gradient tolerance is the README's 1e-4 of the tensor's largest gradient plus float32's epsilon
# times the step's largest gradient (as the Segmenter step test).
FLOAT32_EPS = 1.2e-7


@pytest.mark.parametrize('index', range(max(1, len(spml_folders('spml')))))
def test_two_spml_sgd_updates_on_lr_poly_match_the_original(index):
  folder = folders_or_skip()[index]
  if not (folder / 'train_steps.npz').is_file():
    missing_fixture(f'{folder}/train_steps.npz not found')
  from cast_jax.train.spml_step import spml_gradients, spml_optimizer, spml_train_step

  meta, spec, model, variables = finetune_setup(folder)
  train = meta['train']
  golden = np.load(folder / 'train_steps.npz')
  layout = json.loads(str(golden['layout']))
  images, superpixels, labels = _inputs(folder)
  assert train['iterations'] == list(range(train['steps']))
  optimizer, lr_fn = spml_optimizer(variables['params'], spec, train['base_lr'], train['max_iteration'],
                                    train['warmup_iteration'], train['weight_decay'], train['momentum'])
  np.testing.assert_allclose([lr_fn(i) for i in train['iterations']], golden['lr'], rtol=1e-12)
  gradients = spml_gradients(model, meta['n_cls'])
  step = fast_jit(spml_train_step(model, optimizer, meta['n_cls'], gradients=gradients))

  params, stats = variables['params'], variables['batch_stats']
  opt_state = optimizer.init(params)
  losses, grads = [], []
  rng = jax.random.PRNGKey(0)
  for _ in range(train['steps']):
    params, stats, opt_state, loss, g = step(params, stats, opt_state, images, superpixels, labels, rng)
    losses.append(float(loss))
    grads.append(jax.device_get(g))
  np.testing.assert_allclose(losses, golden['loss'], rtol=1e-5)

  locate = torch_locator(spec)
  start = jax.device_get(variables)
  after = jax.device_get({'params': params, 'batch_stats': stats})
  noise = [FLOAT32_EPS * float(np.nanmax(np.abs(golden[f'grad{n}']))) for n in (1, 2)]
  failures, checked = [], {'full': 0, 'fp': 0}

  def compare(what, ours, want, atol, rtol=0.0):
    err = np.abs(np.asarray(ours, np.float64).reshape(-1) - want)
    excess = float(np.max(err - atol - rtol * np.abs(want)))
    if excess > 0:
      failures.append(f'{what}: max |diff| {err.max():.3g} over tolerance {atol:.3g} (+{rtol} rel) by {excess:.3g}')

  for key, entry in layout.items():
    mode, shape = entry['mode'], tuple(entry['shape'])
    where = locate(key, shape)
    if mode == 'int':
      assert where is None and key.endswith('num_batches_tracked'), key  # a counter the port does not keep
      continue
    collection, path, to_torch = where
    ours_after, ours_start = to_torch(_lookup(after[collection], path)), to_torch(_lookup(start[collection], path))
    if mode == 'unchanged':  # the sin-cos tables: frozen
      np.testing.assert_array_equal(ours_after, ours_start, err_msg=key)
      continue
    ours_grads = [to_torch(_lookup(g, path)) if collection == 'params' else None for g in grads]
    if path[-1] == 'cls_token':
      # In no group, so the original's zero_grad never clears it: its recorded grad2 is grad1 + grad2.
      ours_grads[1] = ours_grads[0] + ours_grads[1]
    sl = slice(entry['offset'], entry['offset'] + entry['size'])
    if mode == 'full':
      compare(f'{key} after', ours_after, golden['after'][sl], 1e-5)
      for n, ours in enumerate(ours_grads, start=1):
        want = golden[f'grad{n}'][sl]
        if np.isnan(want).all():
          assert ours is None, f'{key}: the original computes no gradient for it'
          continue
        compare(f'{key} grad{n}', ours, want, 1e-4 * float(np.abs(want).max()) + noise[n - 1])
    elif mode == 'fp':
      pos = golden['fp_index'][entry['index_offset']:entry['index_offset'] + entry['index_size']]
      compare(f'{key} delta', fingerprint(ours_after - ours_start, pos), golden['delta_fp'][sl], 1e-5, 1e-4)
      for n, ours in enumerate(ours_grads, start=1):
        want = golden[f'grad{n}_fp'][sl]
        if np.isnan(want).all():
          assert ours is None, f'{key}: the original computes no gradient for it'
          continue
        # Noise of a sum of numel/shape[d] entries grows like its square root.
        compare(f'{key} grad{n}', fingerprint(ours, pos), want,
                1e-4 * float(np.abs(want).max()) + noise[n - 1] * float(np.sqrt(np.prod(shape))))
    else:
      raise AssertionError(f'{key}: unknown layout mode {mode!r}')
    checked[mode] += 1
  assert not failures, f'{folder.name}: {len(failures)} comparisons fail:\n' + '\n'.join(failures)
  # Every parameter and statistic of the port was compared (none left out by a naming slip).
  ours_count = sum(len(convert.flatten(t)) for t in after.values())
  assert checked['full'] + checked['fp'] + 2 == ours_count, (checked, ours_count)  # + the 2 frozen tables
  # cls_token gets a gradient but is in no group: it never moves.
  assert np.abs(grads[0]['encoder']['cls_token']).max() > 0
  np.testing.assert_array_equal(after['params']['encoder']['cls_token'], start['params']['encoder']['cls_token'])


@pytest.mark.parametrize('index', range(max(1, len(spml_folders('spml')))))
def test_training_superpixels_on_the_half_size_crop(index):
  """SEEDS on the crop scaled by 0.5 with OpenCV's (width, height) dsize: the fixture's maps exactly."""
  from cast_jax.evaluate.spml_inputs import train_crop_superpixels

  folder = folders_or_skip()[index]
  meta = json.loads((folder / 'meta.json').read_text())
  inputs = np.load(folder / 'inputs.npz')
  for crop, want in zip(inputs['image_uint8'], inputs['superpixels']):
    got = train_crop_superpixels(crop, meta['num_superpixels'], meta['slic_scale_factor'],
                                 max_segments=4 * meta['num_superpixels'])
    np.testing.assert_array_equal(got, want)
  # A non-square crop gives the transposed map, as the original.
  tall = np.ascontiguousarray(inputs['image_uint8'][0][:, : inputs['image_uint8'].shape[2] // 2])
  got = train_crop_superpixels(tall, meta['num_superpixels'], 0.5, max_segments=4 * meta['num_superpixels'])
  assert got.shape == (tall.shape[1] // 2, tall.shape[0] // 2)


@pytest.mark.slow  # ~17 s: two more compilations at the crops' full resolution
@pytest.mark.parametrize('index', range(max(1, len(spml_folders('spml')))))
def test_scoring_the_fine_tuned_model_at_test_resolution(index):
  """The fixture's model on its own crops through the test-time path (SEEDS at full size, no resize since the
  max side is kept): predictions equal the forward's argmax at that resolution, and the counts follow from
  them and the labels."""
  from cast_jax.evaluate import spml_finetune
  from cast_jax.evaluate.spml_inputs import prepare_test_image

  folder = folders_or_skip()[index]
  meta, spec, model, variables = finetune_setup(folder)
  inputs = np.load(folder / 'inputs.npz')
  n_cls = meta['n_cls']
  predict = spml_finetune.make_predict(model, variables, jit=fast_jit)
  items = [(f'crop{i}', inputs['image_uint8'][i], inputs['labels'][i]) for i in range(len(inputs['image_uint8']))]
  size = max(inputs['image_uint8'].shape[1:3])
  labels = [np.where(lab < n_cls, lab, 255).astype(np.uint8) for _, _, lab in items]
  items = [(name, image, lab) for (name, image, _), lab in zip(items, labels)]
  scores = spml_finetune.score_finetuned(predict, items, n_cls, size, spec.max_segments, spec.max_segments)
  total = np.zeros((3, n_cls))
  prepared = [prepare_test_image(image, label, size, spec.max_segments, spec.max_segments) for _, image, label in items]
  forward = fast_jit(functools.partial(model.apply, train=False))
  logits = forward(variables, jnp.asarray(np.stack([p['image'] for p in prepared])),
                   jnp.asarray(np.stack([p['superpixels'] for p in prepared])))['logits']
  for (name, image, label), want in zip(items, np.asarray(logits).argmax(-1)):
    np.testing.assert_array_equal(scores['predictions'][name], want)
    valid = label < n_cls
    for c in range(n_cls):
      total[:, c] += [(label[valid] == c).sum(), (want[valid] == c).sum(), ((want == c) & (label == c)).sum()]
  np.testing.assert_array_equal(np.stack([scores['tp_fn'], scores['tp_fp'], scores['tp']]), total)
  assert total[0].sum() > 0 and 0.0 <= scores['miou'] <= 100.0
