"""The DeiT supervised objective of the original (``deit/main_suppix.py`` + ``engine_suppix.py``), as a step.

loss = mean_b sum_c -t_bc log_softmax(z_b)_c, where the targets t are the batch's soft targets (mixup /
cutmix with label smoothing folded in, the recipe's ``targets``) or, without them, the label-smoothed one-hot
labels. Training mode throughout (batch-statistic BN, drop path and GraphPooling dropout on). An optional EMA
of the weights and BatchNorm statistics (timm ``ModelEma``, updated after every step) is kept in the state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from cast_jax.train.optim import TRAINABLE
from cast_jax.train.state import GradientStep, TrainState, ema


def smoothed_targets(labels, num_classes: int, smoothing: float):
  """(B,) int -> (B, C): 1 - s + s/C on the label, s/C elsewhere (timm's LabelSmoothingCrossEntropy)."""
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)


def soft_target_cross_entropy(logits, targets):
  """mean_b sum_c -t_bc log_softmax(logits_b)_c, in float32."""
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets.astype(jnp.float32)))


@dataclasses.dataclass(frozen=True)
class SupervisedObjective(GradientStep):
  """model: a classifier returning {'logits': (B, C), ...}. ema_decay: None disables the weight EMA."""

  model: Any
  optimizer: optax.GradientTransformation
  num_classes: int
  label_smoothing: float = 0.1
  ema_decay: Optional[float] = None
  learning_rate_fn: Callable[[Any], Any] | None = None
  # The linear probe gives trainable_labels: then the network runs in inference mode (running BN statistics,
  # no dropout) and only the leaves labelled trainable are differentiated (the frozen ones pass through
  # stop_gradient, so no backward pass through the backbone is built at all).
  trainable_labels: Any = None

  @property
  def backbone_train(self) -> bool:
    return self.trainable_labels is None

  def init_state(self, variables, rng) -> TrainState:
    copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)
    params, stats = variables['params'], variables.get('batch_stats', {})
    with_ema = self.ema_decay is not None
    return TrainState(step=jnp.zeros((), jnp.int32), params=copy(params), batch_stats=copy(stats),
                      opt_state=self.optimizer.init(params), rng=jnp.asarray(rng),
                      ema_params=copy(params) if with_ema else None, ema_batch_stats=copy(stats) if with_ema else None)

  def targets(self, batch):
    if 'targets' in batch:
      return batch['targets']
    return smoothed_targets(batch['label'], self.num_classes, self.label_smoothing)

  def gradients(self, state: TrainState, batch):
    (rng,) = state.step_rngs(1)

    def loss_fn(params):
      if self.trainable_labels is not None:
        params = jax.tree_util.tree_map(lambda p, l: p if l == TRAINABLE else jax.lax.stop_gradient(p), params,
                                        self.trainable_labels)
      variables = {'params': params, 'batch_stats': state.batch_stats}
      if self.backbone_train:
        out, updates = self.model.apply(variables, batch['image'], batch.get('superpixels'), train=True,
                                        mutable=['batch_stats'], rngs={'dropout': rng})
        stats = updates['batch_stats']
      else:
        out, stats = self.model.apply(variables, batch['image'], batch.get('superpixels'), train=False), \
            state.batch_stats
      loss = soft_target_cross_entropy(out['logits'], self.targets(batch))
      return loss, dict(logits=out['logits'], batch_stats=stats)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    aux['loss'] = loss
    return grads, aux

  def apply_gradients(self, state: TrainState, grads, aux) -> tuple[TrainState, dict[str, Any]]:
    new_state = state.apply_optimizer(self.optimizer, grads, aux['batch_stats'])
    if self.ema_decay is not None:
      new_state = new_state.replace(ema_params=ema(state.ema_params, new_state.params, self.ema_decay),
                                    ema_batch_stats=ema(state.ema_batch_stats, aux['batch_stats'], self.ema_decay))
    return new_state, self.metrics(state, loss=aux['loss'])
