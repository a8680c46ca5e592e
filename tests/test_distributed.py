"""Starting jax.distributed from a cluster's environment, and one live writer per workdir (owner.json)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cast_jax.train import distributed
from cast_jax.train.distributed import WorkdirBusyError, WorkdirOwner

SLURM_TWO_TASKS = {'SLURM_JOB_ID': '17', 'SLURM_STEP_NODELIST': 'node[1-2]', 'SLURM_NTASKS': '2',
                   'SLURM_PROCID': '1', 'SLURM_LOCALID': '0'}


@pytest.mark.parametrize('environ, expected', [
    ({}, None),
    (SLURM_TWO_TASKS, 'slurm'),
    (dict(SLURM_TWO_TASKS, SLURM_NTASKS='1'), None),  # a one-task allocation is a single process
    ({'SLURM_JOB_ID': '17', 'SLURM_NTASKS': '4'}, None),  # salloc shell without srun: no step to join
    ({'OMPI_MCA_orte_hnp_uri': '1531576320.0;tcp://10.96.0.1:34911', 'OMPI_COMM_WORLD_SIZE': '4'}, 'openmpi'),
    ({'OMPI_MCA_orte_hnp_uri': '1531576320.0;tcp://10.96.0.1:34911', 'OMPI_COMM_WORLD_SIZE': '1'}, None),
    ({'TPU_WORKER_HOSTNAMES': 't1k-0,t1k-1,t1k-2,t1k-3'}, 'cloud_tpu'),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, None),  # a single-host TPU VM
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '2'}, 'jax'),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, None),
])
def test_cluster_environment(environ, expected):
  assert distributed.cluster_environment(environ) == expected


def test_initialize_arguments():
  args = distributed.initialize_arguments
  assert args('auto', environ={}) is None  # a laptop: no jax.distributed
  assert args('auto', environ=SLURM_TWO_TASKS) == {}  # JAX reads coordinator, count and index from SLURM
  assert args('on', environ={}) == {}
  assert args('off', environ=SLURM_TWO_TASKS) is None
  explicit = args('auto', 'localhost:1234', 2, 1, environ={})
  assert explicit == {'coordinator_address': 'localhost:1234', 'num_processes': 2, 'process_id': 1}
  assert args('auto', num_processes=1, environ={}) is None
  with pytest.raises(ValueError, match='--coordinator_address'):
    args('auto', num_processes=2, environ={})
  with pytest.raises(ValueError, match='contradicts'):
    args('off', 'localhost:1234', 2, 0, environ={})
  with pytest.raises(ValueError, match="one of \\('auto', 'on', 'off'\\)"):
    args('yes', environ={})


def test_start_calls_initialize_without_arguments_in_a_cluster(monkeypatch):
  import jax

  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs))
  assert distributed.start('auto', environ=SLURM_TWO_TASKS) is True
  assert distributed.start('auto', environ={}) is False
  assert calls == [{}]


def _sleeper():
  """A live process of ours (not this one) whose pid can own a lock."""
  return subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def _write_owner(path, host, pid):
  path.write_text(json.dumps({'host': host, 'pid': pid, 'started': 'earlier'}))


def test_owner_file_names_this_process_and_is_removed_on_release(tmp_path):
  path = tmp_path / 'run' / 'owner.json'
  with WorkdirOwner(path) as owner:
    record = json.loads(path.read_text())
    assert record['host'] == socket.gethostname() and record['pid'] == os.getpid()
    assert owner.pid == os.getpid()
  assert not path.exists()


def test_a_live_writer_on_this_host_refuses_a_second(tmp_path):
  path = tmp_path / 'owner.json'
  other = _sleeper()
  try:
    _write_owner(path, socket.gethostname(), other.pid)
    with pytest.raises(WorkdirBusyError) as info:
      WorkdirOwner(path).acquire()
    message = str(info.value)
    assert f'process {other.pid} on host {socket.gethostname()}' in message
    assert '--distributed=on' in message and f'delete {path}' in message
    assert json.loads(path.read_text())['pid'] == other.pid  # left alone
  finally:
    other.kill()
    other.wait()


def test_a_lock_of_a_killed_process_does_not_block_the_restart(tmp_path):
  path = tmp_path / 'owner.json'
  _write_owner(path, socket.gethostname(), _dead_pid())
  with WorkdirOwner(path):
    assert json.loads(path.read_text())['pid'] == os.getpid()
  # Our own pid in the file (a restarted container reusing it) is ours to take too.
  _write_owner(path, socket.gethostname(), os.getpid())
  WorkdirOwner(path).acquire().release()
  assert not path.exists()


def test_other_hosts_lock_is_stale_only_without_heartbeat(tmp_path):
  path = tmp_path / 'owner.json'
  _write_owner(path, 'some-other-host', 12345)
  with pytest.raises(WorkdirBusyError, match='process 12345 on host some-other-host'):
    WorkdirOwner(path, stale_after_seconds=300).acquire()
  old = time.time() - 301
  os.utime(path, (old, old))
  with WorkdirOwner(path, stale_after_seconds=300):
    assert json.loads(path.read_text())['host'] == socket.gethostname()


def test_an_unreadable_lock_waits_until_it_is_old(tmp_path):
  path = tmp_path / 'owner.json'
  path.write_text('{"host": "half-writ')
  with pytest.raises(WorkdirBusyError, match='being written'):
    WorkdirOwner(path).acquire()
  old = time.time() - 1000
  os.utime(path, (old, old))
  WorkdirOwner(path).acquire().release()


def test_heartbeat_refreshes_the_lock_and_release_keeps_a_foreign_one(tmp_path):
  path = tmp_path / 'owner.json'
  owner = WorkdirOwner(path, heartbeat_seconds=0.05, stale_after_seconds=1.0).acquire()
  old = time.time() - 100
  os.utime(path, (old, old))
  deadline = time.time() + 10
  while path.stat().st_mtime < time.time() - 50 and time.time() < deadline:
    time.sleep(0.02)
  assert path.stat().st_mtime > time.time() - 50, 'the heartbeat did not touch the lock'
  _write_owner(path, 'some-other-host', 1)  # someone deleted ours and took over
  owner.release()
  assert json.loads(path.read_text())['host'] == 'some-other-host'
  with pytest.raises(ValueError, match='two heartbeats'):
    WorkdirOwner(path, heartbeat_seconds=10, stale_after_seconds=15)
