"""Starting a multi-process run, and making sure one run owns its workdir.

``start(mode, ...)`` calls ``jax.distributed.initialize``:

* with the explicit ``--coordinator_address/--num_processes/--process_id`` when given;
* with no arguments when ``mode='on'``, or when ``mode='auto'`` and the environment shows a multi-process job
  (SLURM with more than one task, Open MPI's ``mpirun`` with more than one rank, a Cloud TPU slice whose
  hosts are listed in ``TPU_WORKER_HOSTNAMES``/``TPU_PROCESS_ADDRESSES``, or ``JAX_COORDINATOR_ADDRESS`` and
  ``JAX_NUM_PROCESSES``): JAX then reads the coordinator, process count and index from that environment;
* not at all otherwise (a single process).

``WorkdirOwner`` is a lock file in the workdir naming the host and pid of the process writing it: without it,
hosts whose JAX never learned of each other all run as "process 0 of 1" and interleave their checkpoints and
metrics in one folder. A lock left by a dead process (a run killed with SIGKILL, a crashed host) does not
block the restart; see ``WorkdirOwner`` for how a dead owner is recognised.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import threading
import time
from typing import Mapping, Optional

MODES = ('auto', 'on', 'off')


def _count(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ.get(name, '') or 0)
  except ValueError:
    return 0


def cluster_environment(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """The multi-process environment this process was started in ('slurm', 'openmpi', 'cloud_tpu', 'jax'), or
  None for a single process. Mirrors what ``jax.distributed.initialize()`` can detect without arguments."""
  slurm = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')
  if all(name in environ for name in slurm) and _count(environ, 'SLURM_NTASKS') > 1:
    return 'slurm'
  if 'OMPI_MCA_orte_hnp_uri' in environ and _count(environ, 'OMPI_COMM_WORLD_SIZE') > 1:
    return 'openmpi'
  hosts = environ.get('TPU_PROCESS_ADDRESSES') or environ.get('TPU_WORKER_HOSTNAMES') or ''
  if len([h for h in hosts.split(',') if h.strip()]) > 1:
    return 'cloud_tpu'
  if environ.get('JAX_COORDINATOR_ADDRESS') and _count(environ, 'JAX_NUM_PROCESSES') > 1:
    return 'jax'
  return None


def initialize_arguments(mode: str, coordinator_address: Optional[str] = None,
                         num_processes: Optional[int] = None, process_id: Optional[int] = None,
                         environ: Mapping[str, str] = os.environ) -> Optional[dict]:
  """The keyword arguments for ``jax.distributed.initialize`` ({} = detect from the environment), or None when
  this is a single-process run that must not call it."""
  if mode not in MODES:
    raise ValueError(f'--distributed={mode!r}: use one of {MODES} (auto: start jax.distributed when the '
                     'environment is a multi-process job; on: always; off: never)')
  explicit = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                    process_id=process_id).items() if v is not None}
  if mode == 'off':
    if num_processes and num_processes > 1:
      raise ValueError(f'--distributed=off contradicts --num_processes={num_processes}: drop one of them')
    return None
  if num_processes is not None and num_processes > 1:
    if coordinator_address is None or process_id is None:
      raise ValueError('--num_processes>1 needs --coordinator_address=HOST:PORT (of process 0) and '
                       '--process_id=I too, or none of the three to let JAX read them from the cluster')
    return explicit
  if num_processes == 1 and mode == 'auto':
    return None
  if mode == 'on' or explicit or cluster_environment(environ) is not None:
    return explicit  # whatever was given explicitly, the rest from the environment
  return None


def start(mode: str = 'auto', coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
          process_id: Optional[int] = None, environ: Mapping[str, str] = os.environ) -> bool:
  """Calls ``jax.distributed.initialize`` when ``initialize_arguments`` says so; True if it did."""
  kwargs = initialize_arguments(mode, coordinator_address, num_processes, process_id, environ)
  if kwargs is None:
    return False
  import jax  # pylint: disable=import-outside-toplevel

  jax.distributed.initialize(**kwargs)
  return True


# --------------------------------------------------------------------------- workdir owner


class WorkdirBusyError(RuntimeError):
  """Another live process is writing this workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


class WorkdirOwner:
  """``<workdir>/owner.json`` ({host, pid, started}) held while one process writes the workdir.

  An existing lock is taken over when its owner is gone: on this host, when its pid no longer runs (or is our
  own pid, a restarted container); on another host, when the owner stopped refreshing the file's time
  (a heartbeat every ``heartbeat_seconds``) for ``stale_after_seconds``. Otherwise ``acquire`` raises
  WorkdirBusyError naming the owner.
  """

  def __init__(self, path, heartbeat_seconds: float = 30.0, stale_after_seconds: float = 300.0,
               host: Optional[str] = None, pid: Optional[int] = None):
    if stale_after_seconds <= 2 * heartbeat_seconds:
      raise ValueError('stale_after_seconds must exceed two heartbeats, or a live owner could look dead')
    self.path = pathlib.Path(path)
    self.heartbeat_seconds, self.stale_after_seconds = heartbeat_seconds, stale_after_seconds
    self.host = host or socket.gethostname()
    self.pid = os.getpid() if pid is None else pid
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._held = False

  def _stale_reason(self, record: Optional[dict]) -> Optional[str]:
    """Why the existing lock can be taken over, or None when its owner may still be writing."""
    try:
      age = time.time() - self.path.stat().st_mtime
    except FileNotFoundError:
      return 'it is gone'
    if record is None:
      return f'it is unreadable and {age:.0f} s old' if age > self.stale_after_seconds else None
    if record.get('host') == self.host:
      pid = int(record.get('pid', -1))
      if pid == self.pid:
        return 'it names this process (a restart)'
      if pid <= 0 or not _pid_alive(pid):
        return f'process {pid} no longer runs'
      return None
    if age > self.stale_after_seconds:
      return f'its owner on {record.get("host")} stopped refreshing it {age:.0f} s ago'
    return None

  def _read(self) -> Optional[dict]:
    try:
      return json.loads(self.path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
      return None

  def acquire(self) -> WorkdirOwner:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    record = {'host': self.host, 'pid': self.pid, 'started': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        other = self._read()
        if self._stale_reason(other) is None:
          owner = (f'process {other.get("pid")} on host {other.get("host")} (since {other.get("started")})'
                   if other else 'another process (the file is being written)')
          raise WorkdirBusyError(
              f'{self.path.parent} is being written by {owner}, as {self.path} says. Two runs writing one '
              'workdir mix their checkpoints and metrics. If that run is still going, give this one another '
              '--workdir. If this is one host of a multi-host job, jax.distributed did not start (every host '
              'ran as process 0 of 1): run with --distributed=on, or pass --coordinator_address, '
              f'--num_processes and --process_id. If that process is dead, delete {self.path}.') from None
        self.path.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, 'w', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')
      self._held = True
      self._stop.clear()
      self._thread = threading.Thread(target=self._heartbeat, name='workdir-owner-heartbeat', daemon=True)
      self._thread.start()
      return self
    raise WorkdirBusyError(f'could not take {self.path}: other processes keep re-creating it')

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      try:
        os.utime(self.path)
      except OSError:
        pass  # the folder went away; release() copes

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still ours."""
    if not self._held:
      return
    self._held = False
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    record = self._read()
    if record and record.get('host') == self.host and record.get('pid') == self.pid:
      self.path.unlink(missing_ok=True)

  def __enter__(self) -> WorkdirOwner:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
