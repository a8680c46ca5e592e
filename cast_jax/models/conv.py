"""A drop-in ``lax.conv_general_dilated`` whose kernel gradient is computed as matrix products.

Why: on XLA's CPU backend (jax 0.10, which hands convolutions to YNNPACK) the gradient of a convolution with
respect to its kernel is several times slower than the same sums written as matrix products (batch 32 on the
conv stem's shapes, ``python -m cast_jax.benchmark --only conv_grad``: 112x112 48->96 stride 2, 447 ms against
184 ms; the 1x1 384->384 conv at 28x28, 311 ms against 75 ms). The conv stem runs at full resolution, so in
CAST's training steps this gradient was a large share of the backward pass (the MoCo step at batch 32: 1.10x
faster with this module, README "Speed").

What changes: only the kernel's cotangent. The forward and the input's cotangent are XLA's own (bit for bit what
``lax.conv_general_dilated`` gives); the kernel's cotangent is the same sum in another order (float32 rounding).

For a kernel of size (kh, kw) with stride s and explicit padding, output pixel (oy, ox) reads the padded input at
(oy * s + i, ox * s + j) for tap (i, j), so

    dkernel[i, j] = sum over (n, oy, ox) of  x_padded[n, oy * s + i, ox * s + j, :]^T  dy[n, oy, ox, :]

which is one (C_in, N) @ (N, C_out) product per tap, N = batch * out_height * out_width.

Only the case the models use takes this path: 2-D, NHWC input, HWIO kernel, no dilation, one feature group
(padding explicit or 'SAME' / 'VALID'). Anything else goes to ``lax.conv_general_dilated`` unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))

# Read when a function is traced (so a jitted function keeps what it was traced with). Only the benchmark changes
# it, to time XLA's own kernel gradient beside this module's in one process (``kernel_gradient``).
_KERNEL_GRADIENT = ['matmul']


@contextlib.contextmanager
def kernel_gradient(kind: str) -> Iterator[None]:
  """Within the block, trace convolutions with ``kind`` = 'matmul' (this module's) or 'xla' (XLA's own)
  kernel gradient. For side-by-side timing (``python -m cast_jax.benchmark --conv-kernel-grad xla``)."""
  if kind not in ('matmul', 'xla'):
    raise ValueError(f"kernel gradient {kind!r}: choose 'matmul' or 'xla'")
  previous = _KERNEL_GRADIENT[0]
  _KERNEL_GRADIENT[0] = kind
  try:
    yield
  finally:
    _KERNEL_GRADIENT[0] = previous


def _xla_conv(lhs, rhs, strides, padding, precision):
  return lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_nhwc(lhs, rhs, strides, padding, precision):
  return _xla_conv(lhs, rhs, strides, padding, precision)


def _conv_nhwc_fwd(lhs, rhs, strides, padding, precision):
  return _xla_conv(lhs, rhs, strides, padding, precision), (lhs, rhs)


def _conv_nhwc_bwd(strides, padding, precision, residuals, dy):
  """dy: (B, Ho, Wo, C_out). Returns (d_lhs (B, H, W, C_in), d_rhs (kh, kw, C_in, C_out))."""
  lhs, rhs = residuals
  _, input_vjp = jax.vjp(lambda x: _xla_conv(x, rhs, strides, padding, precision), lhs)
  (d_lhs,) = input_vjp(dy)
  kh, kw, c_in, c_out = rhs.shape
  _, ho, wo, _ = dy.shape
  sy, sx = strides
  padded = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  dy_rows = dy.reshape(-1, c_out)
  taps = []
  for i in range(kh):
    for j in range(kw):
      # The input pixels tap (i, j) met, one row per output pixel: (B*Ho*Wo, C_in).
      window = lax.slice(padded, (0, i, j, 0), (padded.shape[0], i + sy * (ho - 1) + 1, j + sx * (wo - 1) + 1, c_in),
                         (1, sy, sx, 1))
      taps.append(jnp.matmul(window.reshape(-1, c_in).T, dy_rows, precision=precision,
                             preferred_element_type=jnp.float32))
  d_rhs = jnp.stack(taps).reshape(kh, kw, c_in, c_out).astype(rhs.dtype)
  return d_lhs, d_rhs


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
  if ndim != 4 or dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == _NHWC
  return tuple(dimension_numbers) == ('NHWC', 'HWIO', 'NHWC')


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, precision=None, **kwargs):
  """``lax.conv_general_dilated``'s signature (what ``flax.linen.Conv(conv_general_dilated=...)`` calls).

  lhs: (B, H, W, C_in); rhs: (kh, kw, C_in, C_out); padding: ((top, bottom), (left, right)). Returns
  (B, Ho, Wo, C_out) exactly as ``lax.conv_general_dilated`` does; only the kernel's gradient is computed
  differently (module docstring).
  """
  plain = (lhs_dilation is None or all(d == 1 for d in lhs_dilation)) and \
          (rhs_dilation is None or all(d == 1 for d in rhs_dilation))
  if (_KERNEL_GRADIENT[0] == 'matmul' and plain and feature_group_count == 1 and not kwargs
      and _is_nhwc(dimension_numbers, lhs.ndim)):
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):  # flax passes 'SAME' for its default padding (the 1x1 convs)
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    padding = tuple((int(low), int(high)) for low, high in padding)
    return _conv_nhwc(lhs, rhs, strides, padding, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, precision=precision, **kwargs)
