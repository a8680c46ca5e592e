"""The original's cross-kind starts through ``cast_jax.loading``, against the original's own conversions.

SPML: the COCO MoCo ``cast_seg_pretrain`` checkpoint into the ``cast_seg`` segmentation stage (query encoder only,
28x28 sin-cos table bicubically resampled to the model's grid). The snapshot's ``embedding_model`` in every
``kind == 'spml'`` folder is the original's result; ours must equal it leaf by leaf. The Segmenter: the DeiT
``cast_deit`` checkpoint into ``cast_seg_deit`` (clusters 320/160/80/40, new ``block_fusion``, the checkpoint's
unused ``norm``/``head`` dropped).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax import convert, loading
from cast_jax.models import ModelSpec, build_model
from cast_jax.torch_pickle import load_torch_checkpoint
from conftest import (checkpoint_path, golden_deit_checkpoint, golden_folder, golden_paths_or_skip, load_meta,
                      meta_file, quick_variables, require_golden)


def _fresh(spec: ModelSpec):
  """Zeros with the model's shapes (every leaf is overwritten by the load, so values do not matter)."""
  return {c: convert.unflatten({p: np.zeros(s, np.float32) for p, s in shapes.items()})
          for c, shapes in convert.expected_shapes(spec).items()}


def test_moco_seg_checkpoint_into_the_segmentation_stage_equals_the_original_conversion():
  require_golden()
  for folder in golden_paths_or_skip('spml'):
    meta = load_meta(folder)
    backbone = meta['backbone']
    assert backbone['model_stage'] == 'segmentation', backbone
    target = ModelSpec(kind='cast_seg', embed_dim=backbone['embed_dim'], depth=tuple(backbone['depth']),
                       num_heads=backbone['num_heads'], num_clusters=tuple(backbone['num_clusters']),
                       image_size=backbone['img_size'], max_segments=meta['num_superpixels'])

    # The original's result, renamed into Flax paths by the converter (it checks every key against `target`).
    snapshot = load_torch_checkpoint(checkpoint_path(folder))['embedding_model']  # meta.json's 'checkpoint'
    assert all(k.startswith('vit_backbone.') for k in snapshot), sorted(snapshot)[:5]
    state = {k[len('vit_backbone.'):]: v for k, v in snapshot.items()}
    branches, info = convert.split_branches({'model': state})
    expected = loading.flat_names(convert.convert_state(branches, info, target).variables)

    # Ours: the MoCo checkpoint as converted (all branches), then the task-level rules.
    moco = convert.convert_checkpoint(meta_file(folder, 'moco_checkpoint'))
    source = moco.spec
    assert source.kind == 'cast_seg_pretrain' and source.moco
    rules = loading.CROSS_KIND[('cast_seg_pretrain', target.kind)]()
    variables, kept = loading.start_from(_fresh(target), target, source, moco.variables, rules)
    assert kept == []
    ours = loading.flat_names(variables)
    assert set(ours) == set(expected), (sorted(set(ours) ^ set(expected)))[:10]

    source_grid = math.isqrt(moco.variables['params']['encoder']['pos_embed'].shape[1])
    target_grid = backbone['img_size'] // backbone['patch_size']
    assert ours['params/pos_embed'].shape == (1, target_grid ** 2, backbone['embed_dim'])
    for name, want in expected.items():
      got = ours[name]
      assert got.shape == want.shape and got.dtype == np.float32, name
      if name == 'params/pos_embed' and source_grid != target_grid:  # resampled here in float64, by PyTorch in float32
        scale = float(np.abs(want).max())
        err = float(np.abs(got.astype(np.float64) - want).max()) / scale
        assert err <= 1e-6, f'{folder.name} {name}: relative difference {err:.3g}'
      else:  # copied: bit-identical
        np.testing.assert_array_equal(got, want, err_msg=f'{folder.name} {name}')


def test_moco_seg_checkpoint_refuses_a_segmentation_stage_of_another_width():
  """A wrong config fails naming the leaves instead of starting from scratch."""
  require_golden()
  moco = convert.convert_checkpoint(checkpoint_path(golden_folder('moco', seg_arch=True)))
  wide = moco.spec.embed_dim * 2
  target = ModelSpec(kind='cast_seg', embed_dim=wide, depth=moco.spec.depth, num_clusters=(12, 6, 3, 2),
                     image_size=512, max_segments=36)
  rules = loading.CROSS_KIND[('cast_seg_pretrain', 'cast_seg')]()
  with pytest.raises(loading.LoadError) as info:
    loading.start_from(_fresh(target), target, moco.spec, moco.variables, rules)
  message = str(info.value)
  cells = moco.variables['params']['encoder']['pos_embed'].shape[1]
  assert f'mis-shaped: params/cls_token: checkpoint (1, 1, {wide // 2}), model (1, 1, {wide})' in message
  assert f'params/pos_embed: checkpoint (1, {cells}, {wide // 2}), model (1, 4096, {wide}); cannot resample' in message
  assert not info.value.missing and not info.value.unexpected
  assert len(info.value.misshaped) > 100  # every leaf of the wrong width, not only the first


@pytest.mark.parametrize('image_size', [224, 256])
def test_deit_checkpoint_into_cast_seg_deit(image_size):
  """224: the original's own start (28x28 table kept, the forward resizes it). 256: a 32x32 model grid, the
  table's grid resampled bicubically with its cls slot kept."""
  require_golden()
  meta, source, deit = golden_deit_checkpoint()
  target = ModelSpec(kind='cast_seg_deit', embed_dim=meta['embed_dim'], depth=tuple(meta['depth']),
                     num_heads=meta['num_heads'], image_size=image_size)
  assert target.clusters() == (320, 160, 80, 40)
  model = build_model(target)
  fresh = quick_variables(model, jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32),
                          jax.ShapeDtypeStruct((1, image_size, image_size), jnp.int32))
  fresh = jax.tree_util.tree_map(np.asarray, dict(fresh))
  rules = loading.CROSS_KIND[('cast_deit', 'cast_seg_deit')]()
  variables, kept = loading.start_from(fresh, target, source, deit, rules, seed=3)

  fusion = sorted(n for n in loading.flat_names(fresh) if '/block_fusion/' in n)
  assert sorted(kept) == fusion and len(fusion) == 6  # BN scale/bias/mean/var, Linear kernel/bias
  ours, checkpoint, initial = (loading.flat_names(t) for t in (variables, deit, fresh))
  assert set(ours) == set(initial)
  assert set(checkpoint) - set(ours) == {n for n in checkpoint if n.startswith(('params/norm/', 'params/head/'))}
  for name, value in ours.items():
    assert value.shape == initial[name].shape, name
    if name in kept:
      continue
    if name == 'params/pos_embed' and image_size != 224:
      grid = image_size // 8
      want = loading.resample_position_table(checkpoint[name], (1, 1 + grid * grid, meta['embed_dim']), 1)
      np.testing.assert_array_equal(value[:, :1], checkpoint[name][:, :1])
      np.testing.assert_array_equal(value, want)
    else:
      np.testing.assert_array_equal(value, checkpoint[name], err_msg=name)
  # block_fusion as PyTorch initialises it: BatchNorm1d 1/0 with statistics 0/1, Linear U(+-1/sqrt(fan_in)).
  proj = variables['params']['block_fusion']['proj']
  bound = 1 / math.sqrt(proj['kernel'].shape[0])
  assert proj['kernel'].shape == (4 * meta['embed_dim'], meta['embed_dim'])
  assert 0.9 * bound < np.abs(proj['kernel']).max() <= bound and np.abs(proj['bias']).max() <= bound
  norm, stats = variables['params']['block_fusion']['norm'], variables['batch_stats']['block_fusion']['norm']
  assert norm['scale'].shape == stats['var'].shape == (4 * meta['embed_dim'],)
  for value, want in ((norm['scale'], 1.0), (norm['bias'], 0.0), (stats['mean'], 0.0), (stats['var'], 1.0)):
    np.testing.assert_array_equal(value, want)
