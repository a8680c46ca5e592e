"""A copy of a golden fixture tree under other folder names, to show that tests select folders by meta.json.

Every folder with a meta.json gets a new name and the nested ones a new parent folder; each fixture file is a
symlink to the original (nothing is copied), so the copy costs nothing and the file names (checkpoint names
included) stay what the generator wrote. meta.json is linked unchanged by default: its cross-folder references
('../../moco_cast_seg/checkpoint_0000.pth.tar') then name folders that no longer exist, the harder case for the
tests (conftest.meta_file finds the file by kind). ``rewrite_references=True`` writes them with the new names,
as a generator that computes them would.

  python tests/golden_rename.py SRC DST [--rewrite-references]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil


def renamed_layout(src: pathlib.Path) -> dict[str, str]:
  """Old relative folder -> new one: top-level folders 'zz_<kind>_<i>', nested ones 'nest_<i>/other_<kind>_<i>'."""
  layout = {}
  for i, meta in enumerate(sorted(src.rglob('meta.json'))):
    old = meta.parent.relative_to(src)
    kind = json.loads(meta.read_text())['kind']
    layout[old.as_posix()] = (f'zz_{kind}_{i}' if len(old.parts) == 1 else
                              f'nest_{len(old.parts) - 1}/other_{kind}_{i}')
  return layout


def make_renamed_copy(src, dst, rewrite_references: bool = False) -> dict[str, str]:
  """Builds the renamed tree at ``dst`` (replaced if present); returns the old -> new folder names."""
  src, dst = pathlib.Path(src).resolve(), pathlib.Path(dst)
  layout = renamed_layout(src)
  if dst.exists():
    shutil.rmtree(dst)
  for path in sorted(src.rglob('*')):
    if not path.is_file():
      continue
    rel = path.relative_to(src)
    parent = rel.parent.as_posix()
    if parent in layout:
      target = dst / layout[parent] / rel.name
    elif parent == '.':
      target = dst / rel.name
    else:  # a file beside the fixtures (segmentation/README.md): into the renamed nest
      target = dst / f'nest_{len(rel.parent.parts)}' / rel.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if rewrite_references and rel.name == 'meta.json':
      target.write_text(json.dumps(_rewritten(json.loads(path.read_text()), parent, layout), indent=1))
    else:
      target.symlink_to(path)
  return layout


def _rewritten(meta: dict, folder: str, layout: dict[str, str]) -> dict:
  """meta.json with every '../'-relative reference to a fixture folder pointing at that folder's new name."""
  out = {}
  for key, value in meta.items():
    if isinstance(value, str) and value.startswith('../'):
      named, _, rest = value.partition(' ')
      old = os.path.normpath(os.path.join(folder, named))
      old_folder, name = os.path.split(old)
      if old_folder not in layout:  # already stale in the source tree: left as it is
        out[key] = value
        continue
      new = os.path.relpath(os.path.join(layout[old_folder], name), layout[folder])
      value = f'{new} {rest}'.rstrip() if rest else new
    out[key] = value
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('src')
  parser.add_argument('dst')
  parser.add_argument('--rewrite-references', action='store_true')
  args = parser.parse_args(argv)
  for old, new in make_renamed_copy(args.src, args.dst, args.rewrite_references).items():
    print(f'{old} -> {new}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
