"""Level-0 superpixel tokens: conv-stem features and position embeddings averaged inside each superpixel.

Two resolutions, as in the original:

* ``features``: the superpixel map is read at the feature stride (PyTorch legacy 'nearest', i.e.
  ``y[:, ::8, ::8]``) and the (H/8, W/8) features are averaged per id (``cast.py``, ``cast_deit.py``,
  ``cast_seg.py`` pretrain stage).
* ``pixels``: features are bilinearly and the position table bicubically upsampled to the superpixel map's
  full resolution and averaged there (``cast_seg.py`` segmentation stage, ``cast_seg_deit.py``). Upsampling is
  linear, so mean(U f) over a segment equals (W f) with W = segment-averaged interpolation weights; W is
  built by scattering each pixel's 2x2 (bilinear) or 4x4 (bicubic) taps into its segment's row, which never
  materialises the (B, H, W, D) upsampled features.
"""

from __future__ import annotations

import jax.numpy as jnp

from cast_jax.models import resize, segments


def grid_tokens(features, pos_table, superpixels, max_segments: int):
  """Segment means at the feature resolution.

  Args:
    features: (B, h, w, D) conv-stem output.
    pos_table: (h*w, D) position embedding of each feature cell (row-major).
    superpixels: (B, H, W) int ids with H = stride * h.
    max_segments: static number of token slots S.

  Returns:
    tokens (B, S, D) = mean feature + mean position embedding, counts (B, S) feature cells per id, and
    ids (B, h*w) the id of each feature cell.
  """
  batch, h, w, dim = features.shape
  stride = superpixels.shape[1] // h
  if superpixels.shape[1] != stride * h or superpixels.shape[2] != stride * w:
    raise ValueError(f'superpixel map {superpixels.shape[1:]} is not the feature grid {(h, w)} times an integer '
                     'stride; image sides must be multiples of 8.')
  ids = segments.downsample_nearest(superpixels, stride).reshape(batch, h * w)
  feat_mean, counts = segments.segment_mean(features.reshape(batch, h * w, dim), ids, max_segments)
  pos = jnp.broadcast_to(pos_table[None].astype(features.dtype), (batch, h * w, dim))
  pos_mean, _ = segments.segment_mean(pos, ids, max_segments)
  return feat_mean + pos_mean, counts, ids


def _pixel_weight_matrix(superpixels, in_hw, method: str, max_segments: int):
  """(B, S, h*w) matrix W with W @ f = sum over each segment's pixels of the upsampled f."""
  batch, out_h, out_w = superpixels.shape
  idx_h, wt_h = resize.interpolation_taps(in_hw[0], out_h, method)  # (H, th)
  idx_w, wt_w = resize.interpolation_taps(in_hw[1], out_w, method)  # (W, tw)
  # Source cell and weight of every (pixel, tap-pair): (H, W, th*tw), constants.
  src = (idx_h[:, None, :, None] * in_hw[1] + idx_w[None, :, None, :]).reshape(out_h, out_w, -1)
  wts = (wt_h[:, None, :, None] * wt_w[None, :, None, :]).reshape(out_h, out_w, -1)
  num_cells = in_hw[0] * in_hw[1]
  taps = src.shape[-1]
  flat_ids = superpixels[..., None] * num_cells + jnp.asarray(src, jnp.int32)[None]  # (B, H, W, taps)
  values = jnp.broadcast_to(jnp.asarray(wts, jnp.float32)[None], (batch, out_h, out_w, taps))
  summed = segments.segment_sum(values.reshape(batch, -1, 1), flat_ids.reshape(batch, -1),
                                max_segments * num_cells)
  return summed.reshape(batch, max_segments, num_cells)


def pixel_tokens(features, pos_grid, superpixels, max_segments: int):
  """Segment means at the superpixel map's full resolution.

  Args:
    features: (B, h, w, D), bilinearly upsampled (align_corners=False) to the map's size.
    pos_grid: (gh, gw, D) position table, bicubically upsampled (A=-0.75) to the map's size.
    superpixels: (B, H, W) int ids.
    max_segments: static S.

  Returns tokens (B, S, D) and counts (B, S) pixels per id.
  """
  batch, h, w, dim = features.shape
  ids = superpixels.reshape(batch, -1)
  counts = segments.segment_counts(ids, max_segments)
  denom = jnp.maximum(counts, 1.0)[..., None]
  feat_w = _pixel_weight_matrix(superpixels, (h, w), 'bilinear', max_segments)
  feat = jnp.einsum('bsp,bpd->bsd', feat_w, features.reshape(batch, h * w, dim).astype(jnp.float32))
  gh, gw, _ = pos_grid.shape
  pos_w = _pixel_weight_matrix(superpixels, (gh, gw), 'bicubic', max_segments)
  pos = jnp.einsum('bsp,pd->bsd', pos_w, pos_grid.reshape(gh * gw, dim).astype(jnp.float32))
  return ((feat + pos) / denom).astype(features.dtype), counts

