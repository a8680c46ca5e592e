"""The training state: everything a checkpoint must hold to continue a run exactly."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar (optimizer steps taken). params / batch_stats: the trained model's variables.
  opt_state: the optax state. rng: a raw uint32 PRNG key; step ``s`` uses ``fold_in(rng, s)``, so a resumed
  run draws the same randomness as an uninterrupted one. ema_params / ema_batch_stats: MoCo's momentum
  encoder (or an EMA of the weights for supervised training); None when unused."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None
  ema_batch_stats: Any = None

  def apply_optimizer(self, optimizer: optax.GradientTransformation, grads, batch_stats) -> 'TrainState':
    """One optimizer step: step + 1, the updated parameters and optimizer state, the step's BN statistics."""
    updates, opt_state = optimizer.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state,
                        batch_stats=batch_stats)

  def step_rngs(self, count: int) -> list[jax.Array]:
    """``count`` independent keys for this step."""
    return list(jax.random.split(jax.random.fold_in(self.rng, self.step), count))


def ema(average, new, decay):
  """decay * average + (1 - decay) * new, leaf by leaf over ``average``'s structure."""
  return jax.tree_util.tree_map(lambda a, n: decay * a + (1.0 - decay) * n, average, new)


class GradientStep:
  """``train_step`` = ``gradients`` then ``apply_gradients``, for the objectives (kept apart so that tests can
  apply an optimizer to gradients computed elsewhere, such as the original's)."""

  learning_rate_fn: Any = None

  def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict[str, Any]]:
    grads, aux = self.gradients(state, batch)
    return self.apply_gradients(state, grads, aux)

  def metrics(self, state: TrainState, **values) -> dict[str, Any]:
    """``values`` plus the learning rate of the step just taken, when the objective knows its schedule."""
    if self.learning_rate_fn is not None:
      values['lr'] = self.learning_rate_fn(state.step)
    return values
