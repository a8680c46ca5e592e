"""The XLA CPU compiler options cast_jax compiles its model functions with, and why.

**Convolutions without YNNPACK.** XLA CPU in jax 0.10 hands float32 convolutions to YNNPACK
(``xla_cpu_experimental_ynn_fusion_type`` defaults to INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION and REDUCE, read from
a compilation's ``--xla_dump_to`` options). On the conv stem's shapes XLA's own convolutions are much faster here
(batch 32, 224 px, 2-core AVX-512 CPU, README "Speed"): the stem's forward 624 ms against 369 ms, the CAST-S eval
forward 17.2-18.0 against 20.9-21.3 images/s, the DeiT step 5.11 against 5.39 images/s (interleaved). Later XLA
sources stop sending float32 convolutions to YNNPACK altogether, so this only anticipates them. The option keeps
the other two defaults; it is used only where

* the backend is CPU,
* a probe shows YNNPACK taking a float32 convolution (a tiny one, compiled once per process),
* this jaxlib is one whose defaults were read (0.10.x; elsewhere the value might drop other defaults), and
* ``XLA_FLAGS`` does not set the option itself (the user's choice wins).

**Fast compilation** (``fast_compile=True``, the tests and ``:test`` configs): XLA's optimisation level 0 and no
fusion emitters compile a tiny CAST several times faster; the program is the same, its machine code less
optimised.

**One device per core** (``use_cpu_devices``, the trainer's ``cpu_devices`` and the benchmark's
``--cpu-devices``): XLA CPU runs some ops on one core only (batched matmuls, attention's (B, H, N, N) products
among them), so a 2-core host idles a core through much of a step. Presented as two devices, the host runs the
step data parallel, one half-batch per core, and the single-threaded ops of the two halves overlap
(README "Speed", side by side on a 2-core CPU: the eval forward 1.27x, the DeiT step 1.12x). The program is the
same; only the float32 summation order of the cross-device reductions (batch statistics, gradients) differs.

``jit`` is ``jax.jit`` with these options; ``xla_defaults()`` turns the first off within a block (the benchmark
times both in one process). Options this XLA does not know are dropped (``accepted``), never passed on: an unknown
option fails every compilation it reaches.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Iterator, Mapping, Optional

import jax
import jaxlib

FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_cpu_use_fusion_emitters': False}

YNN_FUSION_TYPE = 'xla_cpu_experimental_ynn_fusion_type'
# jaxlib 0.10's default list without LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
WITHOUT_YNNPACK_CONVOLUTIONS = {YNN_FUSION_TYPE: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
_DEFAULTS_READ_FOR = ('0.10.',)  # jaxlib versions whose default fusion types are the list above plus convolutions

_KEEP_XLA_DEFAULTS = [False]  # read when ``jit``/``project_options`` is called (``xla_defaults``)


@contextlib.contextmanager
def xla_defaults() -> Iterator[None]:
  """Within the block, ``project_options`` leaves XLA's convolution default alone (YNNPACK where XLA uses it)."""
  previous = _KEEP_XLA_DEFAULTS[0]
  _KEEP_XLA_DEFAULTS[0] = True
  try:
    yield
  finally:
    _KEEP_XLA_DEFAULTS[0] = previous


def accepted(candidates: Mapping[str, Any]) -> dict[str, Any]:
  """The subset of ``candidates`` this jax/XLA accepts, found by compiling a tiny function with each option.

  XLA's options come and go between versions (``xla_cpu_use_fusion_emitters`` is refused by the XLA of jax 0.12:
  'No such compile option'); an unknown one fails the compilation of every function it is passed to.
  """
  return dict(_accepted(tuple(sorted(candidates.items()))))


@functools.lru_cache(maxsize=None)
def _accepted(candidates: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
  kept = []
  for name, value in candidates:
    try:
      jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(1.0).compile()
    except Exception:  # pylint: disable=broad-except  # XLA raises JaxRuntimeError, older jax TypeError
      continue
    kept.append((name, value))
  return tuple(kept)


def _probe_convolution(options: Optional[dict]) -> bool:
  """Whether XLA puts a small float32 NHWC convolution into a YNNPACK fusion under ``options`` (compiled for
  jax's default backend, which ``project_options`` has checked is the CPU)."""
  x = jax.ShapeDtypeStruct((1, 8, 8, 32), jax.numpy.float32)
  w = jax.ShapeDtypeStruct((3, 3, 32, 32), jax.numpy.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  text = jax.jit(conv).lower(x, w).compile(compiler_options=options).as_text()
  return 'ynn_fusion' in text


@functools.lru_cache(maxsize=None)
def ynnpack_convolution_option() -> dict[str, str]:
  """``WITHOUT_YNNPACK_CONVOLUTIONS`` where it applies (module docstring), else {}. Decided once per process."""
  if not jaxlib.__version__.startswith(_DEFAULTS_READ_FOR) or YNN_FUSION_TYPE in os.environ.get('XLA_FLAGS', ''):
    return {}
  try:
    if not _probe_convolution(None):
      return {}
    option = accepted(WITHOUT_YNNPACK_CONVOLUTIONS)
    if not option or _probe_convolution(option):  # refused, or it did not take the convolution away from YNNPACK
      return {}
  except Exception:  # pylint: disable=broad-except  # no CPU backend, or a jax without per-function options
    return {}
  return option


def use_cpu_devices(count: int) -> None:
  """Present the host's CPU as ``count`` jax devices (``jax_num_cpu_devices``); 1 keeps jax's default.

  Must run before jax initialises its backends (before the first array or ``jax.devices()``). Only the CPU
  backend is affected: on a GPU or TPU host the accelerator stays the default backend.
  """
  if count < 1:
    raise ValueError(f'cpu_devices must be >= 1; got {count}. Use 1 for a single CPU device, or the number of '
                     'cores (os.cpu_count()) for one device per core.')
  if count == 1:
    return
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError as error:  # backends already initialised
    raise RuntimeError(f'cpu_devices={count} must be set before jax starts its backends (before the first jax '
                       'array or jax.devices() in this process); set it at the start of the program.') from error


def project_options(fast_compile: bool = False, backend: Optional[str] = None) -> Optional[dict[str, Any]]:
  """The options cast_jax compiles with on ``backend`` (default: jax's default backend); None when there are none.

  Call it where the function is jitted (not at import: it initialises jax's backends).
  """
  if (backend or jax.default_backend()) != 'cpu':
    return None
  options = {}
  if fast_compile:
    options.update(accepted(FAST_COMPILE))
  if not _KEEP_XLA_DEFAULTS[0]:
    options.update(ynnpack_convolution_option())
  return options or None


def jit(fn, *, fast_compile: bool = False, compiler_options: Optional[Mapping[str, Any]] = None, **kwargs):
  """``jax.jit(fn, **kwargs)`` compiled with ``project_options(fast_compile)``; options passed in
  ``compiler_options`` are added over them."""
  options = {**(project_options(fast_compile) or {}), **(compiler_options or {})}
  return jax.jit(fn, compiler_options=options or None, **kwargs)

