"""Each trainer declares the checkpoints it starts from (``tasks.start_rules``): the probe takes a MoCo encoder and
keeps its head fresh with MoCo-v3's N(0, 0.01); MoCo and supervised runs take their own kind; anything else is an
error naming the accepted kinds or every leaf that does not fit. Shapes only: nothing is compiled."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cast_jax import convert, loading
from cast_jax.models import ModelSpec, build_model
from cast_jax.train import tasks
from conftest import quick_variables

TINY = dict(kind='cast', image_size=64, embed_dim=24, depth=(1, 1, 1, 1), num_heads=2, num_clusters=(16, 8, 4, 2),
            max_segments=64, moco_dim=16, moco_mlp_dim=32)


def _variables(spec: ModelSpec, seed: int):
  model = build_model(spec)
  size = spec.image_size
  tree = quick_variables(model, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
                         jax.ShapeDtypeStruct((1, size, size), jnp.int32), seed=seed)
  return jax.tree_util.tree_map(np.asarray, dict(tree))


def _checkpoint(tmp_path, spec: ModelSpec, seed: int = 1):
  variables = _variables(spec, seed)
  path = tmp_path / f'{spec.kind}_{int(spec.moco)}_{spec.embed_dim}.npz'
  convert.save_converted(convert.Conversion(spec, variables, [], {}), path)
  return path, variables


def _config(trainer: str, checkpoint='', seed: int = 0):
  return ml_collections.ConfigDict({'trainer': trainer, 'init_checkpoint': str(checkpoint), 'seed': seed})


def test_the_probe_starts_from_a_moco_encoder_with_a_fresh_normal_head(tmp_path, capsys):
  path, moco = _checkpoint(tmp_path, ModelSpec(moco=True, **TINY))
  probe_spec = ModelSpec(num_classes=8, **TINY)
  fresh = _variables(probe_spec, seed=2)
  out = tasks.starting_variables(_config('linear_probe', path, seed=5), probe_spec, fresh)
  assert "kept fresh: ['params/head/bias', 'params/head/kernel']" in capsys.readouterr().out
  head = out['params']['head']
  np.testing.assert_array_equal(head['bias'], 0.0)
  assert head['kernel'].shape == (24, 8) and 0.005 < head['kernel'].std() < 0.015
  np.testing.assert_array_equal(head['kernel'], tasks.probe_head_init(fresh, 5)['params']['head']['kernel'])
  for name, value in loading.flat_names(out).items():
    if not name.startswith('params/head/'):
      collection, rest = name.split('/', 1)
      np.testing.assert_array_equal(value, loading.flat_names(moco)[f'{collection}/encoder/{rest}'], err_msg=name)
  with pytest.raises(ValueError, match='linear_probe trainer needs --config.init_checkpoint'):
    tasks.starting_variables(_config('linear_probe'), probe_spec, fresh)


def test_moco_continues_only_from_moco_checkpoints_of_its_kind(tmp_path):
  spec = ModelSpec(moco=True, **TINY)
  path, moco = _checkpoint(tmp_path, spec)
  out = tasks.starting_variables(_config('moco', path), spec, _variables(spec, seed=2))
  for name, value in loading.flat_names(out).items():  # encoder, projector and predictor all loaded
    np.testing.assert_array_equal(value, loading.flat_names(moco)[name], err_msg=name)
  deit_path, _ = _checkpoint(tmp_path, ModelSpec(**dict(TINY, kind='cast_deit'), num_classes=8))
  with pytest.raises(ValueError, match=r'holds a cast_deit model; this model starts from: cast \(MoCo'):
    tasks.starting_variables(_config('moco', deit_path), spec, _variables(spec, seed=2))
  plain_path, _ = _checkpoint(tmp_path, ModelSpec(num_classes=8, **TINY))
  with pytest.raises(ValueError, match='is not a MoCo checkpoint'):
    tasks.starting_variables(_config('moco', plain_path), spec, _variables(spec, seed=2))


def test_a_checkpoint_of_another_width_fails_naming_the_leaves(tmp_path):
  path, _ = _checkpoint(tmp_path, ModelSpec(moco=True, **dict(TINY, embed_dim=36)))
  spec = ModelSpec(num_classes=8, **TINY)
  with pytest.raises(loading.LoadError) as info:
    tasks.starting_variables(_config('linear_probe', path), spec, _variables(spec, seed=2))
  message = str(info.value)
  assert 'mis-shaped: params/cls_token: checkpoint (1, 1, 36), model (1, 1, 24)' in message
  assert 'mis-shaped: params/blocks_0/attn/qkv/kernel: checkpoint (36, 108), model (24, 72)' in message
  assert not any('head' in m for m in info.value.misshaped)  # kept fresh, so never compared


def test_a_supervised_model_takes_its_own_kind_and_the_segmenter_takes_deit(tmp_path):
  spec = ModelSpec(kind='cast_deit', num_classes=8, **{k: v for k, v in TINY.items() if k != 'kind'})
  path, deit = _checkpoint(tmp_path, spec)
  out = tasks.starting_variables(_config('supervised', path), spec, _variables(spec, seed=2))
  for name, value in loading.flat_names(out).items():
    np.testing.assert_array_equal(value, loading.flat_names(deit)[name], err_msg=name)
  rules, required = tasks.start_rules(_config('supervised'), ModelSpec(kind='cast_seg_deit'))
  assert not required and [r.kinds for r in rules] == [('cast_seg_deit',), ('cast_deit',)]
  assert rules[1].dont_load == ('(params|batch_stats)/block_fusion/.*',)
  rules, _ = tasks.start_rules(_config('supervised'), ModelSpec(kind='cast_seg'))
  assert [r.kinds for r in rules] == [('cast_seg',), ('cast_seg_pretrain',)] and rules[1].moco


def test_evaluation_adapt_drops_or_keeps_only_a_head(tmp_path):
  """``init_from.adapt`` (the evaluate command): the encoder must fit exactly; a head the model lacks is dropped,
  one the checkpoint lacks stays fresh."""
  from cast_jax.train import init_from  # pylint: disable=import-outside-toplevel

  deit_spec = ModelSpec(kind='cast_deit', num_classes=8, **{k: v for k, v in TINY.items() if k != 'kind'})
  _, deit = _checkpoint(tmp_path, deit_spec)
  features = deit_spec.replace(num_classes=0)
  out, kept = init_from.adapt(deit, deit_spec, _variables(features, seed=2))
  assert kept == [] and 'head' not in out['params']
  np.testing.assert_array_equal(out['params']['cls_token'], deit['params']['cls_token'])
  moco_spec = ModelSpec(moco=True, **TINY)
  _, moco = _checkpoint(tmp_path, moco_spec)
  out, kept = init_from.adapt(moco, moco_spec, _variables(ModelSpec(num_classes=8, **TINY), seed=2))
  assert kept == ['params/head/bias', 'params/head/kernel']
  with pytest.raises(loading.LoadError) as info:  # a sin-cos MoCo encoder is not a learned-table DeiT one
    init_from.adapt(moco, moco_spec, _variables(ModelSpec(**dict(TINY, kind='cast_deit')), seed=2))
  assert info.value.unexpected == ['params/pe_token (1, 1, 24)']
  assert info.value.misshaped == ['params/pos_embed: checkpoint (1, 64, 24), model (1, 65, 24)']


def _supervised_config(checkpoint, keep_fresh: str = ''):
  return ml_collections.ConfigDict({'trainer': 'supervised', 'init_checkpoint': str(checkpoint), 'seed': 0,
                                    'init_keep_fresh': keep_fresh})


def test_fine_tuning_on_another_class_count_keeps_the_named_head_fresh(tmp_path, capsys):
  path, trained = _checkpoint(tmp_path, ModelSpec(**dict(TINY, kind='cast_deit'), num_classes=8))
  spec = ModelSpec(**dict(TINY, kind='cast_deit'), num_classes=5)
  fresh = _variables(spec, seed=2)
  with pytest.raises(loading.LoadError) as info:  # strict by default, and the error says how to start the head fresh
    tasks.starting_variables(_supervised_config(path), spec, fresh)
  message = str(info.value)
  assert 'mis-shaped: params/head/kernel: checkpoint (24, 8), model (24, 5)' in message
  assert "--config.init_keep_fresh='params/head/.*'" in message
  out = tasks.starting_variables(_supervised_config(path, 'params/head/.*'), spec, fresh)
  assert "kept fresh: ['params/head/bias', 'params/head/kernel']" in capsys.readouterr().out
  trained_flat, fresh_flat = loading.flat_names(trained), loading.flat_names(fresh)
  out_flat = loading.flat_names(out)
  assert set(out_flat) == set(fresh_flat)
  for name, value in out_flat.items():
    expected = fresh_flat[name] if name.startswith('params/head/') else trained_flat[name]
    np.testing.assert_array_equal(value, expected, err_msg=name)


def test_keep_fresh_patterns_are_checked(tmp_path):
  path, _ = _checkpoint(tmp_path, ModelSpec(**dict(TINY, kind='cast_deit'), num_classes=8))
  spec = ModelSpec(**dict(TINY, kind='cast_deit'), num_classes=8)
  fresh = _variables(spec, seed=2)
  with pytest.raises(loading.LoadError, match="dont_load pattern matches no leaf of the model: 'params/haed/.*'"):
    tasks.starting_variables(_supervised_config(path, 'params/haed/.*'), spec, fresh)  # a typo is not ignored
  with pytest.raises(ValueError, match='is not a regular expression'):
    tasks.starting_variables(_supervised_config(path, 'params/head/(.*'), spec, fresh)
  config = _supervised_config(path, 'params/head/.*')
  config.trainer = 'segmentation'
  with pytest.raises(ValueError, match='init_keep_fresh is for the supervised, moco and linear_probe trainers'):
    tasks.starting_variables(config, spec, fresh)
