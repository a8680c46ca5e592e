"""``python -m cast_jax.benchmark --accelerator``: the training steps on whatever jax device is present.

For the MoCo-v3 step (``configs/moco_cast_s.py``) and the supervised DeiT step (``configs/deit_cast_s.py``) of
CAST-S at 224 px, in each of ``--dtypes`` (float32, bfloat16: ``config.compute_dtype``, parameters stay float32):

  step        one JSON line per (objective, dtype): the jitted train step on a batch already on the device (one
              real batch of the input pipeline, SEEDS maps, repeated): step_s, images_per_s, XLA's flop count of
              the step (``cost_analysis``), model-FLOPs utilisation = flops / step_s / the device's peak (printed
              with the peak it assumed and where that came from; ``--peak-tflops`` sets it, n/a on an unknown
              device such as a CPU), the program's peak memory by XLA's ``memory_analysis`` and the device's
              peak bytes in use since the process started (``memory_stats``; n/a where the backend keeps none).
  end_to_end  per objective, at ``--end-to-end-dtype``: images/s of the whole loop, the real input pipeline
              (built-in PartWorld at the model's size, ``--workers`` grain processes) feeding the step, with SEEDS
              on the host's cores (the default recipe) and with on-device superpixels
              (``data.superpixels='jax_slic'``, ``data.superpixels_on_device=True``).

The batch: ``--batch`` when given; else, on a device that reports its memory limit, the largest of
``BATCH_CANDIDATES`` that XLA's memory estimate (extrapolated from a compile at a small batch) fits into 85% of
it, stepping down when that still runs out of memory; else 32. ``--tiny`` (CPU CI): a tiny CAST (the :test
configs' model), 64 px, batch 4, 2 timed steps.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Iterator, Optional

import jax
import numpy as np

# Dense (no sparsity) peak TFLOP/s per chip, by dtype of the matmuls. float32 on NVIDIA Ampere and later: XLA's
# default precision runs float32 dots as TF32 on the tensor cores, so TF32 is the peak it can reach; on TPU the
# default precision is one bfloat16 pass. (substring of device_kind, lower case) -> {dtype: (TFLOP/s, basis)}.
KNOWN_PEAKS: tuple[tuple[str, dict[str, tuple[float, str]]], ...] = (
    ('h200', {'bfloat16': (989.4, 'H200 SXM bf16 dense'), 'float32': (494.7, 'H200 SXM TF32 dense')}),
    ('h100 pcie', {'bfloat16': (756.0, 'H100 PCIe bf16 dense'), 'float32': (378.0, 'H100 PCIe TF32 dense')}),
    ('h100', {'bfloat16': (989.4, 'H100 SXM bf16 dense'), 'float32': (494.7, 'H100 SXM TF32 dense')}),
    ('a100', {'bfloat16': (312.0, 'A100 bf16 dense'), 'float32': (156.0, 'A100 TF32 dense')}),
    ('tpu v4', {'bfloat16': (275.0, 'TPU v4 bf16'), 'float32': (275.0, 'TPU v4 bf16 (default f32 precision)')}),
    ('tpu v5 lite', {'bfloat16': (197.0, 'TPU v5e bf16'), 'float32': (197.0, 'TPU v5e bf16 (default f32 precision)')}),
    ('tpu v5e', {'bfloat16': (197.0, 'TPU v5e bf16'), 'float32': (197.0, 'TPU v5e bf16 (default f32 precision)')}),
    ('tpu v5p', {'bfloat16': (459.0, 'TPU v5p bf16'), 'float32': (459.0, 'TPU v5p bf16 (default f32 precision)')}),
)
BATCH_CANDIDATES = (1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32, 16, 8)
PROBE_BATCH = 16
MEMORY_FRACTION = 0.85
OBJECTIVES = ('moco', 'supervised')


def device_peak(device_kind: str, dtype: str, override_tflops: Optional[float] = None) -> tuple[Optional[float], str]:
  """(peak TFLOP/s, what it is) for ``dtype`` on a device of this kind; (None, 'n/a: ...') when unknown."""
  if override_tflops:
    return float(override_tflops), 'given by --peak-tflops'
  kind = device_kind.lower()
  for key, peaks in KNOWN_PEAKS:
    if key in kind:
      return peaks[dtype]
  return None, f'n/a: no known peak for {device_kind!r}; pass --peak-tflops'


def mfu(flops: Optional[float], step_s: float, peak_tflops: Optional[float]) -> Optional[float]:
  """Model-FLOPs utilisation in percent: flops per step / step time / peak (None when either is unknown)."""
  if not flops or not peak_tflops:
    return None
  return round(100.0 * flops / step_s / (peak_tflops * 1e12), 2)


def choose_batch(probe_batch: int, probe_bytes: float, fixed_bytes: float, limit_bytes: float,
                 candidates=BATCH_CANDIDATES, fraction: float = MEMORY_FRACTION) -> list[int]:
  """Candidate batches, largest first, whose memory estimate fits: the step's peak grows linearly with the batch
  from ``fixed_bytes`` (parameters, optimizer state) at batch 0 through ``probe_bytes`` at ``probe_batch``.
  Always returns at least the smallest candidate (the caller steps down on an out-of-memory error)."""
  per_example = max(probe_bytes - fixed_bytes, 0.0) / probe_batch
  fitting = [b for b in sorted(candidates, reverse=True)
             if fixed_bytes + per_example * b <= fraction * limit_bytes]
  return fitting or [min(candidates)]


def bench_config(objective: str, tiny: bool, dtype: str, batch: int, on_device: bool = False, workers: int = 0):
  """The training config the measurement runs: configs/moco_cast_s.py or deit_cast_s.py (``shrink_for_test``'s
  tiny model at 64 px when ``tiny``) on the built-in PartWorld."""
  from cast_jax.train import config_lib  # pylint: disable=import-outside-toplevel

  c = config_lib.moco_defaults() if objective == 'moco' else config_lib.supervised_defaults()
  if tiny:
    c = config_lib.shrink_for_test(c)
    if objective == 'supervised':
      c.data.superpixels = 'deit'
  size = c.model.image_size
  c.data.update(name='partworld', source_image_size=min(size, 224), num_train_examples=max(4 * batch, 256),
                num_eval_examples=16, num_workers=workers, image_size=size)
  if on_device:
    c.data.superpixels = 'jax_slic'
    c.data.superpixels_on_device = True
  c.batch_size = batch
  c.compute_dtype = dtype
  c.steps_per_epoch, c.total_steps, c.num_epochs, c.warmup_epochs = 1000, 1000, 1, 0
  c.fast_compile = tiny  # CPU CI: several times faster compiles, same program
  return c


@dataclasses.dataclass
class Built:
  """One objective's task, a fresh state and the step compiled for a device batch of the task's keys."""

  config: Any
  task: Any
  state: Any
  compiled: Any  # the AOT-compiled train step (its cost and memory analyses at hand)
  compile_s: float
  device_batch: dict  # one batch of the pipeline, on the device


class StepBuilder:
  """Builds one objective's steps, sharing what does not depend on the dtype, batch or superpixel path: the
  initial variables (parameters are float32 in every compute dtype) and the compiled ``init_state``. Compiles
  dominate a CPU run, so each program is compiled once."""

  def __init__(self, name: str, tiny: bool):
    self.name, self.tiny = name, tiny
    self._variables = None
    self._init_state = None
    self._built: dict[tuple, Built] = {}

  def build(self, dtype: str, batch: int, on_device: bool = False, workers: int = 0) -> Built:
    """The (cached) compiled step; a new state each call (a step donates the state it is given)."""
    from cast_jax.models.variants import build_model, compute_dtype  # pylint: disable=import-outside-toplevel
    from cast_jax.train import loop, schedules, sharding, tasks  # pylint: disable=import-outside-toplevel

    key = (dtype, batch, on_device)
    config = bench_config(self.name, self.tiny, dtype, batch, on_device=on_device, workers=workers)
    spec = loop.model_spec(config)
    model = build_model(spec, compute_dtype(dtype))
    if self._variables is None:
      self._variables = loop.initial_variables(config, spec, model)
    # The task (no compile) is built anew: its iterator reads this call's config (its worker count).
    schedule = schedules.Schedule.from_config(config, config.data.num_train_examples)
    task = tasks.build_task(config, spec, model, self._variables['params'], schedule)
    if self._init_state is None:
      self._init_state = loop._jit(task.objective.init_state, config)  # pylint: disable=protected-access
    state = self._init_state(self._variables, jax.random.PRNGKey(0))
    if key in self._built:
      return dataclasses.replace(self._built[key], config=config, task=task, state=state)
    host = next(task.make_iterator(batch, 0, 1))
    device_batch = sharding.global_batch({k: host[k] for k in task.batch_keys}, sharding.make_mesh(1))
    step = loop._jit(task.objective.train_step, config, donate_argnums=(0,))  # pylint: disable=protected-access
    start = time.perf_counter()
    compiled = step.lower(state, device_batch).compile()
    built = Built(config, task, state, compiled, time.perf_counter() - start, device_batch)
    self._built[key] = dataclasses.replace(built, state=None)  # the cache holds no state: device memory
    return built


def _memory(compiled) -> dict:
  out = {'program_peak_mb': 'n/a', 'device_peak_mb': 'n/a'}
  try:
    analysis = compiled.memory_analysis()
    out['program_peak_mb'] = round(analysis.peak_memory_in_bytes / 2**20, 1)
  except Exception:  # pylint: disable=broad-except  # backends without the analysis
    pass
  stats = _memory_stats()
  if 'peak_bytes_in_use' in stats:
    out['device_peak_mb'] = round(stats['peak_bytes_in_use'] / 2**20, 1)
  return out


def _memory_stats() -> dict:
  try:
    return jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # backends without memory statistics
    return {}


def _flops(compiled) -> Optional[float]:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return (analysis or {}).get('flops') or None


def _is_oom(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


def measure_step(objective: StepBuilder, dtype: str, batch: int, args) -> dict:
  """The step on a device-resident batch (one real batch of the pipeline, repeated): one warm-up step, then
  ``repeats`` timed steps."""
  built = objective.build(dtype, batch)
  state, metrics = built.compiled(built.state, built.device_batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.repeats):
    state, metrics = built.compiled(state, built.device_batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / args.repeats
  flops = _flops(built.compiled)
  peak, basis = device_peak(_device_kind(), dtype, args.peak_tflops)
  return {'name': 'accelerator_step', 'objective': objective.name, 'model': _model_name(built.config),
          'dtype': dtype, 'batch': batch, 'image_size': built.config.model.image_size,
          'compile_s': round(built.compile_s, 2), 'step_s': round(step_s, 4), 'images_per_s': round(batch / step_s, 2),
          'tflops_per_step': float(f'{flops / 1e12:.4g}') if flops else 'n/a',
          'mfu_percent': mfu(flops, step_s, peak) or 'n/a', 'peak_tflops_assumed': peak or 'n/a',
          'peak_basis': basis, 'loss_finite': bool(np.isfinite(float(metrics['loss']))), 'repeats': args.repeats,
          **_memory(built.compiled), **_environment()}


def measure_end_to_end(objective: StepBuilder, dtype: str, batch: int, on_device: bool, args) -> dict:
  """Images/s of pipeline + step together: ``--end-to-end-steps`` timed steps after two warm-up steps (the
  workers' start-up and what they buffered meanwhile)."""
  from cast_jax.train import sharding  # pylint: disable=import-outside-toplevel

  built = objective.build(dtype, batch, on_device=on_device, workers=args.workers)
  mesh = sharding.make_mesh(1)
  iterator = built.task.make_iterator(batch, 0, 1)
  state = built.state

  def one_step(state):
    host = next(iterator)
    return built.compiled(state, sharding.global_batch({k: host[k] for k in built.task.batch_keys}, mesh))

  for _ in range(2):
    state, metrics = one_step(state)
  jax.block_until_ready(metrics)
  steps = args.end_to_end_steps
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = one_step(state)  # dispatched asynchronously: the next batch is prepared meanwhile
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  superpixels = ('jax_slic on device' if on_device else
                 f'SEEDS on host ({built.config.data.superpixels} preset, {args.workers} worker processes)')
  return {'name': 'accelerator_end_to_end', 'objective': objective.name, 'model': _model_name(built.config),
          'dtype': dtype, 'batch': batch, 'superpixels': superpixels, 'workers': args.workers, 'steps': steps,
          'images_per_s': round(steps * batch / seconds, 2), 'compile_s': round(built.compile_s, 2),
          **_environment()}


def _model_name(config) -> str:
  return f'{config.model.kind}_{config.model.variant}' + ('_tiny' if config.fast_compile else '')


def _device_kind() -> str:
  device = jax.devices()[0]
  return getattr(device, 'device_kind', str(device))


def _environment() -> dict:
  return {'backend': jax.default_backend(), 'device': _device_kind(), 'num_devices': jax.device_count(),
          'jax': jax.__version__}


def batches_to_try(objective: StepBuilder, dtype: str, args) -> list[int]:
  """``--batch``; 4 in ``--tiny``; on a device reporting its memory limit, the fitting candidates (largest
  first, from XLA's memory estimate at ``PROBE_BATCH``); else 32."""
  if args.batch:
    return [args.batch]
  if args.tiny:
    return [4]
  limit = _memory_stats().get('bytes_limit')
  if not limit:
    return [32]
  built = objective.build(dtype, PROBE_BATCH)
  probe = built.compiled.memory_analysis()
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(built.state))
  return choose_batch(PROBE_BATCH, probe.peak_memory_in_bytes, state_bytes, limit)


def run(args) -> Iterator[dict]:
  """Every measurement of ``--accelerator``, one dict each as it is made (``benchmark.main`` prints JSON lines)."""
  for name in args.objectives:
    objective = StepBuilder(name, args.tiny)
    chosen = None
    for dtype in args.dtypes:
      for batch in batches_to_try(objective, dtype, args):
        try:
          result = measure_step(objective, dtype, batch, args)
        except Exception as error:  # pylint: disable=broad-except
          if not _is_oom(error):
            raise
          result = {'name': 'accelerator_step', 'objective': name, 'dtype': dtype, 'batch': batch,
                    'out_of_memory': True}
        yield result
        if result.get('out_of_memory'):
          continue
        if dtype == args.end_to_end_dtype:
          chosen = batch
        break
    if args.end_to_end_steps > 0 and chosen:
      for on_device in (False, True):
        yield measure_end_to_end(objective, args.end_to_end_dtype, chosen, on_device, args)


def add_arguments(parser) -> None:
  group = parser.add_argument_group('--accelerator')
  group.add_argument('--accelerator', action='store_true', help='the train-step benchmark on the jax device')
  group.add_argument('--tiny', action='store_true', help='with --accelerator: tiny model, 64 px, batch 4 (CI)')
  group.add_argument('--objectives', type=lambda s: tuple(s.split(',')), default=OBJECTIVES,
                     help='comma-separated subset of moco,supervised')
  group.add_argument('--dtypes', type=lambda s: tuple(s.split(',')), default=('float32', 'bfloat16'),
                     help='comma-separated compute dtypes')
  group.add_argument('--end-to-end-dtype', default='bfloat16', help='dtype of the end-to-end measurement')
  group.add_argument('--end-to-end-steps', type=int, default=None,
                     help='timed end-to-end steps (default 10, 2 with --tiny; 0 skips them)')
  group.add_argument('--workers', type=int, default=None,
                     help='grain worker processes of the end-to-end pipeline (default: all cores, 0 with --tiny)')
  group.add_argument('--peak-tflops', type=float, default=None,
                     help="the device's peak TFLOP/s for the utilisation (default: a table of known devices)")


def finish_arguments(args) -> None:
  """Defaults that depend on --tiny, and checks."""
  unknown = sorted(set(args.objectives) - set(OBJECTIVES))
  if unknown:
    raise SystemExit(f'--objectives: unknown {unknown}; choose from {list(OBJECTIVES)}')
  unknown = sorted(set(args.dtypes) - {'float32', 'bfloat16'})
  if unknown:
    raise SystemExit(f'--dtypes: unknown {unknown}; choose from float32, bfloat16')
  if args.end_to_end_dtype not in args.dtypes:
    args.end_to_end_dtype = args.dtypes[-1]
  if args.end_to_end_steps is None:
    args.end_to_end_steps = 2 if args.tiny else 10
  if args.workers is None:
    args.workers = 0 if args.tiny else (os.cpu_count() or 1)
  if args.tiny and args.repeats > 2:
    args.repeats = 2
