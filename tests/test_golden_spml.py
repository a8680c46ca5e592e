"""SPML's CAST embedding model and SoftmaxClassifier against the original (segmentation/<kind 'spml'>).

Forward (eval mode): the fused tokens (``spix_embedding``), the classifier's logits at the superpixel map's
resolution, the level-4 cluster of every pixel (argmax chain; the original offsets ids by batch and makes them
contiguous with ``torch.unique``). Training: two updates of SPML's SGD on ``lr_poly`` from ``snapshot_init.pth``,
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
from cast_jax.models.spml import SPMLEmbedding, classifier_from_torch, spml_loss
from cast_jax.models.variants import is_frozen
from cast_jax.torch_pickle import load_torch_checkpoint
from cast_jax.train import optim, schedules
from conftest import fast_jit, golden_dir, require_golden

BACKBONE, CLASSIFIER = 'embedding_model.vit_backbone.', 'prediction_model.'


def spml_folders(kind: str):
  root = golden_dir() / 'segmentation'
  if not root.is_dir():
    return []
  return sorted(p for p in root.iterdir()
                if (p / 'meta.json').is_file() and json.loads((p / 'meta.json').read_text())['kind'] == kind)


def folders_or_skip(kind: str = 'spml'):
  require_golden()
  folders = spml_folders(kind)
  if not folders:
    pytest.skip(f'no segmentation/ folder with kind "{kind}" under {golden_dir()}')
  return folders


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
  spec = backbone_spec(meta, pool_dropout=0.0, fusion_dropout=0.0)
  model = SPMLEmbedding(build_encoder(spec), num_classes=meta['classifier']['num_classes'])
  snapshot = load_torch_checkpoint(folder / 'snapshot_init.pth')
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
  assert all(float(want[f'assign_margin{l}'].min()) > 1e-5 for l in range(1, 5))
  for level in range(1, 5):
    np.testing.assert_array_equal(out['intermediates'][f'logit{level}'].argmax(-1), want[f'assign{level}'])
  np.testing.assert_array_equal(contiguous_clusters(out['level4']), want['cluster_index'])
  batch = superpixels.shape[0]
  np.testing.assert_array_equal(np.repeat(np.arange(batch), superpixels[0].size), want['cluster_batch_index'])
