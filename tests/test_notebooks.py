"""The notebooks in colabs/: stored without outputs, and executed end to end in their small mode.

Small mode (``CAST_COLAB_SMALL=1``) trains the ``:test`` shrink of the demo instead of the demo, converts the
golden MoCo fixture (found by meta.json kind) instead of downloading a published checkpoint, and scores 16 images. Every
notebook asserts what it shows (shapes, nesting, parity with the original), so a run that finishes is a check.
segment_your_image runs twice: its published path against a local mirror of the hub, and (``-m slow``) its
fallback that trains the demo.
"""

from __future__ import annotations

import os
import re
import sys

import nbformat  # the test extra installs nbformat, nbclient and ipykernel
import pytest

from conftest import REPO_ROOT, checkpoint_path, golden_folder, load_meta, require_golden

sys.path.insert(0, str(REPO_ROOT / 'colabs'))
from strip_outputs import RUN_METADATA  # pylint: disable=wrong-import-position

NOTEBOOKS = sorted((REPO_ROOT / 'colabs').glob('*.ipynb'))


def test_the_three_notebooks_exist():
  assert [p.stem for p in NOTEBOOKS] == ['convert_and_check', 'segment_your_image', 'train_demo']


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for index, cell in enumerate(notebook.cells):
    leftovers = [key for key in RUN_METADATA if key in cell.metadata]
    if cell.cell_type == 'code':
      leftovers += ['outputs'] * bool(cell.outputs) + ['execution_count'] * (cell.execution_count is not None)
    assert not leftovers, f'{path.name} cell {index} holds {leftovers}; strip them: python colabs/strip_outputs.py'
  assert 'widgets' not in notebook.metadata, f'{path.name}: widget state in the metadata; strip it'


def execute(name: str, env: dict[str, str]) -> str:
  """Runs colabs/NAME.ipynb in a fresh kernel with ``env`` added; returns all it printed."""
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel

  path = REPO_ROOT / 'colabs' / f'{name}.ipynb'
  notebook = nbformat.read(path, as_version=4)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # the kernel inherits this process's environment
  try:
    NotebookClient(notebook, timeout=600, kernel_name='python3',
                   resources={'metadata': {'path': str(path.parent)}}).execute()
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
  return ''.join(o.get('text', '') for c in notebook.cells if c.cell_type == 'code' for o in c.outputs)


def small_mode(tmp_path, **extra) -> dict[str, str]:
  return {'CAST_COLAB_SMALL': '1', 'CAST_COLAB_WORK': str(tmp_path / 'work'), 'JAX_PLATFORMS': 'cpu',
          'CAST_CHECKPOINTS': str(tmp_path / 'checkpoints'), **extra}


def test_convert_and_check_matches_the_original(tmp_path):
  printed = execute('convert_and_check', small_mode(tmp_path, CAST_GOLDEN_DIR=str(require_golden())))
  # The notebook picks the plain-CAST MoCo fixture by meta.json, as golden_folder does here.
  meta = load_meta(golden_folder('moco', seg_arch=False))
  assert f'{checkpoint_path(golden_folder("moco", seg_arch=False)).name}:' in printed
  assert 'largest difference from the original' in printed and 'hierarchy: 0 pixels differ' in printed
  assert 'reload: every array identical' in printed
  # Segments per level on the photo: one number per level, at most its clusters, coarser levels no more.
  [counts] = re.findall(r'chelsea: segments per level \[([\d, ]+)\]', printed)
  counts = [int(c) for c in counts.split(',')]
  assert len(counts) == len(meta['num_clusters']) and counts == sorted(counts, reverse=True)
  assert all(1 <= c <= k for c, k in zip(counts, meta['num_clusters'])), (counts, meta['num_clusters'])


def test_segment_your_image_with_a_published_checkpoint_from_a_mirror(tmp_path):
  require_golden()
  folder = golden_folder('moco', seg_arch=False)
  mirror = tmp_path / 'hub' / 'snapshots/moco/imagenet1k/cast_base/checkpoint_0099.pth.tar'
  mirror.parent.mkdir(parents=True)
  mirror.symlink_to(checkpoint_path(folder))  # the published format, at the published path
  printed = execute('segment_your_image', small_mode(tmp_path, CAST_PUBLISHED_HUB=(tmp_path / 'hub').as_uri()))
  assert 'moco_cast_base_in1k.npz' in printed
  assert re.search(rf'model: cast \w+, input {load_meta(folder)["model_img_size"]} px', printed), printed
  assert 'falling back' not in printed
  assert (tmp_path / 'work' / 'segmentation' / 'my_image_panel.png').is_file()


@pytest.mark.slow
def test_segment_your_image_falls_back_to_the_demo(tmp_path):
  printed = execute('segment_your_image', small_mode(tmp_path, CAST_PUBLISHED_HUB=(tmp_path / 'nowhere').as_uri()))
  assert 'falling back to a checkpoint trained by the demo' in printed
  assert 'model: cast small, input 64 px' in printed


def test_train_demo(tmp_path):
  printed = execute('train_demo', small_mode(tmp_path))
  assert 'step 6: kNN top-1' in printed and 'cast_level4 (2)' in printed
  assert (tmp_path / 'work' / 'train_demo_small' / 'pictures' / 'hierarchy_first_batch_0000006.png').is_file()
