"""Superpixel bookkeeping with static shapes: segment means, validity masks, input checks.

The original computes the token count dynamically as ``S = max(superpixel id in the batch) + 1``. Under
``jax.jit`` shapes must be static, so tokens are laid out for a fixed ``max_segments`` and two masks carry
what the dynamic shape carried (docs/original_behaviour.md#token-layout-and-static-shapes):

* ``empty`` (B, S): the segment has no pixel at the resolution where features are averaged. The original
  keeps such tokens as zero vectors in the sequence and only hides them from farthest point sampling.
* ``valid`` (B, S): ``id < S_eff`` with ``S_eff = max id in the batch + 1``. Tokens past ``S_eff`` do not
  exist in the original, so they are hidden everywhere (attention keys, means, sampling, assignments).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def validate_superpixels(superpixels, max_segments: int, image_hw: tuple[int, int] | None = None,
                         batch_size: int | None = None) -> None:
  """Raises ValueError with a fix-it message when a superpixel map cannot be used.

  Shape and dtype are checked always; the id range only on concrete (non-traced) arrays, since a jitted
  function cannot raise on values. The data pipeline validates every map before batching.
  """
  shape = tuple(superpixels.shape)
  if len(shape) != 3:
    raise ValueError(f'superpixels must have shape (batch, height, width); got shape {shape}. '
                     'Stack per-image (H, W) maps into a batch first.')
  if not jnp.issubdtype(superpixels.dtype, jnp.integer):
    raise ValueError(f'superpixels must be an integer array of segment ids; got dtype {superpixels.dtype}. '
                     'Cast with .astype(np.int32) if the values are whole numbers.')
  if batch_size is not None and shape[0] != batch_size:
    raise ValueError(f'superpixels batch size {shape[0]} does not match the images batch size {batch_size}.')
  if image_hw is not None and shape[1:] != tuple(image_hw):
    raise ValueError(f'superpixels spatial shape {shape[1:]} does not match the image size {tuple(image_hw)}; '
                     'compute the superpixels on the image that is fed to the model.')
  if is_traced(superpixels):
    return
  values = np.asarray(superpixels)
  low, high = int(values.min()), int(values.max())
  if low < 0:
    raise ValueError(f'superpixel ids must be >= 0; found {low}. Relabel the map with ids 0..K-1.')
  if high >= max_segments:
    raise ValueError(f'superpixel id {high} is out of range for max_segments={max_segments}: ids must lie in '
                     f'[0, {max_segments}). Compute fewer superpixels or build the model with a larger '
                     'max_segments (num_superpixels).')


def downsample_nearest(superpixels, factor: int):
  """PyTorch legacy 'nearest' downsampling by an integer factor: the top-left pixel of each cell.

  (B, H, W) -> (B, H/factor, W/factor). ``jax.image.resize`` samples cell centres instead, which differs.
  """
  return superpixels[:, ::factor, ::factor]


def segment_sum(values, ids, num_segments: int):
  """Per-image segment sums. values (B, P, C), ids (B, P) int in [0, S) -> (B, S, C).

  Ids outside [0, S) (possible only under jit, where values cannot be validated) are dropped instead of
  spilling into a neighbouring image's segments; ``ids_in_range`` reports them.
  """
  # One scatter with the batch as a scatter batching dimension (vmap), not the batch folded into the segment
  # ids: a sharded jit can then split it over the batch like any other op. Folding the batch into flat ids
  # made the partitioner replicate the scatter and everything after it (every device computed the whole batch).
  safe_ids = jnp.where((ids >= 0) & (ids < num_segments), ids, num_segments)  # num_segments: dropped
  return jax.vmap(lambda v, i: jax.ops.segment_sum(v, i, num_segments=num_segments))(values, safe_ids)


def ids_in_range(ids, num_segments: int):
  """(B,) bool: every id of the image lies in [0, num_segments). ids: (B, ...)."""
  flat = ids.reshape(ids.shape[0], -1)
  return jnp.all((flat >= 0) & (flat < num_segments), axis=1)


def segment_counts(ids, num_segments: int):
  """Pixels per segment. ids (B, P) -> (B, S) float32."""
  ones = jnp.ones(ids.shape + (1,), jnp.float32)
  return segment_sum(ones, ids, num_segments)[..., 0]


def segment_mean(values, ids, num_segments: int):
  """Mean of ``values`` inside each segment; empty segments give zeros.

  values (B, P, C), ids (B, P) -> means (B, S, C), counts (B, S).
  """
  counts = segment_counts(ids, num_segments)
  sums = segment_sum(values, ids, num_segments)
  return sums / jnp.maximum(counts, 1.0)[..., None].astype(sums.dtype), counts


def batch_valid_mask(ids, num_segments: int, sample_mask=None):
  """(B, S) bool: ``s < max(ids over the whole batch) + 1``, the original's dynamic token count.

  ids: (B, N). sample_mask: optional (B,) bool; only those rows count towards the max (a padded batch's real
  images: the original's short batch has no padding rows to raise its token count)."""
  if sample_mask is not None:
    ids = jnp.where(sample_mask[:, None], ids, 0)
  num_valid = jnp.max(ids) + 1
  valid = jnp.arange(num_segments) < num_valid
  return jnp.broadcast_to(valid[None, :], (ids.shape[0], num_segments))
