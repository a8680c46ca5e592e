"""The converter's checks: detection, key mapping, and clear errors for checkpoints that do not fit."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cast_jax import convert
from cast_jax.models import ModelSpec
from cast_jax.torch_pickle import CheckpointError
from conftest import checkpoint_path, golden_folder, golden_folders, load_meta, require_golden, spec_from_meta


def _golden_branches(kind, seg_arch=None):
  """(branches, info) of the first golden checkpoint of meta.json ``kind``, and that folder's meta.json."""
  require_golden()
  from cast_jax.torch_pickle import load_torch_checkpoint
  folder = golden_folder(kind, seg_arch)
  return (*convert.split_branches(load_torch_checkpoint(checkpoint_path(folder))), load_meta(folder))


def test_moco_checkpoint_splits_into_branches_and_keeps_buffers():
  branches, info, meta = _golden_branches('moco', seg_arch=False)
  assert set(branches) == {'encoder', 'momentum', 'predictor'} and info['moco']
  conversion = convert.convert_state(branches, info, convert.detect_spec(branches, info))
  params = conversion.variables['params']
  enc = branches['encoder']
  last = sum(meta['depth']) - 1  # the last block, whatever the depths
  # Linear weights are transposed, conv weights go OIHW -> HWIO, BN statistics land in batch_stats.
  np.testing.assert_array_equal(params['encoder'][f'blocks_{last}']['attn']['qkv']['kernel'],
                                enc[f'blocks.{last}.attn.qkv.weight'].T)
  np.testing.assert_array_equal(params['encoder']['patch_embed']['proj_0']['kernel'],
                                enc['patch_embed.proj.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(conversion.variables['batch_stats']['encoder']['patch_embed']['proj_1']['var'],
                                enc['patch_embed.proj.1.running_var'])
  np.testing.assert_array_equal(params['projector']['layers_6']['kernel'], enc['head.6.weight'].T)
  # The frozen pool4 and the fixed position table are imported, not re-initialised.
  levels = len(meta['num_clusters'])
  np.testing.assert_array_equal(params['encoder'][f'pool{levels}']['centroid_fc']['bias'],
                                enc[f'pool{levels}.pool_block.centroid_fc.bias'])
  np.testing.assert_array_equal(params['encoder']['pos_embed'], enc['pos_embed'])
  momentum = conversion.variables['momentum_params']
  assert 'predictor' not in momentum
  np.testing.assert_array_equal(momentum['encoder']['cls_token'], branches['momentum']['cls_token'])
  assert all('num_batches_tracked' in item for item in conversion.ignored)


def _stage_of_blocks(meta: dict) -> dict[int, int]:
  """Block index -> the 1-based stage whose alias keys (``blocks<stage>.<index>.*``) name it, from meta's depths."""
  stages, index = {}, 0
  for stage, count in enumerate(meta['depth'], start=1):
    for _ in range(count):
      stages[index] = stage
      index += 1
  return stages


def test_alias_keys_alone_are_accepted_and_disagreeing_aliases_are_reported():
  branches, info, meta = _golden_branches('deit')
  spec = convert.detect_spec(branches, info)
  enc = branches['encoder']
  only_aliases = {k: v for k, v in enc.items() if not k.startswith('blocks.')}
  stages = _stage_of_blocks(meta)
  last = max(stages)
  assert any(k.startswith(f'blocks{stages[last]}.{last}.') for k in only_aliases)
  conversion = convert.convert_state({'encoder': only_aliases}, info, spec)
  np.testing.assert_array_equal(conversion.variables['params'][f'blocks_{last}']['mlp']['fc1']['kernel'],
                                enc[f'blocks.{last}.mlp.fc1.weight'].T)
  broken = dict(enc)
  alias = f'blocks{stages[last]}.{last}.norm1.weight'
  broken[alias] = broken[alias] + 1
  with pytest.raises(convert.ConversionError, match=re.escape(f'{alias}: differs from blocks.{last}')):
    convert.convert_state({'encoder': broken}, info, spec)


def test_every_missing_unexpected_and_misshaped_key_is_named():
  branches, info, meta = _golden_branches('deit')
  spec = convert.detect_spec(branches, info)
  enc = {k: v for k, v in branches['encoder'].items() if not k.startswith('blocks1.')}
  del enc['pool2.pool_block.fc1.1.bias']
  del enc['norm.weight']
  enc['extra_layer.weight'] = np.zeros((3, 3), np.float32)
  width, classes = meta['embed_dim'], meta['num_classes']
  enc['head.weight'] = np.zeros((classes + 3, width), np.float32)
  with pytest.raises(convert.ConversionError) as err:
    convert.convert_state({'encoder': enc}, info, spec)
  message = str(err.value)
  assert 'missing params/pool2/fc1_1/bias' in message
  assert 'missing params/norm/scale' in message
  assert 'unexpected params/extra_layer/kernel' in message
  assert f'mis-shaped params/head/kernel: checkpoint ({width}, {classes + 3}), model ({width}, {classes})' in message


def test_detection_of_each_kind_and_size():
  """Every golden checkpoint of a kind this port builds: the detected kind and sizes are what meta.json says."""
  require_golden()
  from cast_jax.torch_pickle import load_torch_checkpoint
  folders = golden_folders()
  for folder in folders:
    meta = load_meta(folder)
    branches, info = convert.split_branches(load_torch_checkpoint(checkpoint_path(folder)))
    spec = convert.detect_spec(branches, info)
    want = spec_from_meta(meta)
    assert (spec.kind, spec.embed_dim, spec.depth) == (want.kind, want.embed_dim, want.depth), folder
    if meta['kind'] == 'deit':
      assert spec.num_classes == meta['num_classes'], folder
  branches, info, _ = _golden_branches('deit')
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
  branches, info, _ = _golden_branches('seg_deit')
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
