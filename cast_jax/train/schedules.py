"""The lengths of a run (``Schedule``) and the learning-rate and momentum schedules of the original recipes.

MoCo updates both every iteration from the fractional epoch ``t = epoch + i / iters_per_epoch``; with
``step = t * steps_per_epoch`` the formulas below are the same functions of the step count. DeiT and the
linear probe change the rate once per epoch; the Segmenter and SPML per step on a polynomial.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

ROUNDING = {'round': lambda x: int(round(x)), 'floor': math.floor, 'ceil': math.ceil}


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A run's length in optimizer steps.

  steps_per_epoch: batches per epoch; ``floor(N / B)`` when the short last batch is dropped (PyTorch
  ``drop_last=True``), ``ceil(N / B)`` when it is kept (``partial_last_batch``: the Segmenter's
  ``drop_last=False``, whose short batch counts in the schedule). total_steps: all steps of the run.
  warmup_steps: ``warmup_epochs x steps_per_epoch`` rounded by ``rounding`` ('round', 'floor', 'ceil').
  """

  steps_per_epoch: int
  total_steps: int
  warmup_steps: int = 0
  partial_last_batch: bool = False

  def __post_init__(self):
    if self.steps_per_epoch <= 0 or self.total_steps <= 0:
      raise ValueError(f'steps_per_epoch and total_steps must be positive; got {self.steps_per_epoch}, '
                       f'{self.total_steps}')
    if not 0 <= self.warmup_steps <= self.total_steps:
      raise ValueError(f'warmup_steps must be in [0, total_steps={self.total_steps}]; got {self.warmup_steps}')

  @classmethod
  def from_lengths(cls, train_size: int, batch_size: int, num_epochs: float, warmup_epochs: float = 0.0, *,
                   steps_per_epoch: int = -1, total_steps: int = -1, partial_last_batch: bool = False,
                   rounding: str = 'round') -> 'Schedule':
    """From a dataset size and epochs; positive ``steps_per_epoch`` / ``total_steps`` override the counts."""
    if rounding not in ROUNDING:
      raise ValueError(f'unknown rounding {rounding!r}; choose one of {sorted(ROUNDING)}')
    if steps_per_epoch <= 0:
      per_epoch = math.ceil if partial_last_batch else math.floor
      steps_per_epoch = per_epoch(train_size / batch_size)
      if steps_per_epoch <= 0:
        raise ValueError(f'{train_size} training examples cannot fill one batch of {batch_size}; use a smaller '
                         'batch_size or keep the partial last batch')
    if total_steps <= 0:
      total_steps = ROUNDING[rounding](num_epochs * steps_per_epoch)
    warmup = min(ROUNDING[rounding](warmup_epochs * steps_per_epoch), total_steps)
    return cls(steps_per_epoch, total_steps, warmup, partial_last_batch)

  @classmethod
  def from_config(cls, config, train_size: int) -> 'Schedule':
    """From a training config: batch_size, num_epochs, warmup_epochs, steps_per_epoch and total_steps (-1:
    derived), and the optional partial_last_batch (default False) and schedule_rounding (default 'round')."""
    return cls.from_lengths(train_size, config.batch_size, config.num_epochs, config.warmup_epochs,
                            steps_per_epoch=config.steps_per_epoch, total_steps=config.total_steps,
                            partial_last_batch=bool(config.get('partial_last_batch', False)),
                            rounding=config.get('schedule_rounding', 'round'))

  def __iter__(self):
    """(steps_per_epoch, total_steps, warmup_steps): unpacks like the tuple that tasks used to receive."""
    return iter((self.steps_per_epoch, self.total_steps, self.warmup_steps))

  @property
  def total_epochs(self) -> int:
    """Whole epochs in the run (at least 1): the per-epoch schedules' horizon."""
    return max(self.total_steps // self.steps_per_epoch, 1)

  def epoch(self, step):
    """The (0-based) epoch a step belongs to."""
    return jnp.floor_divide(jnp.asarray(step), self.steps_per_epoch)

  # The recipes' schedules over this run's lengths (the functions below, with the lengths filled in).

  def warmup_cosine(self, base_lr: float):
    """MoCo-v3: per step, linear warm-up over ``warmup_steps`` then a half cosine to 0."""
    return warmup_cosine(base_lr, self.warmup_steps, self.total_steps)

  def momentum_cosine(self, base_momentum: float):
    return momentum_cosine(base_momentum, self.total_steps)

  def deit_epoch(self, base_lr: float, warmup_epochs: int, original_off_by_one: bool = True, **kwargs):
    """DeiT: per epoch, timm's cosine with warm-up (and the original's off-by-one unless disabled)."""
    return deit_epoch_lr(base_lr, warmup_epochs, self.total_epochs, self.steps_per_epoch,
                         original_off_by_one=original_off_by_one, **kwargs)

  def epoch_cosine(self, base_lr: float):
    """The linear probe: per epoch, a cosine to 0."""
    return epoch_cosine(base_lr, self.total_epochs, self.steps_per_epoch)

  def polynomial(self, base_lr: float, power: float = 0.9, min_lr: float = 0.0):
    """The Segmenter: per step, ``(base - min)(1 - k / total_steps)^power + min`` (iter_max = total_steps)."""
    return polynomial(base_lr, self.total_steps, power, min_lr)

  def spml_poly(self, base_lr: float, power: float = 0.9):
    """SPML: per step, ``lr_poly`` with ``warmup_steps`` of warm-up and max_iteration = total_steps."""
    return spml_lr_poly(base_lr, self.total_steps, self.warmup_steps, power)


def warmup_cosine(base_lr: float, warmup_steps: int, total_steps: int):
  """lr(step): linear from 0 (the very first step has lr 0, as in the original) to ``base_lr`` over
  ``warmup_steps``, then a half cosine to 0 at ``total_steps``."""
  if total_steps <= 0:
    raise ValueError(f'total_steps must be positive; got {total_steps}')
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f'warmup_steps must be in [0, total_steps={total_steps}]; got {warmup_steps}')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = base_lr * step / max(warmup_steps, 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    cosine = base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))
    return jnp.where(step < warmup_steps, warm, cosine)

  return schedule


def momentum_cosine(base_momentum: float, total_steps: int):
  """m(step) = 1 - (1 - base) * (1 + cos(pi * step / total)) / 2: from ``base_momentum`` to 1 (MoCo-v3)."""
  if total_steps <= 0:
    raise ValueError(f'total_steps must be positive; got {total_steps}')

  def schedule(step):
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
    return 1.0 - 0.5 * (1.0 + jnp.cos(jnp.pi * progress)) * (1.0 - base_momentum)

  return schedule


def deit_epoch_lr(base_lr: float, warmup_epochs: int, total_epochs: int, steps_per_epoch: int,
                  warmup_lr: float = 1e-6, min_lr: float = 1e-5, original_off_by_one: bool = True):
  """DeiT's timm ``CosineLRScheduler`` stepped once per epoch (docs/original_behaviour.md#deit-schedule).

  sched(t) = warmup_lr + t (base - warmup_lr) / W for t < W, else min_lr + (base - min_lr)(1 + cos(pi t / E)) / 2.
  The original steps the scheduler *after* each epoch, so epoch e trains with sched(e - 1) and epoch 0 with
  warmup_lr (``original_off_by_one=True``, the default, reproduces that: the published models saw it);
  False gives epoch e sched(e).
  """

  def sched(t):
    warm = warmup_lr + t * (base_lr - warmup_lr) / max(warmup_epochs, 1)
    cosine = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + jnp.cos(jnp.pi * t / total_epochs))
    return jnp.where(t < warmup_epochs, warm, cosine)

  def schedule(step):
    epoch = jnp.floor_divide(jnp.asarray(step), steps_per_epoch).astype(jnp.float32)
    if original_off_by_one:
      return jnp.where(epoch == 0, warmup_lr, sched(epoch - 1.0))
    return sched(epoch)

  return schedule


def epoch_cosine(base_lr: float, total_epochs: int, steps_per_epoch: int):
  """lr * (1 + cos(pi * epoch / total)) / 2, constant within an epoch (MoCo-v3 ``main_lincls``)."""

  def schedule(step):
    epoch = jnp.floor_divide(jnp.asarray(step), steps_per_epoch).astype(jnp.float32)
    return base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / total_epochs))

  return schedule


def _on_host(step) -> bool:
  """A concrete step (Python or numpy number) is evaluated in float64 numpy, the original's precision for
  logged values; a traced or device step in float32 jax."""
  return isinstance(step, (int, float, np.number, np.ndarray))


def polynomial(base_lr: float, total_steps: int, power: float = 0.9, min_lr: float = 0.0):
  """The Segmenter's ``PolynomialLR``, stepped after every update: update k (0-based) uses
  ``(base_lr - min_lr) (1 - k / total_steps)^power + min_lr`` (docs/original_behaviour.md#segmenter-optimisation)."""
  if total_steps <= 0:
    raise ValueError(f'total_steps must be positive; got {total_steps}')

  def schedule(step):
    xp, dtype = (np, np.float64) if _on_host(step) else (jnp, jnp.float32)
    # (total - step) / total, not 1 - step / total: exact integers in float32 keep the end of the run precise.
    remaining = xp.clip((total_steps - xp.asarray(step, dtype)) / total_steps, 0.0, 1.0)
    return (base_lr - min_lr) * remaining ** power + min_lr

  return schedule


def spml_lr_poly(base_lr: float, max_iteration: int, warmup_iteration: int = 0, power: float = 0.9):
  """SPML's ``lr_poly`` with warm-up: for it < warmup, ``min(base (0.1 (1 - it/warmup) + it/warmup),
  base (1 - it/max)^power)``, else ``base (1 - it/max)^power`` (segmentation/README.md "Optimizer")."""
  if max_iteration <= 0:
    raise ValueError(f'max_iteration must be positive; got {max_iteration}')
  if warmup_iteration < 0:
    raise ValueError(f'warmup_iteration must be >= 0; got {warmup_iteration}')

  def schedule(step):
    xp, dtype = (np, np.float64) if _on_host(step) else (jnp, jnp.float32)
    it = xp.asarray(step, dtype)
    poly = base_lr * xp.clip((max_iteration - it) / max_iteration, 0.0, 1.0) ** power
    if warmup_iteration == 0:
      return poly
    frac = it / warmup_iteration
    warm = base_lr * (0.1 * (1.0 - frac) + frac)
    return xp.where(it < warmup_iteration, xp.minimum(warm, poly), poly)

  return schedule
