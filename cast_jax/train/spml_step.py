"""SPML's fine-tuning update for ``SPMLEmbedding`` (``pyscripts/train/train.py`` of the SPML fork).

One update: forward in train mode (BatchNorm batch statistics, running statistics updated), the
SoftmaxClassifier's loss (``spml_loss``), gradients, then SPML's SGD (``optim.spml_sgd_groups``: the lr folded
into the momentum buffer, coupled L2) over its four groups on ``lr_poly``. The sin-cos position tables and
``cls_token`` (in no group in the original: it gets a gradient but never moves) are not trainable.
The functions are pure and jit as they are; ``spml_finetune.SPMLObjective`` runs them on the training loop.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import optax

from cast_jax.models.spml import spml_loss
from cast_jax.models.variants import ModelSpec, is_frozen
from cast_jax.train import optim, schedules


def spml_trainable(params, spec: ModelSpec):
  """Bool tree like ``params``: False for the frozen position tables and for ``encoder/cls_token``."""

  def rule(path, _):
    names = tuple(getattr(p, 'key', str(p)) for p in path)
    return not (is_frozen(spec, names) or names[-1] == 'cls_token')

  return jax.tree_util.tree_map_with_path(rule, params)


OPTIMIZERS = ('spml_sgd', 'adamw')


def spml_optimizer(params, spec: ModelSpec, base_lr: float, max_iteration: int, warmup_iteration: int = 100,
                   weight_decay: float = 1e-4, momentum: float = 0.9,
                   kind: str = 'spml_sgd') -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """SPML's SGD over backbone weights x1 / biases x2 / classifier weights x10 / biases x20, on ``lr_poly``.

  kind 'adamw' swaps only the update rule: PyTorch's AdamW (decoupled decay) over the same groups, rates, frozen
  parameters and schedule; an option for short schedules (the built-in demo), not SPML's recipe.
  Returns the optimizer and the schedule (iteration -> base lr). The classifier must sit under ``classifier``.
  """
  if kind not in OPTIMIZERS:
    raise ValueError(f"config.optimizer must be one of {OPTIMIZERS} for the spml_finetune trainer ('spml_sgd': "
                     f"SPML's own); got {kind!r}")
  lr_fn = schedules.spml_lr_poly(base_lr, max_iteration, warmup_iteration)
  labels = optim.group_labels(params, optim.spml_group_rule())
  groups, trainable = optim.spml_groups(weight_decay), spml_trainable(params, spec)
  if kind == 'adamw':
    return optim.adamw_groups(lr_fn, groups, labels, trainable), lr_fn
  return optim.spml_sgd_groups(lr_fn, groups, labels, trainable, momentum=momentum), lr_fn


def spml_gradients(model: nn.Module, num_classes: int, reduction: str = 'global', groups: int = 1):
  """fn(params, batch_stats, images (B,H,W,3), superpixels (B,h,w), labels (B,H',W'), rng) ->
  (loss, grads, new batch_stats). Labels >= num_classes are ignored like 255."""

  def fn(params, batch_stats, images, superpixels, labels, rng):
    def loss_fn(p):
      out, updates = model.apply({'params': p, 'batch_stats': batch_stats}, images, superpixels, train=True,
                                 mutable=['batch_stats'], rngs={'dropout': rng})
      return spml_loss(out['logits'], labels, num_classes, reduction, groups), updates['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, new_stats

  return fn


def spml_train_step(model: nn.Module, optimizer: optax.GradientTransformation, num_classes: int,
                    reduction: str = 'global', groups: int = 1, gradients: Optional[Callable] = None):
  """fn(params, batch_stats, opt_state, images, superpixels, labels, rng) ->
  (params, batch_stats, opt_state, loss, grads): one SPML update (jit it; shapes are static)."""
  gradients = gradients or spml_gradients(model, num_classes, reduction, groups)

  def step(params, batch_stats, opt_state, images, superpixels, labels, rng):
    loss, grads, new_stats = gradients(params, batch_stats, images, superpixels, labels, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss, grads

  return step
