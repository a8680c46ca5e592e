"""``train_and_evaluate(config, workdir)``: the whole training job, called by ``cast_jax.main`` and notebooks.

One jitted step over a device mesh; the state (parameters, optimizer, momentum encoder, step, RNG) and the
data iterator's position are checkpointed together, so a restarted job continues exactly where the last
checkpoint left it. Process 0 owns the run folder (``cast_jax.run_folder``; a second process writing the same
workdir is refused) and writes metrics (metrics.jsonl, TensorBoard; each logged value is the mean over the steps
since the previous log), pictures, the parameter table and the config. ``config.profile`` traces a few steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cast_jax import evaluators as evaluators_lib
from cast_jax import xla_cpu
from cast_jax.data.pipeline import summarize_skips
from cast_jax.models.variants import ModelSpec, build_model, compute_dtype
from cast_jax.run_folder import PARAMETERS, RunFolder
from cast_jax.train import checkpoint, distributed, inputs, optim, schedules, sharding, tasks
from cast_jax.train.logged_metrics import IntervalMeans
from cast_jax.train.metric_writer import MetricWriter, format_progress
from cast_jax.train.profiling import StepProfiler

class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the run stopped without saving the bad state."""


def model_spec(config) -> ModelSpec:
  return ModelSpec.from_config(config.model.to_dict())


def _jit(fn, config, **kwargs):
  """``jax.jit`` with cast_jax's XLA CPU options (``cast_jax.xla_cpu``), fast compilation if ``config.fast_compile``."""
  return xla_cpu.jit(fn, fast_compile=bool(config.get('fast_compile')), **kwargs)


def initial_variables(config, spec: ModelSpec, model) -> dict[str, Any]:
  """A fresh initialisation (seeded), overlaid with ``config.init_checkpoint`` as the trainer's task declares
  (``tasks.starting_variables``: accepted checkpoint kinds, leaves kept fresh, strict otherwise)."""
  size = spec.image_size
  images = jnp.zeros((2, size, size, 3), jnp.float32)
  superpixels = jnp.broadcast_to(jnp.arange(size * size, dtype=jnp.int32).reshape(size, size) % 8,
                                 (2, size, size))
  init = _jit(lambda rng: model.init({'params': rng, 'dropout': rng}, images, superpixels), config)
  fresh = jax.device_get(init(jax.random.PRNGKey(config.seed)))
  return tasks.starting_variables(config, spec, fresh)


def _logged_before(run: RunFolder, up_to_step: int) -> list[dict[str, Any]]:
  """The metrics.jsonl records at or before ``up_to_step``: what a resumed run's evaluators pick up
  (the probe's best top-1)."""
  return [r for r in run.read_metrics() if r.get('step', 0) <= up_to_step]


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

  sharding.check_cpu_devices(config.mesh.get('cpu_devices', 1))
  mesh = sharding.make_mesh(config.mesh.fsdp)
  sharding.check_batch_divides(config.batch_size, mesh)
  spec = model_spec(config)
  dtype = compute_dtype(config.compute_dtype)
  model = build_model(spec, dtype)

  train_size = len(inputs.make_source(config.data, config.data.train_split))
  schedule = schedules.Schedule.from_config(config, train_size)
  steps_per_epoch, total_steps = schedule.steps_per_epoch, schedule.total_steps
  variables = initial_variables(config, spec, model)
  task = tasks.build_task(config, spec, model, variables['params'], schedule)
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
  evaluators = evaluators_lib.build(config, evaluators_lib.EvalContext(config, model, mesh, spec.uses_superpixels,
                                                                       classifier=task.classifier))

  if is_main:
    trainable = optim.count_trainable(variables['params'], task.trainable_labels)
    total = _write_parameter_overview(writer, variables['params'], trainable)
    print(f'{spec.kind} {spec.variant}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable; table '
          f'in {run.parameters_path}); {total_steps} steps ({steps_per_epoch}/epoch), global batch '
          f'{config.batch_size} on {mesh.devices.size} device(s) {dict(mesh.shape)}', flush=True)
  del variables

  history = _logged_before(run, start_step)
  for evaluator in evaluators:
    evaluator.restore(history)
  del history
  last = {}

  def evaluate(step: int, due: list) -> None:
    """Runs the ``due`` evaluators on the current state; one metrics line, every key under its prefix."""
    scalars, images = {}, {}
    for evaluator in due:
      ev_scalars, ev_images = evaluator.run(state, step)
      scalars.update(evaluators_lib.with_prefix(evaluator, ev_scalars))
      images.update(evaluators_lib.with_prefix(evaluator, ev_images))
    writer.write_scalars(step, scalars)
    if images:
      writer.write_images(step, images)
    last.update(scalars)
    if is_main and scalars:
      print(f'step {step}: ' + '  '.join(f'{k} {v:.2f}' if isinstance(v, float) else f'{k} {v}'
                                         for k, v in scalars.items()), flush=True)

  if config.get('eval_at_start', False) and start_step == 0:
    # The untrained network's numbers, in the same run and log: what training is measured against.
    evaluate(0, [evaluator for evaluator in evaluators if evaluator.every_steps > 0])
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
    due = [evaluator for evaluator in evaluators if evaluator.due(done, total_steps)]
    if due:
      evaluate(done, due)
      timer_start, timer_steps = time.time(), 0
  return last
