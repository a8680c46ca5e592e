"""PyTorch-exact separable resizing as small constant matrices, and sin-cos position tables.

``torch.nn.functional.interpolate(..., align_corners=False)`` for 'bilinear' and 'bicubic' (A = -0.75, source
indices clamped at the border) is separable: out = R_h @ x @ R_w^T. ``jax.image.resize('bicubic')`` uses
A = -0.5 and renormalises at the edges, so it does not match; these matrices do
(docs/original_behaviour.md#pytorch-exact-resizes). The matrices are built in numpy at trace time: shapes are static.
"""

from __future__ import annotations

import functools

import numpy as np

BICUBIC_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Keys cubic convolution weights for taps at offsets -1, 0, 1, 2 from floor(src). t: (n,) -> (n, 4)."""
  a = BICUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def interpolation_taps(in_size: int, out_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
  """Source indices and weights of every output position along one axis.

  Returns (indices, weights), each (out_size, taps) with taps 2 (bilinear) or 4 (bicubic); indices are
  clamped into [0, in_size), so border taps may repeat (their weights then add up, as in PyTorch).
  """
  out = np.arange(out_size, dtype=np.float64)
  src = (out + 0.5) * (in_size / out_size) - 0.5
  if method == 'bilinear':
    src = np.maximum(src, 0.0)  # PyTorch clamps negative source coordinates for linear modes
    lo = np.floor(src).astype(np.int64)
    lo = np.minimum(lo, in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    t = src - lo
    indices = np.stack([lo, hi], axis=-1)
    weights = np.stack([1.0 - t, t], axis=-1)
  elif method == 'bicubic':
    lo = np.floor(src).astype(np.int64)
    t = src - lo
    indices = np.clip(lo[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    weights = _cubic_weights(t)
  else:
    raise ValueError(f"unknown interpolation method {method!r}; use 'bilinear' or 'bicubic'")
  return indices, weights


@functools.lru_cache(maxsize=64)
def interpolation_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
  """Dense (out_size, in_size) float64 matrix R with resized = R @ x along that axis."""
  indices, weights = interpolation_taps(in_size, out_size, method)
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.repeat(np.arange(out_size), indices.shape[1]), indices.reshape(-1)), weights.reshape(-1))
  return matrix


def resize_2d(x, out_hw: tuple[int, int], method: str):
  """Resizes (B, h, w, C) to (B, H, W, C) exactly as PyTorch's interpolate(align_corners=False)."""
  import jax.numpy as jnp  # local: keep this module importable without initialising jax

  rh = jnp.asarray(interpolation_matrix(x.shape[1], out_hw[0], method), jnp.float32)
  rw = jnp.asarray(interpolation_matrix(x.shape[2], out_hw[1], method), jnp.float32)
  return jnp.einsum('Hh,bhwc,Ww->bHWc', rh, x, rw)


def sincos_position_table(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
  """MoCo-v3's fixed 2-D sin-cos table, (grid_h * grid_w, dim), row-major cells.

  Cell (r, c) gets [sin(r w), cos(r w), sin(c w), cos(c w)] with w_d = temperature^(-d / (dim / 4)).
  """
  if dim % 4:
    raise ValueError(f'sin-cos position embedding needs a dim divisible by 4; got {dim}')
  quarter = dim // 4
  omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing='ij')
  out_r = rows.reshape(-1, 1) * omega[None]
  out_c = cols.reshape(-1, 1) * omega[None]
  return np.concatenate([np.sin(out_r), np.cos(out_r), np.sin(out_c), np.cos(out_c)], axis=1).astype(np.float32)
