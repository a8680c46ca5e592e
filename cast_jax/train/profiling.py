"""``config.profile``: a ``jax.profiler`` trace of a few training steps, written into the run folder.

    profile.num_steps = 3     # 0 (the default): no trace
    profile.first_step = 10   # after compilation and warm-up; a run resumed later starts at its first step

The trace lands in ``<workdir>/profile/plugins/profile/<time>/`` (``*.xplane.pb``, ``*.trace.json.gz``); open it
with TensorBoard's profile plugin (``tensorboard --logdir=<workdir>/profile``) or Perfetto.
"""

from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax


class StepProfiler:
  """Call ``before(step)`` ahead of each step and ``after(step, outputs)`` once it is dispatched."""

  def __init__(self, profile: Optional[Any], directory, start_step: int = 0):
    """profile: the config's ``profile`` block (None: never trace); start_step: where this run (re)starts."""
    self.num_steps = int(profile.num_steps) if profile is not None else 0
    if self.num_steps < 0:
      raise ValueError(f'config.profile.num_steps must be >= 0 (0 = no trace), got {self.num_steps}')
    self.first = max(int(profile.first_step), start_step) if self.num_steps else -1
    self.directory = pathlib.Path(directory)
    self.active = False

  def before(self, step: int) -> None:
    if step == self.first:
      self.directory.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.directory))
      self.active = True

  def after(self, step: int, outputs) -> None:
    # Steps are dispatched asynchronously: wait for the last one, or the trace would stop before it ran.
    if self.active and step + 1 >= self.first + self.num_steps:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    """Ends the trace (also on an error half-way through the traced steps); does nothing when none runs."""
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
