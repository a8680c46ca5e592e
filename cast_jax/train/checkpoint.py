"""Orbax checkpoints of the train state plus the data iterator's position (grain's own checkpoint handler).

Each checkpoint is ``checkpoints/<step>/{state,data}`` in the run folder (``cast_jax.run_folder``); orbax
writes into a temporary directory and renames it when complete, so a run killed mid-save leaves the previous
checkpoint intact and no partial one is ever restored. ``data`` holds one file per process
(``process_<i>-of-<n>.json``), written by grain's ``CheckpointHandler``, so each process resumes its own
shard of the pipeline; a run resumes with the number of processes it saved with.
"""

from __future__ import annotations

from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp

from cast_jax.run_folder import DATA_ITEM, STATE_ITEM, RunFolder


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """Which handler writes each item: the state with orbax's standard one, the iterator with grain's."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add(STATE_ITEM, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
  registry.add(STATE_ITEM, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
  registry.add(DATA_ITEM, grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointHandler)
  registry.add(DATA_ITEM, grain.checkpoint.CheckpointRestore, grain.checkpoint.CheckpointHandler)
  return registry


class Checkpointer:
  """save / restore / latest_step for one run folder; keeps the newest ``keep`` checkpoints."""

  def __init__(self, workdir, keep: int = 3):
    if keep < 1:
      raise ValueError(f'keep_checkpoints must be at least 1 (got {keep}): resuming needs the last checkpoint')
    self.directory = RunFolder(workdir).checkpoints_dir
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(n=keep), create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=_handler_registry())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state, iterator) -> None:
    """Starts writing ``state`` (asynchronously once the arrays are copied off the devices); the iterator's
    position is written before this returns, so the caller may advance it right away."""
    args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                 DATA_ITEM: grain.checkpoint.CheckpointSave(iterator)})
    self._manager.save(step, args=args)

  def restore(self, step: int, abstract_state, iterator) -> Any:
    """The state of checkpoint ``step``; ``iterator`` is moved to the position saved with it.

    abstract_state: a tree of jax.ShapeDtypeStruct with shardings (where to put each restored array).
    """
    self._check_iterator_file(step)
    args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                                 DATA_ITEM: grain.checkpoint.CheckpointRestore(iterator)})
    restored = self._manager.restore(step, args=args)
    return restored[STATE_ITEM]

  def _check_iterator_file(self, step: int) -> None:
    """grain keeps one file per process, named by process index and count: say so when they do not match."""
    data = self.directory / str(step) / DATA_ITEM
    mine = data / f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    if data.is_dir() and not mine.exists():
      saved = sorted(p.name for p in data.glob('process_*.json'))
      raise ValueError(f'{data} holds the data position of {saved or "no process"}, not of this process '
                       f'({mine.name}): resume with the number of processes the run was saved with, or start a '
                       'new workdir with --config.init_checkpoint pointing at this one')

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def abstract_with_shardings(tree, shardings) -> Any:
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
