"""Import the published PyTorch CAST checkpoints, without PyTorch.

    python -m cast_jax.convert SRC.pth DST.npz [--kind K] [--variant V] [--num-clusters 64,32,16,8]

Reads the file with the allow-list unpickler (``cast_jax.torch_pickle``: nothing in the file is executed),
finds the state dict(s) inside whatever wrapper the training script saved (MoCo ``state_dict`` with
``module.base_encoder.`` / ``module.momentum_encoder.`` / ``module.predictor.``, DeiT ``model``, the Segmenter's
``model`` with ``encoder.*`` / ``decoder.*``, plain state dicts), detects the model kind and size from key names
and shapes, renames and transposes every tensor into the Flax layout, and checks the result against the parameter
tree of the model it will be loaded into: every missing, unexpected or mis-shaped key is reported by name.

Output format: a flat ``.npz`` whose keys are '/'-joined Flax paths (``params/encoder/blocks_0/attn/qkv/kernel``,
``batch_stats/...``, ``momentum_params/...``) plus ``__spec__``, the ``ModelSpec`` as JSON. Plain arrays keyed by
name survive JAX/Flax/Orbax upgrades and are readable with numpy alone (``load_converted`` rebuilds the model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cast_jax.models.variants import KINDS, SIZES, ModelSpec, build_model
from cast_jax.torch_pickle import CheckpointError, load_torch_checkpoint

SPEC_KEY = '__spec__'
# Collections of the converted variables; the momentum encoder of a MoCo checkpoint gets its own two.
COLLECTIONS = ('params', 'batch_stats', 'momentum_params', 'momentum_batch_stats')
# State-dict keys the original keeps but never uses in the forward pass of that kind
# (docs/original_behaviour.md#parameter-counts).
UNUSED_BY_KIND = {'cast_seg_deit': ('norm.', 'head.')}


class ConversionError(ValueError):
  """The checkpoint does not fit the model; the message lists every offending key."""


@dataclasses.dataclass
class Conversion:
  spec: ModelSpec
  variables: dict[str, Any]  # collection -> nested dict of np.ndarray
  ignored: list[str]  # torch keys deliberately not imported, with the reason
  source_info: dict[str, Any]


# --------------------------------------------------------------------------------------------------------
# Finding the state dicts inside a checkpoint.


def _is_state_dict(obj) -> bool:
  return isinstance(obj, Mapping) and obj and all(isinstance(k, str) for k in obj) and any(
      isinstance(v, np.ndarray) for v in obj.values())


def split_branches(checkpoint) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
  """Returns ({'encoder'|'momentum'|'predictor': state dict}, info) for any supported wrapper."""
  info: dict[str, Any] = {}
  state = None
  if isinstance(checkpoint, Mapping):
    for key in ('epoch', 'arch'):
      if key in checkpoint and isinstance(checkpoint[key], (int, str)):
        info[key] = checkpoint[key]
    for key in ('state_dict', 'model', 'module'):
      if key in checkpoint and _is_state_dict(checkpoint[key]):
        state = checkpoint[key]
        info['wrapper'] = key
        break
    if state is None and _is_state_dict(checkpoint):
      state, info['wrapper'] = checkpoint, 'plain'
  if state is None:
    top = list(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ConversionError(f'no state dict found in the checkpoint (top level: {top}); expected a MoCo '
                          "checkpoint ('state_dict'), a DeiT/Segmenter checkpoint ('model') or a plain state dict.")
  state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}
  if any(k.startswith('decoder.') for k in state):
    return _split_segmenter(checkpoint, state, info)
  branches: dict[str, dict[str, np.ndarray]] = {}
  for prefix, branch in (('base_encoder.', 'encoder'), ('momentum_encoder.', 'momentum'), ('predictor.', 'predictor')):
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if part:
      branches[branch] = part
  if branches:
    info['moco'] = True
    rest = [k for k in state if not k.startswith(('base_encoder.', 'momentum_encoder.', 'predictor.'))]
    if rest:
      raise ConversionError(f'MoCo checkpoint has keys outside base_encoder/momentum_encoder/predictor: {rest[:10]}')
    if 'encoder' not in branches:
      raise ConversionError('MoCo checkpoint has no base_encoder.* keys')
  else:
    info['moco'] = False
    branches['encoder'] = dict(state)
  return branches, info


def _split_segmenter(checkpoint, state, info):
  """The Segmenter's ``{'model', 'optimizer', 'n_cls', 'lr_scheduler', 'epoch'}`` (segm/train_cast.py): an
  ``encoder.*`` and a ``decoder.*`` branch. The optimizer and scheduler states are not imported (a fine-tuning
  run starts its own); ``n_cls`` is kept to check the decoder's class embeddings against."""
  info['moco'] = False
  info['segmenter'] = True
  if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get('n_cls'), int):
    info['n_cls'] = checkpoint['n_cls']
  branches = {}
  for prefix in ('encoder', 'decoder'):
    branches[prefix] = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + '.')}
  rest = [k for k in state if not k.startswith(('encoder.', 'decoder.'))]
  if rest or not branches['encoder']:
    raise ConversionError(f'Segmenter checkpoint must hold encoder.* and decoder.* keys only; found '
                          f'{rest[:10] or "no encoder.* keys"}')
  return branches, info


def _decoder_fields(decoder: Mapping[str, np.ndarray], info) -> dict[str, Any]:
  """ModelSpec fields of a Segmenter decoder from its shapes (heads are not visible: the factory's d // 64)."""
  need = ('cls_emb', 'proj_dec.weight', 'blocks.0.mlp.fc1.weight')
  absent = [k for k in need if k not in decoder]
  if absent:
    raise ConversionError(f'decoder.* keys of a SuperpixMaskTransformer missing: {absent}; only the mask '
                          'transformer decoder is supported')
  n_cls, width = int(decoder['cls_emb'].shape[1]), int(decoder['cls_emb'].shape[2])
  if 'n_cls' in info and info['n_cls'] != n_cls:
    raise ConversionError(f"checkpoint says n_cls={info['n_cls']} but decoder.cls_emb has {n_cls} classes")
  layers = {int(m.group(1)) for k in decoder if (m := re.match(r'^blocks\.(\d+)\.', k))}
  return dict(seg_classes=n_cls, decoder_dim=width, decoder_depth=len(layers),
              decoder_mlp_dim=int(decoder['blocks.0.mlp.fc1.weight'].shape[0]))


# --------------------------------------------------------------------------------------------------------
# Detecting kind and size.


def _count_blocks(keys, pattern: str) -> dict[int, set[int]]:
  found: dict[int, set[int]] = {}
  for key in keys:
    m = re.match(pattern, key)
    if m:
      found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
  return found


def detect_spec(branches, info, overrides: Optional[dict[str, Any]] = None) -> ModelSpec:
  """A ModelSpec that fits the state dict: kind from key names, sizes from shapes.

  What the weights cannot tell (cluster counts, superpixel slots, heads) comes from the kind's defaults or
  ``overrides`` (e.g. {'num_clusters': (32, 16, 8, 4), 'max_segments': 64, 'variant': 'small'}).
  """
  overrides = dict(overrides or {})
  enc = branches['encoder']
  keys = list(enc)
  if 'cls_token' not in enc or not any(k.startswith('patch_embed.') for k in keys):
    raise ConversionError('not a CAST checkpoint: no cls_token / patch_embed.* keys (found e.g. '
                          f'{keys[:6]}). Supported: CAST (MoCo, DeiT, segmentation) and the MoCo-v3 conv ViT.')
  embed_dim = int(enc['cls_token'].shape[-1])
  has_fusion = any(k.startswith('block_fusion.') for k in keys)
  has_pools = any(k.startswith('pool1.') for k in keys)
  shared_ids = {int(m.group(1)) for k in keys if (m := re.match(r'^blocks\.(\d+)\.', k))}
  staged = _count_blocks(keys, r'^blocks([1-9])\.(\d+)\.')
  pos = enc.get('pos_embed')
  if pos is None:
    raise ConversionError('not a CAST checkpoint: no pos_embed')
  cells = int(pos.shape[1])

  if not has_pools:
    kind = 'vit_conv'
  elif has_fusion:
    if shared_ids:
      kind = 'cast_seg_deit'
    else:
      kind = 'cast_seg_pretrain' if info.get('moco') else 'cast_seg'
  else:
    kind = 'cast' if 'pe_token' in enc else 'cast_deit'
  kind = overrides.pop('kind', None) or kind

  # Stage depths: from the per-stage keys when present (cast_seg, or the aliases of cast.py), else from the
  # total count of shared blocks.
  if staged:
    depth = tuple(len(staged[s]) for s in sorted(staged))
  else:
    total = len(shared_ids)
    by_total = {sum(s['depth']): tuple(s['depth']) for s in SIZES.values()}
    if total not in by_total:
      raise ConversionError(f'{total} transformer blocks do not match any known depth {sorted(by_total)}; '
                            'pass --variant or a depth override.')
    depth = by_total[total]
  if kind == 'vit_conv':
    grid = math.isqrt(cells - 1)
    image_size = grid * 16
  else:
    grid = math.isqrt(cells - (1 if kind in ('cast_deit', 'cast_seg_deit') else 0))
    image_size = grid * 8
  variant = overrides.pop('variant', None)
  if variant is None:
    variant = next((name for name, s in SIZES.items() if s['embed_dim'] == embed_dim and tuple(s['depth']) == depth),
                   'small')
  head_key = 'head.weight' if 'head.weight' in enc else None
  num_classes = int(enc[head_key].shape[0]) if head_key and kind != 'cast_seg_deit' else 0
  fields: dict[str, Any] = dict(kind=kind, variant=variant, embed_dim=embed_dim, depth=depth, image_size=image_size,
                                num_classes=num_classes)
  if info.get('segmenter'):
    fields.update(_decoder_fields(branches['decoder'], info))
  if info.get('moco'):
    fields['moco'] = True
    fields['num_classes'] = 0
    fields['moco_mlp_dim'] = int(enc['head.0.weight'].shape[0])
    fields['moco_dim'] = int(enc['head.6.weight'].shape[0])
  fields.update(overrides)
  return ModelSpec(**fields)


# --------------------------------------------------------------------------------------------------------
# Renaming.


def _rename(key: str, spec: ModelSpec, branch: str) -> str:
  """Torch key -> dotted Flax path below the branch's root (before merging numeric parts)."""
  if branch == 'predictor':
    return 'predictor.layers.' + key
  if branch == 'decoder':
    return 'decoder.' + key
  if spec.moco and key.startswith('head.'):
    return 'projector.layers.' + key[len('head.'):]
  key = re.sub(r'^pool(\d+)\.pool_block\.', r'pool\1.', key)
  key = key.replace('block_fusion.proj_blocks.0.norm.', 'block_fusion.norm.')
  key = key.replace('block_fusion.proj_blocks.2.', 'block_fusion.proj.')
  return ('encoder.' + key) if (spec.moco or spec.seg_classes) else key


def _flax_leaf(path: list[str], value: np.ndarray) -> tuple[str, tuple[str, ...], np.ndarray] | None:
  """(collection suffix, Flax path, array) for one tensor; None for tensors Flax does not keep."""
  *parents, leaf = path
  if leaf == 'num_batches_tracked':
    return None
  if leaf == 'running_mean':
    return 'batch_stats', tuple(parents + ['mean']), value
  if leaf == 'running_var':
    return 'batch_stats', tuple(parents + ['var']), value
  if leaf == 'weight':
    if value.ndim == 4:  # Conv (O, I, kh, kw) -> (kh, kw, I, O)
      return 'params', tuple(parents + ['kernel']), value.transpose(2, 3, 1, 0)
    if value.ndim == 2:  # Linear (out, in) -> (in, out)
      return 'params', tuple(parents + ['kernel']), value.T
    return 'params', tuple(parents + ['scale']), value  # LayerNorm / BatchNorm
  return 'params', tuple(parents + [leaf]), value


def _split_path(dotted: str) -> list[str]:
  """'blocks.3.attn.qkv.weight' -> ['blocks_3', 'attn', 'qkv', 'weight'] (Flax names list entries name_i)."""
  out: list[str] = []
  for part in dotted.split('.'):
    if part.isdigit() and out:
      out[-1] = f'{out[-1]}_{part}'
    else:
      out.append(part)
  return out


def _dedupe_aliases(state: dict[str, np.ndarray], spec: ModelSpec, errors: list[str],
                    branch: str = 'encoder') -> dict[str, np.ndarray]:
  """cast.py / cast_deit keep each block twice: ``blocks.k`` and the stage alias ``blocks{l}.k``."""
  if spec.kind not in ('cast', 'cast_deit', 'cast_seg_deit') or branch == 'decoder':
    return state
  out = {}
  for key, value in state.items():
    m = re.match(r'^blocks[1-9]\.(\d+)\.(.*)$', key)
    if not m:
      out.setdefault(key, value)
      continue
    canonical = f'blocks.{m.group(1)}.{m.group(2)}'
    if canonical in state and not np.array_equal(state[canonical], value):
      errors.append(f'{key}: differs from {canonical}, which it should alias')
    out.setdefault(canonical, value)
  return out


def unflatten(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
  """{path tuple: leaf} -> nested dicts (the inverse of ``flatten``)."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def expected_shapes(spec: ModelSpec) -> dict[str, dict[tuple[str, ...], tuple[int, ...]]]:
  """Collection -> {path: shape} of the Flax model for ``spec`` (no computation: ``jax.eval_shape``)."""
  model = build_model(spec)
  size = spec.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  superpixels = jax.ShapeDtypeStruct((1, size, size), jnp.int32)
  shapes = jax.eval_shape(lambda x, y: model.init(jax.random.PRNGKey(0), x, y), images, superpixels)
  return {col: {p: tuple(v.shape) for p, v in flatten(tree).items()} for col, tree in shapes.items()}


def convert_state(branches, info, spec: ModelSpec, require_all: bool = True) -> Conversion:
  """Renames, transposes and checks every tensor; raises ConversionError listing all problems at once.

  ``require_all=False`` accepts a subset of the keys (e.g. the gradients of the trainable parameters only);
  unexpected and mis-shaped tensors are still errors.
  """
  errors: list[str] = []
  ignored: list[str] = []
  flat: dict[str, dict[tuple[str, ...], np.ndarray]] = {c: {} for c in COLLECTIONS}
  unused = UNUSED_BY_KIND.get(spec.kind, ())
  for branch, state in branches.items():
    state = _dedupe_aliases(state, spec, errors, branch)
    prefix = 'momentum_' if branch == 'momentum' else ''
    for key, value in state.items():
      if branch in ('encoder', 'momentum') and key.startswith(unused):
        ignored.append(f'{branch}:{key} (unused by the original {spec.kind} forward pass)')
        continue
      mapped = _flax_leaf(_split_path(_rename(key, spec, branch)), np.asarray(value))
      if mapped is None:
        ignored.append(f'{branch}:{key} (BatchNorm step counter; not needed with a fixed momentum)')
        continue
      collection, path, array = mapped
      target = flat[prefix + collection]
      if path in target:
        errors.append(f'{branch}:{key}: maps to {"/".join(path)} twice')
      target[path] = np.ascontiguousarray(array)

  expected = expected_shapes(spec)
  checks = [('params', 'params'), ('batch_stats', 'batch_stats')]
  if 'momentum' in branches:
    checks += [('momentum_params', 'params'), ('momentum_batch_stats', 'batch_stats')]
  for collection, reference in checks:
    want = dict(expected.get(reference, {}))
    if collection.startswith('momentum'):
      want = {p: s for p, s in want.items() if p[0] != 'predictor'}
    have = flat[collection]
    for path in sorted(set(want) - set(have)) if require_all else ():
      errors.append(f'missing {collection}/{"/".join(path)} {want[path]}')
    for path in sorted(set(have) - set(want)):
      errors.append(f'unexpected {collection}/{"/".join(path)} {have[path].shape}')
    for path in sorted(set(have) & set(want)):
      if tuple(have[path].shape) != want[path]:
        errors.append(f'mis-shaped {collection}/{"/".join(path)}: checkpoint {have[path].shape}, model {want[path]}')
  if errors:
    raise ConversionError(f'checkpoint does not fit {spec}:\n  ' + '\n  '.join(errors))
  variables = {c: unflatten(v) for c, v in flat.items() if v}
  return Conversion(spec=spec, variables=variables, ignored=ignored, source_info=info)


def convert_checkpoint(path, overrides: Optional[dict[str, Any]] = None, spec: Optional[ModelSpec] = None) -> Conversion:
  """Reads a PyTorch checkpoint and returns its Flax variables. ``spec`` skips detection entirely."""
  checkpoint = load_torch_checkpoint(path)
  branches, info = split_branches(checkpoint)
  info['source'] = str(path)
  if spec is None:
    spec = detect_spec(branches, info, overrides)
  return convert_state(branches, info, spec)


# --------------------------------------------------------------------------------------------------------
# The converted file.


def save_converted(conversion: Conversion, path) -> None:
  arrays = {'/'.join((col,) + p): v for col, tree in conversion.variables.items() for p, v in flatten(tree).items()}
  arrays[SPEC_KEY] = np.array(conversion.spec.to_json())
  arrays['__source__'] = np.array(json.dumps(conversion.source_info, default=str))
  with open(path, 'wb') as f:
    np.savez(f, **arrays)


def load_converted(path) -> tuple[ModelSpec, dict[str, Any]]:
  """(spec, variables) from a file written by ``save_converted``; variables map collection -> nested arrays."""
  try:
    with np.load(path, allow_pickle=False) as data:
      if SPEC_KEY not in data:
        raise CheckpointError(f'{path}: not a cast_jax checkpoint (no {SPEC_KEY}); convert PyTorch files with '
                              '`python -m cast_jax.convert SRC DST` first.')
      spec = ModelSpec.from_json(str(data[SPEC_KEY]))
      flat = {tuple(k.split('/')): data[k] for k in data.files if not k.startswith('__')}
  except (OSError, ValueError) as e:
    if isinstance(e, CheckpointError):
      raise
    raise CheckpointError(f'{path}: cannot read as a converted .npz checkpoint ({e})') from e
  variables: dict[str, Any] = {}
  for path_parts, value in flat.items():
    variables.setdefault(path_parts[0], {})[path_parts[1:]] = value
  return spec, {col: unflatten(v) for col, v in variables.items()}


def _parse_args(argv):
  parser = argparse.ArgumentParser(prog='python -m cast_jax.convert', description=__doc__.split('\n\n')[0])
  parser.add_argument('src', help='PyTorch checkpoint (.pth / .pth.tar)')
  parser.add_argument('dst', help='output .npz')
  parser.add_argument('--kind', choices=sorted(KINDS), help='override the detected model kind')
  parser.add_argument('--variant', choices=sorted(SIZES), help='override the detected size name')
  parser.add_argument('--num-heads', type=int, help='attention heads (not visible in the weights; default 12)')
  parser.add_argument('--num-clusters', help='comma-separated clusters per stage, e.g. 64,32,16,8')
  parser.add_argument('--max-segments', type=int, help='superpixel token slots (default 196)')
  parser.add_argument('--decoder-heads', type=int,
                      help='Segmenter decoder heads (not visible in the weights; default width // 64)')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = _parse_args(argv)
  overrides: dict[str, Any] = {}
  for name in ('kind', 'variant', 'num_heads', 'max_segments', 'decoder_heads'):
    if getattr(args, name) is not None:
      overrides[name] = getattr(args, name)
  if args.num_clusters:
    overrides['num_clusters'] = tuple(int(v) for v in args.num_clusters.split(','))
  try:
    conversion = convert_checkpoint(args.src, overrides)
  except (CheckpointError, ConversionError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  save_converted(conversion, args.dst)
  counts = {c: len(flatten(t)) for c, t in conversion.variables.items()}
  print(f'converted {args.src} -> {args.dst}')
  print(f'  model: {conversion.spec.to_json()}')
  print(f'  arrays: {counts}')
  if conversion.ignored:
    print(f'  not imported ({len(conversion.ignored)}): ' + '; '.join(conversion.ignored[:4]) +
          (' ...' if len(conversion.ignored) > 4 else ''))
  return 0


if __name__ == '__main__':
  sys.exit(main())
