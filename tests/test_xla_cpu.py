"""cast_jax's XLA CPU compiler options: convolutions kept from YNNPACK where that was measured faster, the user's
XLA_FLAGS respected, fast compilation for tests."""

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest
from jax import lax

from cast_jax import xla_cpu

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def _inputs():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.standard_normal((2, 16, 16, 24)), jnp.float32),
          jnp.asarray(rng.standard_normal((3, 3, 24, 32)) * 0.2, jnp.float32))


@pytest.fixture
def fresh_probe():
  xla_cpu.ynnpack_convolution_option.cache_clear()
  yield
  xla_cpu.ynnpack_convolution_option.cache_clear()


def test_convolutions_leave_ynnpack_exactly_where_xla_gives_them_to_it(fresh_probe):
  x, w = _inputs()
  default_text = jax.jit(_conv).lower(x, w).compile().as_text()
  ours = xla_cpu.jit(_conv)
  our_text = ours.lower(x, w).compile().as_text()
  assert 'ynn_fusion' not in our_text and 'convolution(' in our_text
  if jaxlib.__version__.startswith('0.10.') and 'ynn_fusion' in default_text:
    # jax 0.10's XLA CPU: the option is set, and it keeps the other two default fusion types.
    assert xla_cpu.project_options() == xla_cpu.WITHOUT_YNNPACK_CONVOLUTIONS
  else:
    assert xla_cpu.project_options() is None
  # Same convolution, other code: float32 rounding only.
  np.testing.assert_allclose(np.asarray(ours(x, w)), np.asarray(jax.jit(_conv)(x, w)), rtol=1e-5, atol=1e-5)


def test_xla_defaults_block_and_other_backends_get_no_option(fresh_probe):
  with xla_cpu.xla_defaults():
    assert xla_cpu.project_options() is None
    assert xla_cpu.project_options(fast_compile=True) == xla_cpu.accepted(xla_cpu.FAST_COMPILE)
  assert xla_cpu.project_options(backend='gpu') is None
  assert xla_cpu.project_options(fast_compile=True, backend='tpu') is None


def test_a_user_setting_the_fusion_types_in_xla_flags_wins(fresh_probe, monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE')
  assert xla_cpu.ynnpack_convolution_option() == {}
  assert xla_cpu.project_options() is None


def test_jit_adds_given_options_over_the_project_ones_and_compiles(fresh_probe):
  x, w = _inputs()
  given = {'xla_backend_optimization_level': 0}
  jitted = xla_cpu.jit(_conv, compiler_options=given)
  np.testing.assert_allclose(np.asarray(jitted(x, w)), np.asarray(jax.jit(_conv)(x, w)), rtol=1e-5, atol=1e-5)
  fast = xla_cpu.project_options(fast_compile=True)
  assert set(xla_cpu.accepted(xla_cpu.FAST_COMPILE)) <= set(fast)
  assert {k: v for k, v in fast.items() if k in xla_cpu.WITHOUT_YNNPACK_CONVOLUTIONS} == \
      (xla_cpu.project_options() or {})
