"""Starting weights from a checkpoint: a converted PyTorch ``.npz`` or a workdir of ours.

``load_variables(path)`` returns (spec, {'params', 'batch_stats'}) for either. ``adapt(...)`` fits them to
the model being trained: a MoCo checkpoint's ``encoder`` feeds a bare encoder (linear probe, kNN), and
leaves the checkpoint does not have (a new classifier ``head``) keep their fresh values. Every mismatch in
shape is an error naming the path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cast_jax.convert import flatten, unflatten
from cast_jax.models.variants import ModelSpec
# Reading a checkpoint (an .npz or a workdir) belongs to the run folder's owner; re-exported for callers here.
from cast_jax.run_folder import encoder_only, load_variables  # pylint: disable=unused-import


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
