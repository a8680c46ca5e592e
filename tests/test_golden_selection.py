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
  _fixture(tmp_path, 'segm_sets/decoder', {'kind': 'segmenter'})  # no port yet: listed only when asked
  (tmp_path / 'notes').mkdir()  # no meta.json: not a fixture
  monkeypatch.setenv('CAST_GOLDEN_DIR', str(tmp_path))
  return tmp_path


def test_folders_are_selected_by_kind_at_any_depth(synthetic_root):
  assert conftest.golden_folders() == ['moco_forward_only', 'nested/pretrain_seg', 'pretrain_a', 'x/supervised']
  assert conftest.golden_folders('moco') == ['moco_forward_only', 'nested/pretrain_seg', 'pretrain_a']
  assert conftest.golden_folders('segmenter') == ['segm_sets/decoder']
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


def _meta_file_tree(root):
  """Two fixture sets under other names whose meta.json still name the original folders ('../../moco_cast_seg/')."""
  for name in ('set_a', 'set_b'):
    _fixture(root, f'{name}/pre_seg', {'kind': 'moco', 'arch': 'cast_seg_small_pretrain',
                                       'checkpoint': 'ckpt_0.pth.tar (before the step)'}, ['ckpt_0.pth.tar'])
    _fixture(root, f'{name}/pre_plain', {'kind': 'moco', 'arch': 'cast_small',
                                         'checkpoint': 'ckpt_0.pth.tar (before the step)'}, ['ckpt_0.pth.tar'])
    _fixture(root, f'{name}/seg/dec', {'kind': 'segmenter', 'checkpoint': 'weights.pth: {...}'}, ['weights.pth'])
    _fixture(root, f'{name}/seg/win', {'kind': 'segmenter_window',
                                       'checkpoint': '../segmenter_cast/weights.pth (same weights)'})
    _fixture(root, f'{name}/seg/spml', {'kind': 'spml', 'checkpoint': 'snap.pth: {...}',
                                        'moco_checkpoint': '../../moco_cast_seg/ckpt_0.pth.tar'}, ['snap.pth'])


def test_meta_file_resolves_stale_references_by_kind_within_the_same_set(tmp_path, monkeypatch):
  _meta_file_tree(tmp_path)
  monkeypatch.setenv('CAST_GOLDEN_DIR', str(tmp_path))
  for name in ('set_a', 'set_b'):
    # The file in the folder itself; another folder's, found by the kind REFERENCED_KINDS gives (cast_seg MoCo,
    # not the plain one holding a file of the same name), in the same set (the longest shared path).
    assert conftest.checkpoint_path(f'{name}/pre_plain') == tmp_path / name / 'pre_plain' / 'ckpt_0.pth.tar'
    assert conftest.checkpoint_path(f'{name}/seg/spml') == tmp_path / name / 'seg' / 'spml' / 'snap.pth'
    assert conftest.meta_file(f'{name}/seg/spml', 'moco_checkpoint') == tmp_path / name / 'pre_seg' / 'ckpt_0.pth.tar'
    assert conftest.checkpoint_path(f'{name}/seg/win') == tmp_path / name / 'seg' / 'dec' / 'weights.pth'
  # A reference that still resolves as written is taken as written.
  (tmp_path / 'set_a' / 'seg' / 'segmenter_cast').mkdir()
  (tmp_path / 'set_a' / 'seg' / 'segmenter_cast' / 'weights.pth').write_bytes(b'')
  written = tmp_path / 'set_a' / 'seg' / 'win' / '..' / 'segmenter_cast' / 'weights.pth'
  assert conftest.checkpoint_path('set_a/seg/win') == written


def test_meta_file_refuses_an_ambiguous_or_missing_reference(tmp_path, monkeypatch):
  _meta_file_tree(tmp_path)
  _fixture(tmp_path, 'set_a/seg/spml2', {'kind': 'spml', 'moco_checkpoint': '../../moco_cast_seg/other.pth.tar'})
  _fixture(tmp_path, 'loose/spml', {'kind': 'spml', 'moco_checkpoint': '../../moco_cast_seg/ckpt_0.pth.tar'})
  monkeypatch.setenv('CAST_GOLDEN_DIR', str(tmp_path))
  with pytest.raises(pytest.fail.Exception, match=r'other\.pth\.tar.*neither at'):
    conftest.meta_file('set_a/seg/spml2', 'moco_checkpoint')
  with pytest.raises(pytest.fail.Exception, match=r'several golden folders.*set_a/pre_seg.*set_b/pre_seg'):
    conftest.meta_file('loose/spml', 'moco_checkpoint')  # equally near both sets: no guess
  with pytest.raises(pytest.fail.Exception, match="no 'moco_checkpoint' entry"):
    conftest.meta_file('set_a/pre_plain', 'moco_checkpoint')
