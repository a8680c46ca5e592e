"""Shared test helpers: where the golden fixtures live, and how to build a model from their meta.json."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from cast_jax import xla_cpu

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def golden_dir() -> pathlib.Path:
  """``$CAST_GOLDEN_DIR``, else ``../shared/golden`` next to the repository."""
  return pathlib.Path(os.environ.get('CAST_GOLDEN_DIR', REPO_ROOT.parent / 'shared' / 'golden'))


# meta.json 'kind's this port builds a model for. Other kinds under the golden root (segmentation/'s 'segmenter',
# 'segmenter_window', 'spml', 'spml_retrieval') have no port yet; selecting by kind leaves them out instead of
# failing on their different meta.json.
MODEL_KINDS = ('moco', 'deit', 'seg', 'seg_deit')


def golden_folders(*kinds: str) -> list[str]:
  """Every folder under the golden root whose meta.json has one of ``kinds`` (default: MODEL_KINDS).

  Folders are found by walking the whole tree and selected by what their meta.json says, never by their names,
  so a fixture set made by the same generator under other names or nesting is found the same way. Returned as
  paths relative to the root ('moco_cast', 'segmentation/spml_cast'), sorted.
  """
  root = golden_dir()
  if not root.is_dir():
    return []
  wanted = set(kinds or MODEL_KINDS)
  found = []
  for meta_json in root.rglob('meta.json'):
    kind = json.loads(meta_json.read_text()).get('kind')
    if kind in wanted:
      found.append(meta_json.parent.relative_to(root).as_posix())
  return sorted(found)


def all_golden_folders() -> list[str]:
  """Every folder under the golden root that has a meta.json, whatever its kind (relative paths, sorted)."""
  root = golden_dir()
  return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob('meta.json')) if root.is_dir() else []


def golden_folder_params(*kinds: str, needs: tuple[str, ...] = ()) -> list[str]:
  """``golden_folders(*kinds)`` holding every file in ``needs``, for ``pytest.mark.parametrize``.

  Without fixtures it is one placeholder id, so the test runs and ``require_golden`` skips it (or fails it in CI)
  with a message that says where the fixtures should be, instead of pytest silently collecting nothing.
  """
  folders = [f for f in golden_folders(*kinds) if all((golden_dir() / f / name).is_file() for name in needs)]
  return folders or [f'<no golden {"/".join(kinds or MODEL_KINDS)} fixtures>']


def golden_folder(kind: str, seg_arch: bool | None = None) -> str:
  """The first folder of ``kind`` (for tests that need one example, e.g. a MoCo checkpoint).

  seg_arch: for 'moco', True picks a cast_seg pretraining checkpoint, False a plain CAST one, None either.
  """
  for folder in golden_folders(kind):
    if seg_arch is None or ('seg' in load_meta(folder).get('arch', '')) == seg_arch:
      return folder
  require_golden()  # skips (or fails in CI) when there are no fixtures at all
  pytest.fail(f'no golden folder with kind {kind!r}{"" if seg_arch is None else f" and seg_arch={seg_arch}"} '
              f'under {golden_dir()}; found {golden_folders()}')


def require_golden(folder: str | None = None) -> pathlib.Path:
  """The golden root; in CI its absence is a failure, locally a skip that says where to put it.

  folder: a parametrized folder id; a placeholder from ``golden_folder_params`` (no fixture of that kind) is
  treated the same way, naming the kinds that were looked for.
  """
  root = golden_dir()
  message = None
  if not golden_folders():
    message = (f'golden fixtures not found at {root}: set CAST_GOLDEN_DIR to the folder holding the original '
               f'implementation\'s outputs (folders with a meta.json whose kind is one of {", ".join(MODEL_KINDS)})')
  elif folder is not None and not (root / folder / 'meta.json').is_file():
    message = f'{folder.strip("<>")} under {root} (found {golden_folders()})'
  if message:
    missing_fixture(message)
  return root


def missing_fixture(message: str) -> None:
  """A fixture the test needs is absent: a failure in CI (a parity test must never skip there), else a skip
  that says what is missing."""
  if os.environ.get('CI'):
    pytest.fail(message)
  pytest.skip(message)


def load_meta(folder) -> dict:
  """meta.json of a golden folder (relative to the golden root, or an absolute path)."""
  return json.loads((golden_dir() / folder / 'meta.json').read_text())


def golden_paths(*kinds: str, needs: tuple[str, ...] = ()) -> list[pathlib.Path]:
  """``golden_folders(*kinds)`` holding every file in ``needs``, as absolute paths (for tests that read several
  files of each folder)."""
  root = golden_dir()
  return [root / f for f in golden_folders(*kinds) if all((root / f / name).is_file() for name in needs)]


def golden_paths_or_skip(kind: str, needs: tuple[str, ...] = ()) -> list[pathlib.Path]:
  """``golden_paths(kind, needs=needs)``; none at all is a skip (a failure in CI) that names what was looked for."""
  folders = golden_paths(kind, needs=needs)
  if not folders:
    wanted = f' holding {", ".join(needs)}' if needs else ''
    missing_fixture(f'no golden folder with meta.json kind "{kind}"{wanted} under {golden_dir()} '
                    f'(set CAST_GOLDEN_DIR to the folder holding the original\'s outputs)')
  return folders


# meta.json fields that name a file in ANOTHER fixture folder ('../../<folder>/<file>'), with the kind of that
# folder (and, for 'moco', whether its arch is cast_seg's). A generator run under other folder names may keep the
# original names in these strings; the file is then found by that kind and its file name (meta_file).
REFERENCED_KINDS = {
    ('segmenter_window', 'checkpoint'): ('segmenter', None),
    ('spml', 'moco_checkpoint'): ('moco', True),
    ('spml_retrieval', 'moco_checkpoint'): ('moco', True),
}


def _named_file(text: str) -> str:
  """The file a meta.json description starts with: 'model.pth: {...}' or '../x/checkpoint.pth (same...)'."""
  return text.split()[0].rstrip(':,;')


def meta_file(folder, key: str = 'checkpoint') -> pathlib.Path:
  """The file meta.json's ``key`` names, resolved relative to ``folder`` (relative to the golden root, or absolute).

  When the relative path does not exist (another fixture set under other folder names, whose meta.json still
  names the original folders), the file is looked up by its name in the folders of the kind REFERENCED_KINDS
  gives (any kind if unknown); among several, the one sharing the longest path prefix with ``folder`` (the same
  fixture set) wins, and a tie is an error naming the candidates.
  """
  root = golden_dir()
  path = root / folder
  meta = load_meta(path)
  if key not in meta:
    pytest.fail(f'{path}/meta.json has no {key!r} entry naming a file (it has {sorted(meta)})')
  named = _named_file(str(meta[key]))
  direct = path / named
  if direct.is_file():
    return direct
  kind, seg_arch = REFERENCED_KINDS.get((meta.get('kind'), key), (None, None))
  candidates = []
  for other in (golden_folders(kind) if kind else all_golden_folders()):
    if (root / other).resolve() == path.resolve() or not (root / other / pathlib.PurePath(named).name).is_file():
      continue
    if seg_arch is not None and ('seg' in load_meta(other).get('arch', '')) != seg_arch:
      continue
    candidates.append(other)
  if not candidates:
    pytest.fail(f'{path}/meta.json {key!r} names {named}, which is neither at {direct} nor in any golden folder '
                f'of kind {kind or "any"} under {root}')
  here = path.resolve().relative_to(root.resolve()).parts

  def shared(other: str) -> int:
    return len(os.path.commonprefix([here, pathlib.PurePath(other).parts]))

  best = max(shared(c) for c in candidates)
  nearest = [c for c in candidates if shared(c) == best]
  if len(nearest) > 1:
    pytest.fail(f'{path}/meta.json {key!r} names {named}: not at {direct}, and several golden folders of kind '
                f'{kind} hold it ({nearest}); give each fixture set its own folder')
  return root / nearest[0] / pathlib.PurePath(named).name


def checkpoint_path(folder) -> pathlib.Path:
  """The checkpoint of a golden folder: the file meta.json's 'checkpoint' names when it is there or names another
  folder's file (resolved as ``meta_file``), else the folder's one .pth / .tar file."""
  path = golden_dir() / folder
  named = _named_file(str(load_meta(path).get('checkpoint', '')) or '-')
  if (path / named).is_file() or '/' in named:
    return meta_file(folder, 'checkpoint')
  files = [p for p in path.iterdir() if p.suffix in ('.pth', '.tar')]
  assert len(files) == 1, f'expected one checkpoint in {path}, found {files}'
  return files[0]


def fingerprint(t: np.ndarray, positions: np.ndarray) -> np.ndarray:
  """The segmentation golden README's fingerprint of a large tensor (train_steps.npz, mode "fp"): per axis the
  sums over all other axes, then the entries at ``positions``; float64."""
  t = np.asarray(t, np.float64)
  parts = [t.sum(axis=tuple(a for a in range(t.ndim) if a != d)).reshape(-1) for d in range(t.ndim)]
  return np.concatenate(parts + [t.reshape(-1)[positions]])


def golden_deit_checkpoint():
  """(meta, spec, variables) of the first golden fixture of kind 'deit', converted by the command-line converter's
  code: the start of the Segmenter's cross-kind tests."""
  from cast_jax import convert

  folder = golden_folder('deit')
  meta = load_meta(folder)
  spec = spec_from_meta(meta)
  return meta, spec, convert.convert_checkpoint(checkpoint_path(folder), spec=spec).variables


def spec_from_meta(meta: dict):
  """The ModelSpec that the original's constructor arguments in meta.json describe."""
  from cast_jax.models import ModelSpec

  if meta['kind'] == 'moco':
    kind = 'cast_seg_pretrain' if 'seg' in meta['arch'] else 'cast'
  else:
    kind = {'deit': 'cast_deit', 'seg': 'cast_seg', 'seg_deit': 'cast_seg_deit'}[meta['kind']]
  fields = dict(kind=kind, embed_dim=meta['embed_dim'], depth=tuple(meta['depth']), num_heads=meta['num_heads'],
                num_clusters=tuple(meta['num_clusters']), image_size=meta['model_img_size'],
                max_segments=meta['num_superpixels'])
  if meta['kind'] == 'moco':
    fields.update(moco=True, moco_dim=meta['moco_dim'], moco_mlp_dim=meta['moco_mlp_dim'])
  elif kind != 'cast_seg_deit':
    fields['num_classes'] = meta['num_classes']
  return ModelSpec(**fields)


def assert_close_golden(name: str, actual, expected) -> float:
  """The golden README's tolerances: floats within 1e-4 of max(1, |expected|max), integers identical.

  Returns the scaled float difference (0 for integers), for tests that report it.
  """
  actual = np.asarray(actual)
  expected = np.asarray(expected)
  assert actual.shape == expected.shape, f'{name}: shape {actual.shape} != golden {expected.shape}'
  if expected.dtype.kind in 'iub':
    mismatches = int(np.sum(actual.astype(np.int64) != expected.astype(np.int64)))
    assert mismatches == 0, f'{name}: {mismatches} of {expected.size} entries differ'
    return 0.0
  scale = max(1.0, float(np.abs(expected).max()))
  err = float(np.abs(actual.astype(np.float64) - expected).max()) / scale
  assert err <= 1e-4, f'{name}: max scaled difference {err:.3g} > 1e-4'
  return err


def golden_state_as_flax(arrays, spec, prefix: str, require_all: bool) -> dict:
  """'<prefix><torch key>' entries of a train_step.npz (grad/, after/) -> {collection: {flax path: array}},
  renamed and transposed by the converter exactly as a checkpoint is."""
  from cast_jax import convert

  state = {k[len(prefix):]: arrays[k] for k in arrays.files if k.startswith(prefix)}
  branches, info = convert.split_branches({'state_dict': state})
  conversion = convert.convert_state(branches, info, spec, require_all=require_all)
  return {col: convert.flatten(tree) for col, tree in conversion.variables.items()}


def quick_variables(model, *inputs, seed: int = 0):
  """Random variables with the model's shapes, without compiling ``model.init``.

  ``jax.jit(model.init)`` compiles the whole forward pass (10-20 s on CPU for any CAST); tests that only need
  plausible weights take shapes from ``jax.eval_shape`` and fill them: N(0, 0.05) parameters (LayerNorm and
  BatchNorm scales around 1), zero running means and unit running variances.
  """
  import jax

  shapes = jax.eval_shape(lambda *args: model.init(jax.random.PRNGKey(0), *args), *inputs)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    names = [getattr(p, 'key', str(p)) for p in path]
    if names[0] == 'batch_stats':
      value = np.ones(leaf.shape) if names[-1] == 'var' else np.zeros(leaf.shape)
    elif names[-1] == 'scale':
      value = 1.0 + 0.05 * rng.standard_normal(leaf.shape)
    else:
      value = 0.05 * rng.standard_normal(leaf.shape)
    return np.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# Compiling a tiny CAST with XLA's default CPU code generation takes ~15 s on a 2-core CPU, mostly in the
# fusion emitters and LLVM; with xla_cpu.FAST_COMPILE it takes ~2-3 s. The lowered program is the same, only the
# machine code is optimised less. cast_jax's own options (convolutions without YNNPACK on jax 0.10's XLA CPU)
# are kept, so the golden tests check the convolutions the trainer runs.
def fast_compile_options():
  """cast_jax's CPU compiler options with fast compilation, where this jax/XLA accepts them, else None."""
  return xla_cpu.project_options(fast_compile=True)


def fast_jit(fn, **kwargs):
  """``jax.jit`` with cheap CPU code generation where available."""
  return xla_cpu.jit(fn, fast_compile=True, **kwargs)
