"""Strips outputs, execution counts, run metadata and widget state from notebooks before they are committed.

    python colabs/strip_outputs.py                # every notebook in colabs/
    python colabs/strip_outputs.py NOTEBOOK.ipynb

tests/test_notebooks.py fails on a notebook stored with outputs: they bloat the history and go stale.
"""

import pathlib
import sys

import nbformat

# Per-cell metadata that a run leaves behind; Colab's executionInfo names the user who ran the cell.
RUN_METADATA = ('executionInfo', 'outputId', 'colab', 'execution')


def strip(path: pathlib.Path) -> bool:
  """Strips ``path`` in place; True when something was removed."""
  notebook = nbformat.read(path, as_version=4)
  changed = notebook.metadata.pop('widgets', None) is not None
  for cell in notebook.cells:
    if cell.cell_type == 'code' and (cell.outputs or cell.execution_count is not None):
      cell.outputs, cell.execution_count, changed = [], None, True
    for key in RUN_METADATA:
      changed |= cell.metadata.pop(key, None) is not None
  if changed:
    nbformat.write(notebook, path)
  return changed


def main(paths) -> int:
  paths = [pathlib.Path(p) for p in paths] or sorted(pathlib.Path(__file__).parent.glob('*.ipynb'))
  for path in paths:
    print(f'{path}: {"stripped" if strip(path) else "clean"}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
