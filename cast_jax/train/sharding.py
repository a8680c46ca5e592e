"""Device meshes and shardings: data parallel over ('data', 'fsdp'), parameters optionally split on 'fsdp'.

The batch is split over both mesh axes (FSDP is data parallel too); parameters and optimizer state are
replicated over 'data' and, when the 'fsdp' axis is larger than 1, each large array is split along its
largest axis divisible by the axis size. ``jit`` inserts the gathers, so the model code never changes.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ('data', 'fsdp')


def make_mesh(fsdp: int = 1, devices: Optional[list] = None) -> Mesh:
  """A (num_devices // fsdp, fsdp) mesh over all devices of all processes."""
  devices = list(devices if devices is not None else jax.devices())
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f'mesh.fsdp={fsdp} must divide the number of devices ({len(devices)})')
  return Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), DATA_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape, fsdp: int, min_size: int) -> P:
  if fsdp == 1 or int(np.prod(shape)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, abstract_tree, min_size: int = 2**14) -> Any:
  """A NamedSharding per leaf: FSDP-split when large enough, else replicated."""
  fsdp = mesh.shape['fsdp']
  return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, _fsdp_spec(x.shape, fsdp, min_size)), abstract_tree)


def put_global(tree, shardings) -> Any:
  """Host values that every process holds identically -> global arrays laid out by ``shardings``."""

  def put(value, sharding):
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree_util.tree_map(put, tree, shardings)


def global_batch(local_batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the batch -> global arrays split over the mesh (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def check_cpu_devices(cpu_devices: int) -> None:
  """Raises when ``config.mesh.cpu_devices`` asks for a CPU device count that this process's jax does not have
  (it must be set before jax starts: ``python -m cast_jax.main`` does, ``xla_cpu.use_cpu_devices``)."""
  if cpu_devices == 1 or jax.default_backend() != 'cpu':
    return
  if jax.local_device_count() != cpu_devices:
    raise ValueError(f'config.mesh.cpu_devices={cpu_devices}, but jax has {jax.local_device_count()} CPU '
                     'device(s): jax started before the setting was applied. Run through python -m cast_jax.main, '
                     'or call cast_jax.xla_cpu.use_cpu_devices(n) right after importing jax.')


def check_batch_divides(global_batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if global_batch_size % devices or global_batch_size % jax.process_count():
    raise ValueError(f'batch_size={global_batch_size} must be divisible by the number of devices ({devices}) '
                     f'and processes ({jax.process_count()})')
