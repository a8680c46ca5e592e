"""Starting weights from a checkpoint, strictly: every leaf is loaded, explicitly kept fresh, or an error.

    variables, kept = load(fresh, checkpoint, dont_load=('params/head/.*',),
                           resample={'params/pos_embed': position_table(extra_tokens=0)})

``fresh`` and ``checkpoint`` are nested variable dicts ({'params': ..., 'batch_stats': ...}). Leaf names are
'/'-joined paths with the collection first (``params/blocks_0/attn/qkv/kernel``); every pattern is a regex that
must match a whole name (``re.fullmatch``). ``load`` raises one ``LoadError`` naming every missing, unexpected
and mis-shaped leaf, so a renamed wrapper prefix or a wrong model size cannot silently train from scratch
(big_vision's ``models/common.py:merge_params`` is the model).

``StartRules`` say which checkpoint kinds a model accepts and what it keeps fresh; ``CROSS_KIND`` holds the
original's cross-kind starts (DeiT ``cast_deit`` into the Segmenter's ``cast_seg_deit``, the COCO MoCo
``cast_seg_pretrain`` into SPML's ``cast_seg`` segmentation stage). ``load_variables`` reads a converted .npz or a
training workdir. Nothing here imports ``cast_jax.train``, so inference code can read checkpoints without it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from cast_jax.convert import flatten, unflatten
from cast_jax.models.resize import interpolation_matrix
from cast_jax.models.variants import ModelSpec
# Reading a checkpoint (an .npz or a workdir) belongs to the run folder's owner; re-exported for the callers here.
from cast_jax.run_folder import encoder_only, load_variables  # noqa: F401  pylint: disable=unused-import

# A resample rule: (checkpoint value, fresh shape) -> value of the fresh shape; raises ValueError when it cannot.
Resample = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


class LoadError(ValueError):
  """The checkpoint does not fit the model. ``missing``, ``unexpected`` and ``misshaped`` hold the leaf names."""

  def __init__(self, source: str, missing: Sequence[str], unexpected: Sequence[str], misshaped: Sequence[str],
               unused_patterns: Sequence[str] = (), hint: str = ''):
    self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)
    self.unused_patterns = list(unused_patterns)
    lines = [f'{source} does not fit the model:']
    lines += [f'  missing (in the model, not in the checkpoint): {name}' for name in self.missing]
    lines += [f'  unexpected (in the checkpoint, not in the model): {name}' for name in self.unexpected]
    lines += [f'  mis-shaped: {entry}' for entry in self.misshaped]
    lines += [f'  dont_load pattern matches no leaf of the model: {p!r}' for p in self.unused_patterns]
    lines.append('Check config.model (kind, size, clusters, image_size) against the checkpoint; leaves meant to '
                 'stay fresh or to be dropped must be declared (dont_load / skip_unexpected of the task).')
    if hint:
      lines.append(hint)
    super().__init__('\n'.join(lines))


def _shape(value) -> tuple[int, ...]:
  return tuple(getattr(value, 'shape', np.shape(value)))


def _dtype(value):
  return np.dtype(getattr(value, 'dtype', np.asarray(value).dtype))


def _matches(patterns: Sequence[str], name: str) -> Optional[str]:
  return next((p for p in patterns if re.fullmatch(p, name)), None)


def flat_names(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested variables -> {'collection/a/b/leaf': value}."""
  return {'/'.join(path): value for path, value in flatten(tree).items()}


def load(fresh: Mapping[str, Any], checkpoint: Mapping[str, Any], *, dont_load: Sequence[str] = (),
         skip_unexpected: Sequence[str] = (), resample: Optional[Mapping[str, Resample]] = None,
         source: str = 'the checkpoint') -> tuple[dict[str, Any], list[str]]:
  """``checkpoint``'s values laid onto ``fresh``'s tree; returns (variables, names of the leaves kept fresh).

  dont_load: regexes of leaves that keep their fresh value (whether or not the checkpoint has them); a pattern
    matching no leaf of ``fresh`` is an error (a typo would otherwise load silently).
  skip_unexpected: regexes of checkpoint leaves the model lacks and that are dropped on purpose.
  resample: regex -> rule fitting a mis-shaped leaf to the model (e.g. ``position_table``); only applied when
    the shapes differ.
  Every other difference raises ``LoadError`` listing all of them at once. Loaded values take the fresh
  leaf's dtype.
  """
  resample = dict(resample or {})
  fresh_flat, loaded_flat = flat_names(fresh), flat_names(checkpoint)
  missing, misshaped, kept = [], [], []
  used = set()
  merged = {}
  for name, value in fresh_flat.items():
    pattern = _matches(dont_load, name)
    if pattern is not None:
      used.add(pattern)
      merged[name] = value
      kept.append(name)
      continue
    if name not in loaded_flat:
      missing.append(f'{name} {_shape(value)}')
      continue
    loaded = np.asarray(loaded_flat[name])
    if loaded.shape != _shape(value):
      rule_pattern = _matches(tuple(resample), name)
      if rule_pattern is None:
        misshaped.append(f'{name}: checkpoint {loaded.shape}, model {_shape(value)}')
        continue
      try:
        loaded = np.asarray(resample[rule_pattern](loaded, _shape(value)))
      except ValueError as e:
        misshaped.append(f'{name}: checkpoint {loaded.shape}, model {_shape(value)}; cannot resample: {e}')
        continue
      if loaded.shape != _shape(value):  # a rule's bug, not the checkpoint's
        raise AssertionError(f'resample rule {rule_pattern!r} gave {loaded.shape} for {name}, not {_shape(value)}')
    merged[name] = loaded.astype(_dtype(value))
  unexpected = [f'{name} {np.shape(v)}' for name, v in loaded_flat.items()
                if name not in fresh_flat and _matches(skip_unexpected, name) is None]
  unused = [p for p in dont_load if p not in used]
  if missing or unexpected or misshaped or unused:
    raise LoadError(source, missing, unexpected, misshaped, unused)
  out: dict[str, Any] = {collection: {} for collection in fresh}
  for name, value in merged.items():
    collection, *path = name.split('/')
    out.setdefault(collection, {})[tuple(path)] = value
  return {collection: unflatten(tree) for collection, tree in out.items()}, sorted(kept)


# --------------------------------------------------------------------------------------------------------
# Position tables.


def grid_side(cells: int, what: str = 'position table') -> int:
  side = math.isqrt(cells)
  if side * side != cells:
    raise ValueError(f'{what} has {cells} grid cells, not a square grid')
  return side


def resample_position_table(table: np.ndarray, target_shape: Sequence[int], extra_tokens: int = 0,
                            method: str = 'bicubic') -> np.ndarray:
  """(1, extra + g*g, D) -> (1, extra + G*G, D) as the original's ``interpolate_pos_embed``.

  The first ``extra_tokens`` rows (a cls slot) are copied; the row-major g x g grid is resized to G x G exactly
  as PyTorch ``F.interpolate(mode=method, align_corners=False)`` on its (1, D, g, g) layout (bicubic: A = -0.75,
  border taps clamped). Computed in float64, returned in the table's dtype.
  """
  table = np.asarray(table)
  target_shape = tuple(int(s) for s in target_shape)
  if table.ndim != 3 or len(target_shape) != 3 or table.shape[0] != target_shape[0] or \
      table.shape[2] != target_shape[2]:
    raise ValueError(f'a position table is (1, cells, dim) with the same dim on both sides; got {table.shape} '
                     f'-> {target_shape}')
  source, target = grid_side(table.shape[1] - extra_tokens), grid_side(target_shape[1] - extra_tokens)
  matrix = interpolation_matrix(source, target, method)  # (G, g)
  grid = table[0, extra_tokens:].astype(np.float64).reshape(source, source, -1)
  # Rows, then columns: two products (a three-operand np.einsum would loop over all five indices at once).
  resized = np.matmul(matrix[None], np.tensordot(matrix, grid, axes=(1, 0))).reshape(1, target * target, -1)
  return np.concatenate([table[:, :extra_tokens].astype(np.float64), resized], axis=1).astype(table.dtype)


def position_table(extra_tokens: int = 0, method: str = 'bicubic') -> Resample:
  """A resample rule for ``load``: position tables with ``extra_tokens`` leading non-grid rows."""
  return lambda value, shape: resample_position_table(value, shape, extra_tokens, method)


# --------------------------------------------------------------------------------------------------------
# PyTorch's default initialisations, for leaves a cross-kind start keeps fresh "as PyTorch would".


def torch_default_init(variables: Mapping[str, Any], pattern: str, seed: int) -> dict[str, Any]:
  """Every layer below a path matching ``pattern`` (both collections, e.g. ``(params|batch_stats)/block_fusion/.*``)
  re-initialised as PyTorch does: ``nn.Linear`` kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norm layers
  (a ``scale`` without a kernel) 1 / 0; BatchNorm running statistics mean 0, var 1."""
  rng = np.random.default_rng(seed)
  flat = flat_names(variables)
  out = {}
  for name, value in flat.items():
    if re.fullmatch(pattern, name):
      owner, leaf = name.rsplit('/', 1)
      if owner + '/kernel' in flat and leaf in ('kernel', 'bias'):
        bound = 1.0 / math.sqrt(_shape(flat[owner + '/kernel'])[0])
        value = rng.uniform(-bound, bound, _shape(value))
      elif leaf in ('scale', 'var'):
        value = np.ones(_shape(value))
      elif leaf in ('bias', 'mean'):
        value = np.zeros(_shape(value))
      else:
        raise ValueError(f'{name}: no PyTorch default initialisation known for this leaf')
      value = value.astype(_dtype(flat[name]))
    out[tuple(name.split('/'))] = value
  return unflatten(out)


# --------------------------------------------------------------------------------------------------------
# What a model accepts.


@dataclasses.dataclass(frozen=True)
class StartRules:
  """Which checkpoints a model may start from and how they are laid onto it.

  kinds: accepted checkpoint model kinds. moco: True / False requires a MoCo / non-MoCo checkpoint (None:
  either). A MoCo checkpoint loaded into a non-MoCo model gives its ``encoder`` (query) branch.
  dont_load, skip_unexpected, resample: as in ``load``. reinit(variables, seed): applied after loading to the
  leaves kept fresh (e.g. the probe head's N(0, 0.01)). required: training without a checkpoint is an error.
  """

  kinds: tuple[str, ...]
  moco: Optional[bool] = None
  dont_load: tuple[str, ...] = ()
  skip_unexpected: tuple[str, ...] = ()
  resample: Mapping[str, Resample] = dataclasses.field(default_factory=dict)
  reinit: Optional[Callable[[dict[str, Any], int], dict[str, Any]]] = None
  required: bool = False
  why: str = ''

  def check_source(self, source: ModelSpec, path: str) -> None:
    if source.kind not in self.kinds:
      raise ValueError(f'{path} holds a {source.kind} model; this model starts from {" or ".join(self.kinds)} '
                       f'checkpoints{" (" + self.why + ")" if self.why else ""}. Use a matching checkpoint or set '
                       '--config.model.kind (and its size) to the checkpoint\'s.')
    if self.moco is not None and source.moco != self.moco:
      raise ValueError(f'{path} is {"a" if source.moco else "not a"} MoCo checkpoint; this model starts from '
                       f'{"MoCo" if self.moco else "non-MoCo"} {"/".join(self.kinds)} checkpoints')


def choose_rules(rules: Sequence[StartRules], source: ModelSpec, path: str = 'the checkpoint') -> StartRules:
  """The first of ``rules`` that accepts a ``source`` checkpoint's kind; an error listing every accepted kind."""
  for candidate in rules:
    if source.kind in candidate.kinds:
      return candidate
  accepted = ', '.join(f'{"/".join(r.kinds)} ({r.why})' if r.why else '/'.join(r.kinds) for r in rules)
  raise ValueError(f'{path} holds a {source.kind} model; this model starts from: {accepted}. Use such a '
                   'checkpoint, or set --config.model.kind (and its size) to match the checkpoint.')


def start_from(fresh, target: ModelSpec, source: ModelSpec, loaded, rules: StartRules, *, seed: int = 0,
               path: str = 'the checkpoint') -> tuple[dict[str, Any], list[str]]:
  """``loaded`` (variables of a ``source`` model) onto ``fresh`` (of ``target``) under ``rules``;
  returns (variables, names kept fresh). Raises ValueError / LoadError naming what does not fit."""
  rules.check_source(source, path)
  loaded = {k: v for k, v in loaded.items() if k in ('params', 'batch_stats')}
  if source.moco and not target.moco:
    _, loaded = encoder_only(source, loaded)
  fresh = {k: v for k, v in fresh.items() if k in ('params', 'batch_stats')}
  variables, kept = load(fresh, loaded, dont_load=rules.dont_load, skip_unexpected=rules.skip_unexpected,
                         resample=rules.resample, source=path)
  if rules.reinit is not None:
    variables = rules.reinit(variables, seed)
  return variables, kept


def deit_into_seg_deit() -> StartRules:
  """The Segmenter's start: a DeiT ``cast_deit`` checkpoint into ``cast_seg_deit``
  (docs/original_behaviour.md#segmenter-model-start).

  ``block_fusion`` is new (PyTorch's default init), the unused ``norm``/``head`` of the checkpoint are dropped,
  and the learned table (cls slot + grid) is bicubically resampled when the model's grid differs (the original
  keeps 28x28 and resizes at every forward, which ``image_size=224`` reproduces exactly).
  """
  return StartRules(
      kinds=('cast_deit',), moco=False,
      dont_load=('(params|batch_stats)/block_fusion/.*',),
      skip_unexpected=('params/norm/.*', 'params/head/.*'),
      resample={'params/pos_embed': position_table(extra_tokens=1)},
      reinit=lambda v, seed: torch_default_init(v, '(params|batch_stats)/block_fusion/.*', seed),
      why='the Segmenter fine-tunes the DeiT model')


def moco_seg_into_seg() -> StartRules:
  """SPML's start (segmentation/README.md, "Conversion"): the COCO MoCo ``cast_seg_pretrain`` checkpoint's query
  encoder into the ``cast_seg`` segmentation stage, its 28x28 sin-cos table resampled to the model's grid
  (bicubic, align_corners=False, no extra tokens); the projector, predictor and momentum branch are dropped."""
  return StartRules(kinds=('cast_seg_pretrain',), moco=True,
                    resample={'params/pos_embed': position_table(extra_tokens=0)},
                    why='SPML fine-tunes the COCO MoCo model')


# (checkpoint kind, model kind) -> rules of the original's cross-kind starts.
CROSS_KIND: dict[tuple[str, str], Callable[[], StartRules]] = {
    ('cast_deit', 'cast_seg_deit'): deit_into_seg_deit,
    ('cast_seg_pretrain', 'cast_seg'): moco_seg_into_seg,
}
