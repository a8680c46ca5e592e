"""No test builds a path from a golden fixture's folder or file name: folders are chosen by meta.json's ``kind``
and files by what meta.json names (conftest), so other fixture sets from the same generators, under other names,
run the same tests. A renamed copy of the real tree (tests/golden_rename.py) resolves to the same files.

The scan reads every string literal of tests/*.py and of the notebooks' code cells (docstrings and comments may
mention the original names); a literal that IS one of the original folder names, holds one as a path component
('moco_cast/...', 'segmentation/'), or is one of the fixtures' checkpoint file names fails, naming file and line.
"""

from __future__ import annotations

import ast
import json
import os
import re

import pytest

import conftest
from conftest import REPO_ROOT
from golden_rename import make_renamed_copy

# The folder names of the fixture set the port was written against. 'segmenter_window' and 'spml_retrieval' are
# also meta.json kinds and 'segmentation' a superpixel preset: alone they are allowed, as a path component not.
FOLDER_NAMES = ('moco_cast', 'moco_cast_seg', 'deit_cast', 'seg_cast', 'seg_deit_cast', 'segmentation',
                'segmenter_cast', 'segmenter_window', 'spml_cast', 'spml_retrieval')
ALSO_A_NAME = ('segmenter_window', 'spml_retrieval', 'segmentation')
FILE_NAMES = ('checkpoint_0000.pth.tar', 'best_checkpoint.pth', 'model.pth', 'checkpoint.pth', 'snapshot_init.pth')
_COMPONENT = re.compile(r'(?:^|/)(' + '|'.join(map(re.escape, FOLDER_NAMES)) + r')/')


def golden_name_literals(source: str) -> list[tuple[int, str]]:
  """(line, literal) of every string literal in ``source`` that names a golden folder or checkpoint file."""
  tree = ast.parse(source)
  docstrings = {id(node.value) for node in ast.walk(tree)
                if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
  found = []
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
      continue
    text = node.value
    if (text in FOLDER_NAMES and text not in ALSO_A_NAME) or _COMPONENT.search(text) or text in FILE_NAMES:
      found.append((node.lineno, text))
  return sorted(found)


# This file, and the synthetic trees of test_golden_selection.py that write the original names into meta.json on
# purpose (stale cross-folder references, which conftest.meta_file must survive).
EXEMPT = (os.path.basename(__file__), 'test_golden_selection.py')


def _sources():
  for path in sorted((REPO_ROOT / 'tests').glob('*.py')):
    if path.name not in EXEMPT:
      yield path.relative_to(REPO_ROOT).as_posix(), path.read_text()
  for path in sorted((REPO_ROOT / 'colabs').glob('*.ipynb')):
    for index, cell in enumerate(json.loads(path.read_text())['cells']):
      if cell['cell_type'] == 'code':
        yield f'{path.relative_to(REPO_ROOT).as_posix()} cell {index}', ''.join(cell['source'])


def test_no_test_or_notebook_names_a_golden_folder_or_file():
  offenders = [f'{where}:{line}: {text!r}' for where, source in _sources()
               for line, text in golden_name_literals(source)]
  assert not offenders, ('golden fixtures must be chosen by meta.json kind (conftest.golden_folders / '
                         'golden_folder) and files by meta.json (conftest.checkpoint_path / meta_file), not by '
                         'name:\n' + '\n'.join(offenders))


def test_the_scan_catches_names_and_spares_docstrings_and_kinds():
  source = '''
"""Reads moco_cast/checkpoint_0000.pth.tar (a docstring may say so)."""
a = golden_dir() / 'moco_cast' / 'inputs.npz'
b = root / 'segmentation/spml_cast'
c = folder / "checkpoint_0000.pth.tar"
d = f'{root}/deit_cast/meta.json'
e = golden_folders('spml_retrieval')
f = 'moco_cast_base_in1k'
'''
  assert golden_name_literals(source) == [(3, 'moco_cast'), (4, 'segmentation/spml_cast'),
                                          (5, 'checkpoint_0000.pth.tar'), (6, '/deit_cast/meta.json')]


@pytest.mark.parametrize('rewrite', [False, True], ids=['stale_references', 'rewritten_references'])
def test_a_renamed_copy_of_the_golden_tree_resolves_to_the_same_files(tmp_path, monkeypatch, rewrite):
  """Every kind has as many folders, and every checkpoint and cross-folder reference meta.json names resolves to
  the same file, whether meta.json still names the original folders or the new ones."""
  original = conftest.require_golden()

  def resolved():
    out = {}
    for folder in conftest.all_golden_folders():
      meta = conftest.load_meta(folder)
      files = {key: os.path.realpath(conftest.meta_file(folder, key) if key != 'checkpoint' else
                                     conftest.checkpoint_path(folder))
               for key in ('checkpoint', 'moco_checkpoint') if key in meta}
      out[folder] = (meta['kind'], files)
    return out

  before = resolved()
  layout = make_renamed_copy(original, tmp_path / 'renamed', rewrite_references=rewrite)
  assert all(os.path.basename(new) != os.path.basename(old) for old, new in layout.items())
  monkeypatch.setenv('CAST_GOLDEN_DIR', str(tmp_path / 'renamed'))
  assert resolved() == {layout[folder]: value for folder, value in before.items()}
