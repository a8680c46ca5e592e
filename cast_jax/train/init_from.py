"""Starting weights from a checkpoint: a converted PyTorch ``.npz`` or a workdir of ours.

``load_variables(path)`` returns (spec, {'params', 'batch_stats'}) for either. ``adapt(...)`` fits them to
the model being trained: a MoCo checkpoint's ``encoder`` feeds a bare encoder (linear probe, kNN), and
leaves the checkpoint does not have (a new classifier ``head``) keep their fresh values. Every mismatch in
shape is an error naming the path.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np

from cast_jax.convert import flatten, load_converted, unflatten
from cast_jax.models.variants import ModelSpec
from cast_jax.torch_pickle import CheckpointError


def _spec_from_workdir(workdir: pathlib.Path) -> ModelSpec:
  config = json.loads((workdir / 'config.json').read_text())
  return ModelSpec.from_config(config['model'])  # lists become tuples there


def load_variables(path, use_ema: bool = False) -> tuple[ModelSpec, dict[str, Any]]:
  """(spec, variables) from a converted .npz or from a training workdir (its latest checkpoint).

  use_ema: take a supervised run's weight EMA instead of its weights (MoCo's momentum encoder otherwise).
  """
  path = pathlib.Path(path)
  if path.is_file():
    spec, variables = load_converted(path)
    return spec, {k: variables[k] for k in ('params', 'batch_stats') if k in variables}
  checkpoints = path / 'checkpoints'
  if not (path / 'config.json').is_file() or not checkpoints.is_dir():
    raise CheckpointError(f'{path} is neither a converted .npz (python -m cast_jax.convert) nor a cast_jax '
                          'workdir with config.json and checkpoints/')
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit() and (p / 'state').is_dir())
  if not steps:
    raise CheckpointError(f'{checkpoints} holds no finished checkpoint')
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  state = ocp.StandardCheckpointer().restore(checkpoints / str(steps[-1]) / 'state')
  prefix = 'ema_' if use_ema else ''
  variables = {'params': state[prefix + 'params'], 'batch_stats': state[prefix + 'batch_stats'] or {}}
  return _spec_from_workdir(path), jax.tree_util.tree_map(np.asarray, variables)


def encoder_only(spec: ModelSpec, variables) -> tuple[ModelSpec, dict[str, Any]]:
  """(spec, {'params', 'batch_stats'}) of the bare encoder inside any checkpoint: a MoCo checkpoint's
  ``encoder`` subtree without projector, predictor or momentum branch; no classifier head in the spec."""
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}
  if spec.moco:
    variables = {k: v.get('encoder', {}) for k, v in variables.items()}
  return spec.replace(moco=False, num_classes=0), variables


def adapt(variables, source: ModelSpec, fresh) -> tuple[dict[str, Any], list[str]]:
  """Loaded ``variables`` laid onto ``fresh`` (the target model's initial variables).

  Returns (variables, names of the leaves kept fresh). A MoCo source gives its ``encoder`` subtree.
  """
  _, variables = encoder_only(source, variables)
  out, kept = {}, []
  for collection, tree in fresh.items():
    loaded = flatten(variables.get(collection, {}))
    merged = {}
    for path, value in flatten(tree).items():
      if path in loaded:
        if tuple(np.shape(loaded[path])) != tuple(np.shape(value)):
          raise ValueError(f'{collection}/{"/".join(path)}: checkpoint shape {np.shape(loaded[path])} does not fit '
                           f'the model ({np.shape(value)}); check config.model against the checkpoint')
        merged[path] = np.asarray(loaded[path], np.asarray(value).dtype)
      else:
        merged[path] = value
        kept.append(f'{collection}/{"/".join(path)}')
    out[collection] = unflatten(merged)
  return out, kept


def probe_head_init(variables, seed: int = 0):
  """MoCo-v3's probe head: weight N(0, 0.01), bias 0."""
  head = variables['params']['head']
  rng = np.random.default_rng(seed)
  head = {'kernel': (0.01 * rng.standard_normal(np.shape(head['kernel']))).astype(np.float32),
          'bias': np.zeros(np.shape(head['bias']), np.float32)}
  return dict(variables, params=dict(variables['params'], head=head))
