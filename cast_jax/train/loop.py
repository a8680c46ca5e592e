"""``train_and_evaluate(config, workdir)``: the whole training job, called by ``cast_jax.main`` and notebooks.

One jitted step over a device mesh; the state (parameters, optimizer, momentum encoder, step, RNG) and the
data iterator's position are checkpointed together, so a restarted job continues exactly where the last
checkpoint left it. Process 0 owns the run folder (``cast_jax.run_folder``; a second process writing the same
workdir is refused) and writes metrics (metrics.jsonl, TensorBoard; each logged value is the mean over the steps
since the previous log), pictures, the parameter table and the config. ``config.profile`` traces a few steps.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from cast_jax.data.pipeline import summarize_skips
from cast_jax.models.variants import ModelSpec, build_model, compute_dtype
from cast_jax.run_folder import PARAMETERS, RunFolder
from cast_jax.train import checkpoint, distributed, evaluation, init_from, inputs, optim, sharding, tasks
from cast_jax.train.logged_metrics import IntervalMeans
from cast_jax.train.metric_writer import MetricWriter, format_progress
from cast_jax.train.profiling import StepProfiler

# Compiling with these options is several times faster on CPU (the program is the same, its machine code
# less optimised); the tests and the :test configs use them, where this jax/XLA accepts them.
FAST_CPU_COMPILE = {'xla_backend_optimization_level': 0, 'xla_cpu_use_fusion_emitters': False}


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the run stopped without saving the bad state."""


def model_spec(config) -> ModelSpec:
  return ModelSpec.from_config(config.model.to_dict())


def accepted_compiler_options(candidates: Mapping[str, Any]) -> dict[str, Any]:
  """The subset of ``candidates`` this jax/XLA accepts, found by compiling a tiny function with each option.

  XLA's options come and go between versions (``xla_cpu_use_fusion_emitters`` is refused by the XLA of jax 0.12:
  'No such compile option'); an unknown one fails the compilation of every function it is passed to.
  """
  return dict(_accepted(tuple(sorted(candidates.items()))))


@functools.lru_cache(maxsize=None)
def _accepted(candidates: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
  accepted = []
  for name, value in candidates:
    try:
      jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(1.0).compile()
    except Exception:  # pylint: disable=broad-except  # XLA raises JaxRuntimeError, older jax TypeError
      continue
    accepted.append((name, value))
  return tuple(accepted)


def _jit(fn, config, **kwargs):
  if config.fast_compile and jax.default_backend() == 'cpu':
    options = accepted_compiler_options(FAST_CPU_COMPILE)
    if options:
      return jax.jit(fn, compiler_options=options, **kwargs)
  return jax.jit(fn, **kwargs)


def initial_variables(config, spec: ModelSpec, model) -> dict[str, Any]:
  """A fresh initialisation (seeded), overlaid with ``config.init_checkpoint`` (a converted .npz or a workdir)
  when set; the linear probe requires one and gets MoCo-v3's head initialisation."""
  size = spec.image_size
  images = jnp.zeros((2, size, size, 3), jnp.float32)
  superpixels = jnp.broadcast_to(jnp.arange(size * size, dtype=jnp.int32).reshape(size, size) % 8,
                                 (2, size, size))
  init = _jit(lambda rng: model.init({'params': rng, 'dropout': rng}, images, superpixels), config)
  fresh = jax.device_get(init(jax.random.PRNGKey(config.seed)))
  if not config.init_checkpoint:
    if config.trainer == 'linear_probe':
      raise ValueError('the linear probe needs --config.init_checkpoint=CKPT (a converted .npz or a workdir)')
    return fresh
  source_spec, loaded = init_from.load_variables(config.init_checkpoint)
  if source_spec.kind != spec.kind:
    raise ValueError(f'{config.init_checkpoint} holds a {source_spec.kind} model; the config trains '
                     f'{spec.kind}. Set --config.model.kind={source_spec.kind} (and its size) to match.')
  variables, kept = init_from.adapt(loaded, source_spec, fresh)
  if config.trainer == 'linear_probe':
    variables = init_from.probe_head_init(variables, config.seed)
  if kept and jax.process_index() == 0:
    print(f'initialised from {config.init_checkpoint}; kept fresh: {kept}', flush=True)
  return variables


def _schedule_lengths(config, train_size: int) -> tuple[int, int, int]:
  steps_per_epoch = config.steps_per_epoch if config.steps_per_epoch > 0 else train_size // config.batch_size
  if steps_per_epoch <= 0:
    raise ValueError(f'{train_size} training examples cannot fill one batch of {config.batch_size}')
  total = config.total_steps if config.total_steps > 0 else config.num_epochs * steps_per_epoch
  warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total)
  return steps_per_epoch, total, warmup


def _best_logged(run: RunFolder, key: str, up_to_step: int) -> float:
  """The largest ``key`` in metrics.jsonl at or before ``up_to_step``, so a resumed run keeps its best."""
  best = 0.0
  for record in run.read_metrics():
    if key in record and record['step'] <= up_to_step:
      best = max(best, float(record[key]))
  return best


def _write_parameter_overview(writer: MetricWriter, params, trainable: int) -> int:
  """The per-array table (name, shape, dtype, size, mean, std) into the run folder; returns the total size."""
  from clu import parameter_overview  # pylint: disable=import-outside-toplevel

  table = parameter_overview.get_parameter_overview(params)
  writer.write_text(PARAMETERS, f'{table}\nTrainable: {trainable}\n')
  return parameter_overview.count_parameters(params)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` when it holds a checkpoint); returns the last metrics.

  Raises WorkdirBusyError when another live process is writing ``workdir``. Every file is closed (and the
  workdir released) however the run ends.
  """
  run = RunFolder(workdir)
  workdir = run.root
  workdir.mkdir(parents=True, exist_ok=True)
  if config.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', str(config.compilation_cache_dir))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  is_main = jax.process_index() == 0
  with contextlib.ExitStack() as cleanup:
    if is_main:
      cleanup.enter_context(distributed.WorkdirOwner(run.owner_path))
    writer = cleanup.enter_context(MetricWriter(workdir, enabled=is_main))
    return _train(config, run, writer, cleanup)


def _train(config, run: RunFolder, writer: MetricWriter, cleanup: contextlib.ExitStack) -> dict[str, Any]:
  workdir, is_main = run.root, jax.process_index() == 0
  writer.write_config(config.to_dict())

  mesh = sharding.make_mesh(config.mesh.fsdp)
  sharding.check_batch_divides(config.batch_size, mesh)
  spec = model_spec(config)
  dtype = compute_dtype(config.compute_dtype)
  model = build_model(spec, dtype)

  train_size = len(inputs.make_source(config.data, config.data.train_split))
  lengths = _schedule_lengths(config, train_size)
  steps_per_epoch, total_steps, _ = lengths
  variables = initial_variables(config, spec, model)
  task = tasks.build_task(config, spec, model, variables['params'], lengths)
  objective = task.objective

  # The state is built on the devices with its final layout (FSDP-split where configured).
  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(objective.init_state, variables, rng)
  state_sharding = sharding.state_shardings(mesh, abstract)
  replicated = sharding.replicated(mesh)
  host_inputs = sharding.put_global((variables, rng), jax.tree_util.tree_map(lambda _: replicated, (variables, rng)))
  state = _jit(objective.init_state, config, out_shardings=state_sharding)(*host_inputs)
  del host_inputs

  local_batch = config.batch_size // jax.process_count()
  iterator = task.make_iterator(local_batch, jax.process_index(), jax.process_count())
  checkpointer = cleanup.enter_context(checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints))
  start_step = 0
  if checkpointer.latest_step() is not None:
    start_step = checkpointer.latest_step()
    state = checkpointer.restore(start_step, checkpoint.abstract_with_shardings(abstract, state_sharding), iterator)
    print(f'resumed from {checkpointer.directory}/{start_step}', flush=True)

  train_step = _jit(objective.train_step, config, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                    out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  evaluator = evaluation.Evaluator(config, model, mesh, spec.uses_superpixels, classifier=task.classifier)

  if is_main:
    trainable = optim.count_trainable(variables['params'], task.trainable_labels)
    total = _write_parameter_overview(writer, variables['params'], trainable)
    print(f'{spec.kind} {spec.variant}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable; table '
          f'in {run.parameters_path}); {total_steps} steps ({steps_per_epoch}/epoch), global batch '
          f'{config.batch_size} on {mesh.devices.size} device(s) {dict(mesh.shape)}', flush=True)
  del variables

  last, best_top1 = {}, _best_logged(run, 'top1', start_step)
  last_saved = start_step if start_step else None
  means = IntervalMeans()
  profiler = StepProfiler(config.get('profile', None), run.profile_dir, start_step)
  cleanup.callback(profiler.stop)
  timer_start, timer_steps, run_start = time.time(), 0, time.time()
  for step in range(start_step, total_steps):
    local = next(iterator)
    skipped = summarize_skips(local)
    device_batch = sharding.global_batch({k: local[k] for k in task.batch_keys}, mesh)
    profiler.before(step)
    state, step_metrics = train_step(state, device_batch)
    profiler.after(step, (state, step_metrics))
    means.add(step_metrics)
    timer_steps += 1
    done = step + 1
    log_now = done % config.log_every_steps == 0 or done == total_steps
    save_now = done % config.checkpoint_every_steps == 0 or done == total_steps
    if log_now or save_now:  # only then wait for the device: other steps are dispatched while this one runs
      # A non-finite loss poisons the parameters and every mean over it, so it is still visible at the next
      # check; checking before every save keeps bad states out of the checkpoints.
      metrics = means.compute()
      if not math.isfinite(metrics['loss']):
        checkpointer.wait()
        raise NonFiniteLossError(
            f'the loss became {metrics["loss"]} at step {done} or earlier (checked at every log step and before '
            f'each save); stopped without saving this state. The last good checkpoint is step {last_saved} in '
            f'{checkpointer.directory} (restarting resumes from it). '
            'Try a lower base_lr, more warmup, or compute_dtype="float32".')
    if log_now:
      elapsed = time.time() - timer_start
      images_per_second = timer_steps * config.batch_size / max(elapsed, 1e-9)
      last = dict(metrics, images_per_second=images_per_second, skipped_records=skipped,
                  epoch=done / steps_per_epoch)
      writer.write_scalars(done, last)
      means.reset()
      if is_main:
        print(format_progress(done, total_steps, metrics, images_per_second, time.time() - run_start,
                              start_step=start_step), flush=True)
      timer_start, timer_steps = time.time(), 0
    if save_now:
      checkpointer.save(done, state, iterator)
      last_saved = done
    if done % config.eval_every_steps == 0 or done == total_steps:
      scalars, images = evaluator(evaluation.eval_variables(state))
      if task.classifier and state.ema_params is not None and config.get('evaluate_ema', False):
        ema_scalars, _ = evaluator(evaluation.eval_variables(state, ema=True), with_knn=False)
        scalars.update({f'ema_{k}': v for k, v in ema_scalars.items()})
      if 'top1' in scalars:  # the probe reports its best evaluation, as the original
        best_top1 = scalars['best_top1'] = max(scalars['top1'], best_top1)
      writer.write_scalars(done, scalars)
      writer.write_images(done, images)
      last.update(scalars)
      if is_main and scalars:
        print(f'step {done}: ' + '  '.join(f'{k} {v:.2f}' for k, v in scalars.items()), flush=True)
      timer_start, timer_steps = time.time(), 0
  return last
