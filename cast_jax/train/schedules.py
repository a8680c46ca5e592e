"""Per-step learning-rate and momentum schedules of the original recipes.

The original updates both every iteration from the fractional epoch ``t = epoch + i / iters_per_epoch``.
With ``step = t * steps_per_epoch`` the formulas below are the same functions of the step count.
"""

from __future__ import annotations

import jax.numpy as jnp


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
  """DeiT's timm ``CosineLRScheduler`` stepped once per epoch (spec_supervised_seg.md §2.5).

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
