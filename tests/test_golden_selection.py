"""Golden fixtures are found by meta.json's ``kind``, never by folder names (tests/conftest.py).

A synthetic fixture tree stands in for "another fixture set from the same generator": other names, nesting, kinds
this port does not build yet, and a folder without meta.json.
"""

from __future__ import annotations

import json

import pytest

import conftest


def _fixture(root, relative, meta, files=()):
  folder = root / relative
  folder.mkdir(parents=True)
  (folder / 'meta.json').write_text(json.dumps(meta))
  for name in files:
    (folder / name).write_bytes(b'')


@pytest.fixture
def synthetic_root(tmp_path, monkeypatch):
  _fixture(tmp_path, 'pretrain_a', {'kind': 'moco', 'arch': 'cast_small'}, ['train_step.npz'])
  _fixture(tmp_path, 'nested/pretrain_seg', {'kind': 'moco', 'arch': 'cast_seg_small_pretrain'}, ['train_step.npz'])
  _fixture(tmp_path, 'moco_forward_only', {'kind': 'moco', 'arch': 'cast_base'})
  _fixture(tmp_path, 'x/supervised', {'kind': 'deit'}, ['train_step.npz'])
  _fixture(tmp_path, 'segmentation/decoder', {'kind': 'segmenter'})  # no port yet: listed only when asked
  (tmp_path / 'notes').mkdir()  # no meta.json: not a fixture
  monkeypatch.setenv('CAST_GOLDEN_DIR', str(tmp_path))
  return tmp_path


def test_folders_are_selected_by_kind_at_any_depth(synthetic_root):
  assert conftest.golden_folders() == ['moco_forward_only', 'nested/pretrain_seg', 'pretrain_a', 'x/supervised']
  assert conftest.golden_folders('moco') == ['moco_forward_only', 'nested/pretrain_seg', 'pretrain_a']
  assert conftest.golden_folders('segmenter') == ['segmentation/decoder']
  assert conftest.golden_folder_params('moco', needs=('train_step.npz',)) == ['nested/pretrain_seg', 'pretrain_a']
  assert conftest.golden_folder_params('deit', needs=('train_step.npz',)) == ['x/supervised']
  assert conftest.golden_folder('moco', seg_arch=True) == 'nested/pretrain_seg'
  assert conftest.golden_folder('moco', seg_arch=False) == 'moco_forward_only'
  assert conftest.load_meta('x/supervised') == {'kind': 'deit'}


def test_a_missing_kind_is_a_placeholder_that_says_what_was_looked_for(synthetic_root, monkeypatch):
  [placeholder] = conftest.golden_folder_params('seg_deit')
  assert 'seg_deit' in placeholder
  monkeypatch.delenv('CI', raising=False)
  with pytest.raises(pytest.skip.Exception, match='seg_deit'):
    conftest.require_golden(placeholder)
  monkeypatch.setenv('CI', 'true')
  with pytest.raises(pytest.fail.Exception, match='seg_deit'):
    conftest.require_golden(placeholder)
  assert conftest.require_golden('pretrain_a') == synthetic_root
