"""Trains a model from a config file: ``python -m cast_jax.main --config=configs/demo.py --workdir=DIR``.

Append ``:test`` to any config for a tiny run; override fields with ``--config.batch_size=64`` etc. A workdir
that holds a checkpoint is resumed. On several hosts, start one process per host: under SLURM, Open MPI's
``mpirun`` or on a Cloud TPU slice listing its hosts, the environment is enough (``--distributed=auto``, the
default, starts ``jax.distributed`` from it); elsewhere pass ``--distributed=on`` where JAX can detect the
cluster, or --coordinator_address/--num_processes/--process_id. Only one run may write a workdir at a time.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from cast_jax.train.config_lib import parse_flags_explaining_overrides

config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py[:test]).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and pictures go.')
flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                  'Start jax.distributed: auto = when the environment is a multi-process job (SLURM, mpirun, '
                  'Cloud TPU hosts, JAX_COORDINATOR_ADDRESS) or the flags below are given; on = always (JAX '
                  'detects the cluster); off = never.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for multi-process runs.')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process index in a multi-process run.')
flags.DEFINE_string('log_level', 'warning', 'absl logging level of the libraries (orbax logs every save at info).')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(FLAGS.log_level)
  from cast_jax import xla_cpu  # pylint: disable=import-outside-toplevel
  from cast_jax.train import distributed  # pylint: disable=import-outside-toplevel

  xla_cpu.use_cpu_devices(FLAGS.config.mesh.get('cpu_devices', 1))  # before anything starts jax's backends

  distributed.start(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from cast_jax.train.loop import train_and_evaluate  # pylint: disable=import-outside-toplevel

  train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run():
  """The ``cast-train`` console command (pyproject.toml), the same as ``python -m cast_jax.main``."""
  from cast_jax import malloc_hugepages  # pylint: disable=import-outside-toplevel

  malloc_hugepages.reexec_with_hugepages('cast_jax.main')  # first: the restarted process does all of this again
  app.run(main, flags_parser=parse_flags_explaining_overrides)  # misspelt --config.X: name it, list close ones


if __name__ == '__main__':
  run()
