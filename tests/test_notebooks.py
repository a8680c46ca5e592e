"""The notebooks in colabs/: stored without outputs, and executed end to end in their small mode.

Small mode (``CAST_COLAB_SMALL=1``) trains the ``:test`` shrink of the demo instead of the demo, converts the
golden ``moco_cast`` fixture instead of downloading a published checkpoint, and scores 16 images. Every
notebook asserts what it shows (shapes, nesting, parity with the original), so a run that finishes is a check.
"""

from __future__ import annotations

import os

import nbformat  # the test extra installs nbformat, nbclient and ipykernel
import pytest

from conftest import REPO_ROOT, require_golden

NOTEBOOKS = sorted((REPO_ROOT / 'colabs').glob('*.ipynb'))


def test_the_three_notebooks_exist():
  assert [p.stem for p in NOTEBOOKS] == ['convert_and_check', 'segment_your_image', 'train_demo']


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, (
          f'{path.name} cell {index} holds outputs; strip them: python colabs/strip_outputs.py')
  assert 'widgets' not in notebook.metadata, f'{path.name}: widget state in the metadata; strip it'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_small_mode(path, tmp_path):
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel

  golden = require_golden()
  notebook = nbformat.read(path, as_version=4)
  env = {'CAST_COLAB_SMALL': '1', 'CAST_COLAB_WORK': str(tmp_path), 'CAST_GOLDEN_DIR': str(golden),
         'JAX_PLATFORMS': 'cpu'}
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
  errors = [o for c in notebook.cells if c.cell_type == 'code' for o in c.outputs if o.output_type == 'error']
  assert not errors  # nbclient raises on the first error; this guards against allow_errors being set
