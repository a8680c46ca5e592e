"""What the trainer logs every ``log_every_steps``: each metric averaged over the steps since the last log.

Built on ``clu.metrics``: an ``Average`` per metric, except schedule values (learning rate, MoCo momentum), which
are the value of the logged step itself (``LastValue``): their mean over an interval is no value the run used.
The accumulation stays on the devices (no host sync per step); ``compute()`` fetches the means once per log.
A resumed run starts a new interval at the checkpoint's step, so when checkpoint_every_steps is not a multiple of
log_every_steps, the first mean after a resume covers fewer steps than the uninterrupted run's.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
from clu import metrics as clu_metrics

SCHEDULE_KEYS = ('lr', 'momentum')


class IntervalMeans:
  """``add(step_metrics)`` each step, ``compute()`` at a log step (means since the last ``reset``)."""

  def __init__(self):
    self._collection_type = None
    self._keys: tuple[str, ...] = ()
    self._accumulated: Optional[clu_metrics.Collection] = None
    self.steps = 0

  def _collection_for(self, keys: tuple[str, ...]):
    if keys != self._keys:
      fields = {k: (clu_metrics.LastValue if k in SCHEDULE_KEYS else clu_metrics.Average).from_output(k)
                for k in keys}
      self._collection_type, self._keys = clu_metrics.Collection.create(**fields), keys
    return self._collection_type

  def add(self, step_metrics: Mapping[str, Any]) -> None:
    keys = tuple(sorted(step_metrics))
    if self._accumulated is not None and keys != self._keys:
      raise ValueError(f'the step metrics changed from {list(self._keys)} to {list(keys)} within one log interval')
    single = self._collection_for(keys).single_from_model_output(**step_metrics)
    self._accumulated = single if self._accumulated is None else self._accumulated.merge(single)
    self.steps += 1

  def compute(self) -> dict[str, float]:
    """Host floats: the mean of each metric over the interval (the last value of the schedule ones)."""
    if self._accumulated is None:
      raise ValueError('no step was added since the last log')
    return {k: float(v) for k, v in jax.device_get(self._accumulated.compute()).items()}

  def reset(self) -> None:
    self._accumulated, self.steps = None, 0
