"""The MoCo trainer end to end through ``python -m cast_jax.main`` (configs/moco_cast_s.py:test).

Each run is a subprocess, as a user runs it: a SIGKILL mid-run followed by a restart must reproduce the
uninterrupted run's per-step losses exactly; 4 simulated devices (data x FSDP) and 2 processes x 2 devices
through jax.distributed must give the same losses within float tolerance.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT

CONFIG = 'configs/moco_cast_s.py:test'


def _env(devices: int = 1, cache=None) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env.pop('CUDA_VISIBLE_DEVICES', None)
  return env


def _command(workdir, cache, *extra):
  return [sys.executable, '-m', 'cast_jax.main', f'--config={CONFIG}', f'--workdir={workdir}',
          f'--config.compilation_cache_dir={cache}', *extra]


def run_main(workdir, cache, *extra, devices: int = 1, timeout: int = 400) -> subprocess.CompletedProcess:
  proc = subprocess.run(_command(workdir, cache, *extra), cwd=REPO_ROOT, env=_env(devices), capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, f'run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'
  return proc


def losses(workdir) -> dict[int, list[float]]:
  """step -> every loss logged for it (a resumed run logs the steps after its checkpoint again)."""
  out: dict[int, list[float]] = {}
  for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    if 'loss' in record:
      out.setdefault(record['step'], []).append(record['loss'])
  return out


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp('compilation_cache')


@pytest.fixture(scope='module')
def reference(tmp_path_factory, cache):
  """The uninterrupted single-device run: (workdir, {step: loss})."""
  workdir = tmp_path_factory.mktemp('reference')
  run_main(workdir, cache)
  found = losses(workdir)
  assert sorted(found) == [1, 2, 3, 4, 5, 6]
  return workdir, {step: values[0] for step, values in found.items()}


def test_run_writes_metrics_pictures_checkpoints_and_knn(reference):
  workdir, per_step = reference
  assert all(np.isfinite(v) for v in per_step.values())
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  knn = [r for r in records if 'knn/top1' in r]
  assert knn and 0.0 <= knn[-1]['knn/top1'] <= 100.0 and knn[-1]['step'] == 6
  assert knn[-1]['knn/num_examples'] == 16  # the whole validation split of the :test shrink
  first = next(r for r in records if 'loss' in r)
  assert first['lr'] >= 0 and abs(first['momentum'] - 0.99) < 1e-6 and first['images_per_second'] > 0
  config = json.loads((workdir / 'config.json').read_text())
  assert config['batch_size'] == 8 and config['model']['kind'] == 'cast'
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['4', '6']  # keep 2
  assert list((workdir / 'pictures').glob('hierarchy_first_batch_0000006.png'))
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(str(workdir / 'tensorboard'))
  events.Reload()
  assert {'loss', 'lr', 'momentum', 'knn/top1'} <= set(events.Tags()['scalars'])
  assert [e.step for e in events.Scalars('loss')] == [1, 2, 3, 4, 5, 6]
  assert events.Scalars('loss')[-1].value == pytest.approx(per_step[6], rel=1e-6)
  assert any(tag.startswith('hierarchy') for tag in events.Tags()['images'])
  assert 'Total:' in (workdir / 'parameters.txt').read_text()
  assert not (workdir / 'owner.json').exists()  # released at the end
  # One data-iterator file per process, written by grain's checkpoint handler.
  assert (workdir / 'checkpoints' / '6' / 'data' / 'process_0-of-1.json').is_file()


def test_sigkill_and_restart_reproduce_the_losses_exactly(reference, tmp_path, cache):
  _, expected = reference
  workdir = tmp_path / 'killed'
  proc = subprocess.Popen(_command(workdir, cache), cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 300
  try:
    # Kill after step 3 is logged: the checkpoint of step 2 exists, steps 3.. are lost.
    while time.time() < deadline and proc.poll() is None:
      if metrics.exists() and max(losses(workdir) or [0]) >= 3:
        break
      time.sleep(0.05)
    assert proc.poll() is None, 'the run finished before it could be killed'
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait(timeout=60)
  logged_before = max(losses(workdir))
  assert logged_before < 6
  run_main(workdir, cache)
  resumed = losses(workdir)
  assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
  assert any(len(v) > 1 for v in resumed.values()), 'no step was recomputed: the kill came too late'
  for step, values in resumed.items():
    for value in values:  # before the kill and after the restart alike
      assert value == expected[step], f'step {step}: {values} vs uninterrupted {expected[step]}'


def test_four_devices_with_fsdp_give_the_same_losses(reference, tmp_path, cache):
  _, expected = reference
  workdir = tmp_path / 'mesh'
  run_main(workdir, cache, '--config.mesh.fsdp=2', devices=4)
  found = {s: v[0] for s, v in losses(workdir).items()}
  np.testing.assert_allclose([found[s] for s in sorted(expected)], [expected[s] for s in sorted(expected)],
                             rtol=2e-4)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_on_localhost_give_the_same_losses(reference, tmp_path, cache):
  _, expected = reference
  workdir = tmp_path / 'multiprocess'
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen(_command(workdir, cache, f'--coordinator_address={address}', '--num_processes=2',
                                     f'--process_id={i}'), cwd=REPO_ROOT, env=_env(devices=2),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]
  found = {s: v[0] for s, v in losses(workdir).items()}
  assert sorted(found) == sorted(expected)
  np.testing.assert_allclose([found[s] for s in sorted(expected)], [expected[s] for s in sorted(expected)],
                             rtol=2e-4)
  # The evaluators gathered both processes' rows: every validation image once, padding dropped.
  evaluation = [r for r in _records(workdir) if 'knn/top1' in r]
  assert [r['step'] for r in evaluation] == [6] and evaluation[0]['knn/num_examples'] == 16
  assert (workdir / 'pictures' / 'hierarchy_first_batch_0000006.png').is_file()


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(reference, tmp_path, cache):
  import shutil

  source, _ = reference
  workdir = tmp_path / 'nan'
  shutil.copytree(source, workdir)
  # Resume the finished 6-step run for 2 more steps with T=0: logits / 0 give a NaN loss at step 7.
  proc = subprocess.run(_command(workdir, cache, '--config.total_steps=8', '--config.temperature=0.0'),
                        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=400)
  assert proc.returncode != 0
  assert 'NonFiniteLossError' in proc.stderr and 'at step 7' in proc.stderr, proc.stderr[-3000:]
  assert 'last good checkpoint is step 6' in proc.stderr
  steps = sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == ['4', '6'], steps
  # The kept checkpoint still resumes: finishing the original 6 steps is a no-op that exits cleanly.
  run_main(workdir, cache)


def _records(workdir):
  return [json.loads(l) for l in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def test_supervised_trainer_through_the_same_main(tmp_path, cache):
  """configs/deit_cast_s.py:test: DeiT recipe (RandAugment, erasing, mixup/cutmix, repeated augmentation),
  top-1 of the weights and of their EMA at the end."""
  workdir = tmp_path / 'deit'
  proc = subprocess.run([sys.executable, '-m', 'cast_jax.main', '--config=configs/deit_cast_s.py:test',
                         f'--workdir={workdir}', f'--config.compilation_cache_dir={cache}'], cwd=REPO_ROOT,
                        env=_env(), capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-4000:]
  records = _records(workdir)
  losses_ = [r['loss'] for r in records if 'loss' in r]
  assert len(losses_) == 6 and all(np.isfinite(losses_))
  final = [r for r in records if 'classifier/top1' in r][-1]
  assert final['step'] == 6 and 0 <= final['classifier/top1'] <= 100 and 'classifier/top5' in final
  assert 'classifier_ema/top1' in final and final['classifier/num_examples'] == 16  # all of the split


def test_linear_probe_from_a_moco_workdir_and_the_evaluate_command(reference, tmp_path, cache):
  source, _ = reference
  workdir = tmp_path / 'probe'
  proc = subprocess.run([sys.executable, '-m', 'cast_jax.main', '--config=configs/lincls_cast_s.py:test',
                         f'--workdir={workdir}', f'--config.init_checkpoint={source}', '--config.base_lr=0.1',
                         f'--config.compilation_cache_dir={cache}'], cwd=REPO_ROOT, env=_env(),
                        capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'kept fresh: [\'params/head/bias\', \'params/head/kernel\']' in proc.stdout
  final = [r for r in _records(workdir) if 'classifier/top1' in r][-1]
  assert 0 <= final['classifier/top1'] <= 100 and final['classifier/best_top1'] >= final['classifier/top1']
  # The backbone stayed frozen: the probe's encoder weights equal the MoCo run's.
  from cast_jax.train.init_from import load_variables

  _, moco = load_variables(source)
  _, probe = load_variables(workdir)
  np.testing.assert_array_equal(probe['params']['blocks_0']['attn']['qkv']['kernel'],
                                moco['params']['encoder']['blocks_0']['attn']['qkv']['kernel'])
  np.testing.assert_array_equal(probe['batch_stats']['patch_embed']['proj_1']['mean'],
                                moco['batch_stats']['encoder']['patch_embed']['proj_1']['mean'])
  # Evaluating the MoCo workdir standalone gives the kNN its own training run reported at the end.
  out = subprocess.run([sys.executable, '-m', 'cast_jax.evaluate', f'--checkpoint={source}',
                        f'--config={CONFIG}', '--evaluator=knn'], cwd=REPO_ROOT, env=_env(), capture_output=True,
                       text=True, timeout=400)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  trained = [r for r in _records(source) if 'knn/top1' in r][-1]
  assert result['knn/top1'] == trained['knn/top1'] and result['knn/top5'] == trained['knn/top5']
