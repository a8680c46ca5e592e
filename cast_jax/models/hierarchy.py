"""The hierarchical segmentation CAST produces for free: chained argmax assignments of the pooling levels.

Level l assigns every level-(l-1) token to one of K_l clusters (argmax of ``logit{l}``); composing the levels
gives the level-l cluster of every superpixel, and reading that through a superpixel map gives it per pixel.
This is the notebooks' fine-to-coarse algorithm (docs/original_behaviour.md#hierarchy-from-the-notebooks); the
levels are nested.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def compose_assignments(logits: Sequence[jax.Array]) -> list[jax.Array]:
  """Hard cluster id of every level-0 token at each level.

  logits[l]: (B, N_l, K_l) with N_{l+1} = K_l. Returns one (B, N_0) int32 array per level.
  """
  labels, current = [], None
  for logit in logits:
    level = jnp.argmax(logit, axis=-1).astype(jnp.int32)
    current = level if current is None else jnp.take_along_axis(level, current, axis=1)
    labels.append(current)
  return labels


def level_logits(intermediates: Mapping[str, jax.Array]) -> list[jax.Array]:
  """``[logit1, logit2, ...]`` from a model's intermediates dict, in level order."""
  levels = sorted(int(k[len('logit'):]) for k in intermediates if k.startswith('logit'))
  return [intermediates[f'logit{level}'] for level in levels]


def pixel_hierarchy(intermediates: Mapping[str, jax.Array], superpixels: jax.Array) -> jax.Array:
  """Per-pixel cluster ids of every level.

  Args:
    intermediates: the model's ``intermediates`` (needs ``logit1..L``).
    superpixels: (B, H, W) int ids indexing the level-0 tokens (the full-resolution map for the real
      segmentation, or the map the model sampled for the low-resolution one).

  Returns:
    (B, L, H, W) int32; level l takes values in [0, K_l).
  """
  batch, height, width = superpixels.shape
  flat = superpixels.reshape(batch, -1).astype(jnp.int32)
  per_level = [jnp.take_along_axis(labels, flat, axis=1) for labels in compose_assignments(level_logits(intermediates))]
  return jnp.stack(per_level, axis=1).reshape(batch, len(per_level), height, width)


def nesting_violations(superpixels, hierarchy) -> list[str]:
  """Where a hierarchy fails to nest (empty when every segment lies inside one segment of the next level).

  superpixels: (H, W) ids; hierarchy: (L, H, W) ids, finest level first (numpy arrays, one image).
  """
  levels = [np.asarray(superpixels)] + [np.asarray(h) for h in hierarchy]
  problems = []
  for index, (fine, coarse) in enumerate(zip(levels[:-1], levels[1:])):
    pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
    split = len(pairs[0]) - len(np.unique(pairs[0]))
    if split:
      name = 'superpixel' if index == 0 else f'level-{index} segment'
      problems.append(f'{split} {name}(s) spread over several level-{index + 1} segments')
  return problems


def encoder_forward(model, uses_superpixels: bool) -> Callable:
  """(variables, images, superpixels) -> {'features' (B, D), 'hierarchy' (B, L, H, W) for CAST}.

  The one inference path from images to hierarchies: the trainers' evaluation pictures and the HierarchySegmenter
  (command, notebooks) both use it. Works for a bare encoder and for MoCo (whose ``encoder`` submodule is
  used, skipping the heads); ``logits`` is added for classifiers.
  """

  def run(module, images, superpixels):
    encoder = getattr(module, 'encoder', module)
    return encoder(images, superpixels if uses_superpixels else None, train=False)

  def forward(variables, images, superpixels):
    out = model.apply(variables, images, superpixels, method=run)
    result = {'features': out['features'].astype(jnp.float32)}
    if 'logits' in out:
      result['logits'] = out['logits'].astype(jnp.float32)
    if uses_superpixels and 'intermediates' in out:
      result['hierarchy'] = pixel_hierarchy(out['intermediates'], superpixels)
    return result

  return forward
