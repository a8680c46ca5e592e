"""The converter's checks: detection, key mapping, and clear errors for checkpoints that do not fit."""

from __future__ import annotations

import numpy as np
import pytest

from cast_jax import convert
from cast_jax.models import ModelSpec
from cast_jax.torch_pickle import CheckpointError
from conftest import checkpoint_path, require_golden


def _golden_branches(folder):
  require_golden()
  from cast_jax.torch_pickle import load_torch_checkpoint
  return convert.split_branches(load_torch_checkpoint(checkpoint_path(folder)))


def test_moco_checkpoint_splits_into_branches_and_keeps_buffers():
  branches, info = _golden_branches('moco_cast')
  assert set(branches) == {'encoder', 'momentum', 'predictor'} and info['moco']
  conversion = convert.convert_state(branches, info, convert.detect_spec(branches, info))
  params = conversion.variables['params']
  enc = branches['encoder']
  # Linear weights are transposed, conv weights go OIHW -> HWIO, BN statistics land in batch_stats.
  np.testing.assert_array_equal(params['encoder']['blocks_4']['attn']['qkv']['kernel'],
                                enc['blocks.4.attn.qkv.weight'].T)
  np.testing.assert_array_equal(params['encoder']['patch_embed']['proj_0']['kernel'],
                                enc['patch_embed.proj.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(conversion.variables['batch_stats']['encoder']['patch_embed']['proj_1']['var'],
                                enc['patch_embed.proj.1.running_var'])
  np.testing.assert_array_equal(params['projector']['layers_6']['kernel'], enc['head.6.weight'].T)
  # The frozen pool4 and the fixed position table are imported, not re-initialised.
  np.testing.assert_array_equal(params['encoder']['pool4']['centroid_fc']['bias'],
                                enc['pool4.pool_block.centroid_fc.bias'])
  np.testing.assert_array_equal(params['encoder']['pos_embed'], enc['pos_embed'])
  momentum = conversion.variables['momentum_params']
  assert 'predictor' not in momentum
  np.testing.assert_array_equal(momentum['encoder']['cls_token'], branches['momentum']['cls_token'])
  assert all('num_batches_tracked' in item for item in conversion.ignored)


def test_alias_keys_alone_are_accepted_and_disagreeing_aliases_are_reported():
  branches, info = _golden_branches('deit_cast')
  spec = convert.detect_spec(branches, info)
  enc = branches['encoder']
  only_aliases = {k: v for k, v in enc.items() if not k.startswith('blocks.')}
  assert any(k.startswith('blocks2.') for k in only_aliases)
  conversion = convert.convert_state({'encoder': only_aliases}, info, spec)
  np.testing.assert_array_equal(conversion.variables['params']['blocks_5']['mlp']['fc1']['kernel'],
                                enc['blocks.5.mlp.fc1.weight'].T)
  broken = dict(enc)
  broken['blocks2.4.norm1.weight'] = broken['blocks2.4.norm1.weight'] + 1
  with pytest.raises(convert.ConversionError, match=r'blocks2\.4\.norm1\.weight: differs from blocks\.4'):
    convert.convert_state({'encoder': broken}, info, spec)


def test_every_missing_unexpected_and_misshaped_key_is_named():
  branches, info = _golden_branches('deit_cast')
  spec = convert.detect_spec(branches, info)
  enc = {k: v for k, v in branches['encoder'].items() if not k.startswith('blocks1.')}
  del enc['pool2.pool_block.fc1.1.bias']
  del enc['norm.weight']
  enc['extra_layer.weight'] = np.zeros((3, 3), np.float32)
  enc['head.weight'] = np.zeros((7, 48), np.float32)
  with pytest.raises(convert.ConversionError) as err:
    convert.convert_state({'encoder': enc}, info, spec)
  message = str(err.value)
  assert 'missing params/pool2/fc1_1/bias' in message
  assert 'missing params/norm/scale' in message
  assert 'unexpected params/extra_layer/kernel' in message
  assert 'mis-shaped params/head/kernel: checkpoint (48, 7), model (48, 10)' in message


def test_detection_of_each_kind_and_size():
  expected = {'moco_cast': 'cast', 'moco_cast_seg': 'cast_seg_pretrain', 'deit_cast': 'cast_deit',
              'seg_cast': 'cast_seg', 'seg_deit_cast': 'cast_seg_deit'}
  for folder, kind in expected.items():
    branches, info = _golden_branches(folder)
    spec = convert.detect_spec(branches, info)
    assert (spec.kind, spec.embed_dim, spec.depth) == (kind, 48, (3, 3, 3, 2)), folder
  branches, info = _golden_branches('deit_cast')
  assert convert.detect_spec(branches, info).num_classes == 10
  assert convert.detect_spec(branches, info, {'num_clusters': (8, 4, 2, 1)}).num_clusters == (8, 4, 2, 1)


def test_checkpoints_of_other_models_are_refused_clearly():
  resnet = {'state_dict': {'conv1.weight': np.zeros((64, 3, 7, 7), np.float32),
                           'fc.weight': np.zeros((1000, 2048), np.float32)}}
  branches, info = convert.split_branches(resnet)
  with pytest.raises(convert.ConversionError, match='not a CAST checkpoint'):
    convert.detect_spec(branches, info)
  with pytest.raises(convert.ConversionError, match='no state dict found'):
    convert.split_branches({'epoch': 3, 'note': 'nothing here'})


def test_cli_reports_corrupt_and_foreign_files(tmp_path, capsys):
  bad = tmp_path / 'broken.pth'
  bad.write_bytes(b'PK\x03\x04 this is not a real archive')
  assert convert.main([str(bad), str(tmp_path / 'out.npz')]) == 1
  assert 'truncated or corrupt' in capsys.readouterr().err
  assert convert.main([str(tmp_path / 'absent.pth'), str(tmp_path / 'out.npz')]) == 1
  assert 'no checkpoint file' in capsys.readouterr().err
  assert not (tmp_path / 'out.npz').exists()


def test_converted_file_round_trips_and_foreign_npz_is_refused(tmp_path):
  branches, info = _golden_branches('seg_deit_cast')
  conversion = convert.convert_state(branches, info, convert.detect_spec(branches, info))
  path = tmp_path / 'model.npz'
  convert.save_converted(conversion, path)
  spec, variables = convert.load_converted(path)
  assert spec == conversion.spec
  flat_a, flat_b = convert.flatten(variables), convert.flatten(conversion.variables)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key])
  # The unused final norm/head of cast_seg_deit are reported as deliberately not imported.
  assert any(item.startswith('encoder:head.weight') for item in conversion.ignored)
  other = tmp_path / 'other.npz'
  np.savez(other, weights=np.zeros(3))
  with pytest.raises(CheckpointError, match='not a cast_jax checkpoint'):
    convert.load_converted(other)
  assert ModelSpec.from_json(spec.to_json()) == spec
