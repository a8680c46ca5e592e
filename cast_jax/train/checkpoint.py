"""Orbax checkpoints of the train state plus the data iterator's position.

Each checkpoint is ``<workdir>/checkpoints/<step>/{state,data}``; orbax writes into a temporary directory
and renames it when complete, so a run killed mid-save leaves the previous checkpoint intact and no partial
one is ever restored. The data iterator state comes from process 0: every process runs the same pipeline
with the same seed and batch count, so their positions are equal.
"""

from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """save / restore / latest_step for one workdir; keeps the newest ``keep`` checkpoints."""

  def __init__(self, workdir, keep: int = 3):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'data'))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: Optional[dict] = None) -> None:
    """Starts writing (asynchronously once the arrays are copied off the devices)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {}))
    self._manager.save(step, args=args)

  def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
    """abstract_state: a tree of jax.ShapeDtypeStruct with shardings (where to put each restored array)."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored['state'], restored['data'] or {}

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(tree, shardings) -> Any:
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
