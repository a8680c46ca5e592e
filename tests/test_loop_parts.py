"""Pieces of the training loop that need no training run: XLA option check, interval means, profiler hook,
parameter table, and that a failing run releases its files and its workdir."""

from __future__ import annotations

import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cast_jax import xla_cpu
from cast_jax.run_folder import RunFolder
from cast_jax.train import loop
from cast_jax.train.distributed import WorkdirBusyError
from cast_jax.train.logged_metrics import IntervalMeans
from cast_jax.train.metric_writer import MetricWriter
from cast_jax.train.profiling import StepProfiler


def test_only_compile_options_xla_accepts_are_used():
  known = 'xla_backend_optimization_level'
  accepted = xla_cpu.accepted({known: 0, 'xla_cast_jax_no_such_option': True})
  assert accepted == {known: 0}
  # Whatever this XLA accepts of the fast-compile set, the loop's jit compiles and runs with it (jax 0.12's
  # XLA refuses xla_cpu_use_fusion_emitters, which failed every :test run there).
  assert set(xla_cpu.accepted(xla_cpu.FAST_COMPILE)) <= set(xla_cpu.FAST_COMPILE)
  config = ml_collections.ConfigDict({'fast_compile': True})
  assert float(loop._jit(lambda x: x * 2, config)(jnp.float32(3))) == 6.0  # pylint: disable=protected-access


def test_interval_means_average_metrics_and_keep_the_last_schedule_value():
  means = IntervalMeans()
  for loss, lr in ((1.0, 0.1), (2.0, 0.2), (6.0, 0.3)):
    means.add({'loss': jnp.float32(loss), 'lr': jnp.float32(lr), 'momentum': jnp.float32(lr + 0.5)})
  assert means.steps == 3
  result = means.compute()
  assert result['loss'] == 3.0
  assert result['lr'] == pytest.approx(0.3) and result['momentum'] == pytest.approx(0.8)
  means.reset()
  with pytest.raises(ValueError, match='no step'):
    means.compute()
  means.add({'loss': jnp.float32(5.0)})
  assert means.compute() == {'loss': 5.0}  # one step: its own value, bit for bit
  means.add({'loss': jnp.float32(np.nan)})
  assert np.isnan(means.compute()['loss'])  # a NaN step cannot hide in a mean
  with pytest.raises(ValueError, match='changed'):
    means.add({'loss': jnp.float32(1.0), 'extra': jnp.float32(1.0)})


def _profile(first_step, num_steps):
  return ml_collections.ConfigDict({'first_step': first_step, 'num_steps': num_steps})


def test_profiler_traces_the_configured_steps_into_the_run_folder(tmp_path):
  run = RunFolder(tmp_path)
  profiler = StepProfiler(_profile(1, 2), run.profile_dir, start_step=0)
  step_fn = jax.jit(lambda x: x @ x)
  x = jnp.ones((8, 8))
  active = []
  for step in range(5):
    profiler.before(step)
    active.append(profiler.active)
    x = step_fn(x) / 8
    profiler.after(step, x)
  assert active == [False, True, True, False, False]
  traces = list(run.profile_dir.rglob('*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  # A run resumed past first_step traces its first steps instead; num_steps=0 (the default) traces nothing.
  assert StepProfiler(_profile(1, 2), run.profile_dir, start_step=40).first == 40
  assert StepProfiler(_profile(1, 0), run.profile_dir).first == -1
  assert StepProfiler(None, run.profile_dir).first == -1
  with pytest.raises(ValueError, match='num_steps'):
    StepProfiler(_profile(1, -1), run.profile_dir)


def test_parameter_table_is_written_and_counts_every_array(tmp_path):
  params = {'a': {'kernel': np.ones((3, 4), np.float32)}, 'b': np.zeros(5, np.float32)}
  with MetricWriter(tmp_path) as writer:
    total = loop._write_parameter_overview(writer, params, trainable=12)  # pylint: disable=protected-access
  assert total == 17
  text = RunFolder(tmp_path).parameters_path.read_text()
  assert 'a/kernel' in text and '(3, 4)' in text and 'Total: 17' in text and 'Trainable: 12' in text


def _config():
  from cast_jax.train.config_lib import load_config_file

  return load_config_file('configs/demo.py:test')


def test_a_failing_run_closes_its_files_and_releases_the_workdir(tmp_path, monkeypatch):
  writers = []

  class Recording(MetricWriter):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      writers.append(self)

  def broken_mesh(*_):
    raise RuntimeError('no devices today')

  monkeypatch.setattr(loop, 'MetricWriter', Recording)
  monkeypatch.setattr(loop.sharding, 'make_mesh', broken_mesh)
  run = RunFolder(tmp_path / 'run')
  with pytest.raises(RuntimeError, match='no devices today'):
    loop.train_and_evaluate(_config(), run.root)
  (writer,) = writers
  assert writer._events is None and writer._jsonl is None  # pylint: disable=protected-access
  assert run.config_path.is_file() and not run.owner_path.exists()
  assert len(list(run.tensorboard_dir.glob('events.out.tfevents.*'))) == 1


def test_a_second_writer_of_a_workdir_is_refused_before_writing(tmp_path):
  run = RunFolder(tmp_path / 'run')
  run.root.mkdir()
  other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    run.owner_path.write_text(f'{{"host": "{socket.gethostname()}", "pid": {other.pid}, "started": "now"}}')
    with pytest.raises(WorkdirBusyError, match=f'process {other.pid}'):
      loop.train_and_evaluate(_config(), run.root)
    assert sorted(p.name for p in run.root.iterdir()) == ['owner.json']
  finally:
    other.kill()
    other.wait()
