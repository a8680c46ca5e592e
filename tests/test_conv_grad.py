"""cast_jax.models.conv: XLA's convolution with the kernel gradient written as matrix products.

The forward and the input gradient must be XLA's own, bit for bit; the kernel gradient the same sum in another
order, so equal to float32 rounding (relative to the gradient's size)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cast_jax.models import conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _loss(conv_fn, x, w, strides, padding):
  y = conv_fn(x, w, strides, padding, dimension_numbers=NHWC)
  return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1], dtype=y.dtype))


@pytest.mark.parametrize('kernel,stride,padding,size', [
    (3, 2, ((1, 1), (1, 1)), (9, 10)),  # the conv stem's stride-2 layers, odd and even sides
    (3, 1, ((1, 1), (1, 1)), (8, 8)),  # its stride-1 layer
    (1, 1, ((0, 0), (0, 0)), (7, 5)),  # its 1x1 projection and SPML's classifier
    (3, 2, ((0, 1), (2, 0)), (10, 11)),  # asymmetric padding
    (2, 3, ((0, 0), (0, 0)), (11, 8)),  # a stride that skips input pixels
])
def test_gradients_match_xla_under_jit(kernel, stride, padding, size):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, *size, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 5, 7)), jnp.float32)
  strides = (stride, stride)
  want = jax.jit(jax.value_and_grad(lambda x, w: _loss(lax.conv_general_dilated, x, w, strides, padding),
                                   argnums=(0, 1)))(x, w)
  got = jax.jit(jax.value_and_grad(lambda x, w: _loss(conv.conv_general_dilated, x, w, strides, padding),
                                  argnums=(0, 1)))(x, w)
  assert float(got[0]) == float(want[0])  # the forward is XLA's conv itself
  np.testing.assert_array_equal(got[1][0], want[1][0])  # so is the input's gradient
  scale = float(jnp.max(jnp.abs(want[1][1])))
  np.testing.assert_allclose(got[1][1], want[1][1], rtol=0, atol=1e-5 * scale)


def test_kernel_gradient_is_computed_by_the_new_path():
  """Guards against the fallback silently taking every call: a wrong kernel gradient must show."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  grad_w = jax.grad(lambda w: _loss(conv.conv_general_dilated, x, w, (2, 2), ((1, 1), (1, 1))))(w)
  # The same sum written out by hand: tap (i, j) of output (oy, ox) reads padded input (2 oy + i, 2 ox + j).
  y = lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC)
  dy = np.cos(np.asarray(y)) * np.arange(4, dtype=np.float32)
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((3, 3, 3, 4), np.float64)
  for i in range(3):
    for j in range(3):
      window = padded[:, i:i + 5:2, j:j + 5:2, :]
      want[i, j] = np.einsum('nhwc,nhwo->co', window, dy)
  np.testing.assert_allclose(grad_w, want, rtol=1e-5, atol=1e-5)


def test_other_layouts_fall_back_to_xla():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 3, 8, 8)), jnp.float32)  # NCHW
  w = jnp.asarray(rng.standard_normal((4, 3, 3, 3)), jnp.float32)  # OIHW
  args = ((1, 1), ((1, 1), (1, 1)))
  want = jax.grad(lambda w: jnp.sum(lax.conv_general_dilated(x, w, *args) ** 2))(w)
  got = jax.grad(lambda w: jnp.sum(conv.conv_general_dilated(x, w, *args) ** 2))(w)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('padding,kernel,stride', [('SAME', 1, 1), ('SAME', 3, 2), ('VALID', 3, 2)])
def test_string_padding_takes_the_matmul_path(padding, kernel, stride):
  """flax's Conv passes 'SAME' for its default padding (the stem's 1x1 projection): same forward and input
  gradient as XLA's, and a kernel gradient that differs from XLA's only by rounding."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 9, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 4, 6)), jnp.float32)
  grad = lambda fn: jax.jit(jax.value_and_grad(lambda x, w: _loss(fn, x, w, (stride, stride), padding),
                                               argnums=(0, 1)))(x, w)
  (want_value, (want_x, want_w)), (value, (got_x, got_w)) = grad(lax.conv_general_dilated), \
      grad(conv.conv_general_dilated)
  assert float(value) == float(want_value)
  np.testing.assert_array_equal(got_x, want_x)
  np.testing.assert_allclose(got_w, want_w, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want_w))))


def test_flax_conv_with_bfloat16_compute():
  """As the models use it: flax's Conv (float32 parameters, bfloat16 compute) gets float32 kernel gradients
  close to XLA's."""
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 12, 12, 6)), jnp.float32)
  grads = {}
  for name, fn in (('xla', lax.conv_general_dilated), ('matmul', conv.conv_general_dilated)):
    layer = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=jnp.bfloat16,
                    conv_general_dilated=fn)
    params = layer.init(jax.random.PRNGKey(0), x)
    grads[name] = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(p, x).astype(jnp.float32) ** 2)))(params)
  kernel = grads['matmul']['params']['kernel']
  assert kernel.dtype == jnp.float32
  want = grads['xla']['params']['kernel']
  np.testing.assert_allclose(kernel, want, rtol=0, atol=2e-2 * float(jnp.max(jnp.abs(want))))


def test_kernel_gradient_switch_traces_xlas_own_gradient_and_refuses_unknown_kinds():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  args = ((2, 2), ((1, 1), (1, 1)))
  want = jax.grad(lambda w: _loss(lax.conv_general_dilated, x, w, *args))(w)
  with conv.kernel_gradient('xla'):
    xla = jax.jit(jax.grad(lambda w: _loss(conv.conv_general_dilated, x, w, *args)))(w)
  np.testing.assert_array_equal(xla, want)  # exactly XLA's, not merely close
  matmul = jax.jit(jax.grad(lambda w: _loss(conv.conv_general_dilated, x, w, *args)))(w)  # the default again
  assert not np.array_equal(matmul, want)  # another summation order: the switch really changed the path
  np.testing.assert_allclose(matmul, want, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want))))
  with pytest.raises(ValueError, match="choose 'matmul' or 'xla'"):
    with conv.kernel_gradient('cudnn'):
      pass
