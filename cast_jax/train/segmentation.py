"""The Segmenter's fine-tuning objective (``segmenter/segm/engine_cast.train_one_epoch``), as a step.

loss = mean over the batch's valid pixels (label != 255) of -log_softmax(masks)[label], the full-resolution
masks of ``SuperpixSegmenter`` (``CrossEntropyLoss(ignore_index=255)``). Train mode throughout (batch-statistic
BatchNorm over the global batch, dropout on). The optimizer is ``torch.optim.SGD(momentum 0.9, nesterov,
weight_decay 0)`` over every parameter with the polynomial rate ``(lr0 - min_lr)(1 - k / iter_max)^0.9 + min_lr``
stepped after every update (``segmenter_optimizer``, ``segmenter_schedule``).

The training loop, data and evaluation are not here; this module is the objective a loop calls.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cast_jax import xla_cpu
from cast_jax import loading
from cast_jax.models.variants import ModelSpec
from cast_jax.train import optim
from cast_jax.train.schedules import polynomial
from cast_jax.train.state import GradientStep, TrainState

IGNORE_LABEL = 255


def check_labels(labels, num_classes: int, what: str = 'labels') -> None:
  """Raises ValueError when a concrete label map holds an id outside [0, num_classes) other than 255."""
  if isinstance(labels, jax.core.Tracer):
    return
  values = np.unique(np.asarray(labels))
  bad = [int(v) for v in values if v != IGNORE_LABEL and not 0 <= v < num_classes]
  if bad:
    raise ValueError(f'{what} hold class ids {bad[:10]} outside [0, {num_classes}) that are not the ignore label '
                     f'{IGNORE_LABEL}; map them to 255 (ignored) or build the model with more classes.')


def masked_cross_entropy(logits, labels, num_classes: Optional[int] = None):
  """``CrossEntropyLoss(ignore_index=255)``: mean over non-ignored pixels of the per-pixel cross-entropy.

  logits: (B, H, W, C) float; labels: (B, H, W) int. Under jit an id outside [0, C) other than 255 cannot raise:
  the loss is then NaN (never silently dropped). A batch with no valid pixel gives NaN, as in PyTorch.
  """
  num_classes = num_classes or logits.shape[-1]
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f'logits {logits.shape} and labels {labels.shape} must cover the same pixels')
  check_labels(labels, num_classes)
  labels = labels.astype(jnp.int32)
  ignored = labels == IGNORE_LABEL
  in_range = (labels >= 0) & (labels < num_classes)
  safe = jnp.where(in_range, labels, 0)
  per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  valid = (~ignored) & in_range
  loss = jnp.sum(jnp.where(valid, per_pixel, 0.0)) / jnp.sum(valid)
  return jnp.where(jnp.any(~ignored & ~in_range), jnp.nan, loss)


def iterations(train_size: int, batch_size: int, epochs: int) -> int:
  """``iter_max`` of the original: ceil(N / B) updates per epoch (its last batch is not dropped)."""
  return math.ceil(train_size / batch_size) * epochs


def segmenter_schedule(base_lr: float = 1e-3, iter_max: int = 1, min_lr: float = 1e-5, power: float = 0.9):
  """``PolynomialLR`` stepped per update: update k (0-based) uses (base - min)(1 - k / iter_max)^power + min."""
  return polynomial(base_lr, iter_max, power, min_lr)


def segmenter_optimizer(learning_rate, params, momentum: float = 0.9, kind: str = 'sgd',
                        weight_decay: float = 0.0) -> optax.GradientTransformation:
  """kind 'sgd' (the original): timm ``create_optimizer(opt='sgd')``, SGD momentum 0.9, Nesterov, weight decay
  0, one group of every parameter. kind 'adamw': PyTorch's AdamW on every parameter with decoupled
  ``weight_decay``, an option for short schedules (the built-in demo), not the original's recipe."""
  labels = jax.tree_util.tree_map(lambda _: 'all', params)
  trainable = jax.tree_util.tree_map(lambda _: True, params)
  groups = {'all': optim.Group(1.0, weight_decay)}
  if kind == 'adamw':
    return optim.adamw_groups(learning_rate, groups, labels, trainable)
  if kind != 'sgd':
    raise ValueError(f"config.optimizer must be 'sgd' (the Segmenter's) or 'adamw' for the segmentation trainer; "
                     f'got {kind!r}')
  if weight_decay:
    raise ValueError('the Segmenter trains SGD without weight decay; config.weight_decay must be 0 with '
                     "config.optimizer='sgd'")
  return optim.sgd_groups(learning_rate, groups, labels, trainable, momentum=momentum, nesterov=True)


@dataclasses.dataclass(frozen=True)
class SegmentationObjective(GradientStep):
  """model: ``SuperpixSegmenter`` (returns {'masks': (B, H, W, C), ...}); batches hold 'image' (B, H, W, 3),
  'superpixels' (B, H, W) and ``label_key`` (B, H, W) class ids with 255 ignored, and optionally 'mask' (B,)
  bool: False on the padding rows of an epoch's padded short batch, which then count neither in the loss (their
  labels are all 255) nor in the train-mode BatchNorm statistics, as the original's short batch has only its
  real images."""

  model: Any
  optimizer: optax.GradientTransformation
  num_classes: int
  learning_rate_fn: Callable[[Any], Any] | None = None
  label_key: str = 'label'

  def init_state(self, variables, rng) -> TrainState:
    copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)  # noqa: E731
    params, stats = variables['params'], variables.get('batch_stats', {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=copy(params), batch_stats=copy(stats),
                      opt_state=self.optimizer.init(params), rng=jnp.asarray(rng))

  def loss(self, params, batch_stats, batch, rng):
    """(loss, aux) of one train-mode forward pass; aux holds the updated BatchNorm statistics and the masks."""
    out, updates = self.model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'],
                                    batch['superpixels'], train=True, sample_mask=batch.get('mask'),
                                    mutable=['batch_stats'], rngs={'dropout': rng})
    loss = masked_cross_entropy(out['masks'], batch[self.label_key], self.num_classes)
    return loss, {'batch_stats': updates['batch_stats'], 'masks': out['masks']}

  def gradients(self, state: TrainState, batch):
    """(grads, aux) at ``state``: aux has 'loss', 'batch_stats' (after this step's forward) and 'masks'."""
    (rng,) = state.step_rngs(1)
    (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, state.batch_stats, batch, rng)
    aux['loss'] = loss
    return grads, aux

  def apply_gradients(self, state: TrainState, grads, aux) -> tuple[TrainState, dict[str, Any]]:
    new_state = state.apply_optimizer(self.optimizer, grads, aux['batch_stats'])
    return new_state, self.metrics(state, loss=aux['loss'])

  def jit_step(self, **jit_kwargs):
    """The jitted ``train_step(state, batch) -> (state, metrics)``; the state's buffers are donated."""
    return xla_cpu.jit(self.train_step, donate_argnums=(0,), **jit_kwargs)


def start_segmenter(fresh, target: ModelSpec, source: ModelSpec, loaded, *, seed: int = 0,
                    path: str = 'the checkpoint') -> tuple[dict[str, Any], list[str]]:
  """The Segmenter's start from an encoder checkpoint (``train_cast.py``: the published DeiT ``cast_deit``).

  The encoder subtree of ``fresh`` (a ``SuperpixSegmenter``'s variables) gets ``loading.CROSS_KIND``'s rules for
  its kind (``block_fusion`` with PyTorch's default init, ``norm``/``head`` dropped, the position table resampled
  when the grid differs); the decoder keeps its fresh values (the original's initialisation). A checkpoint of a
  Segmenter itself loads with ``loading.load`` directly (the trees are the same). Returns (variables, names of the
  leaves kept fresh).
  """
  if not target.seg_classes:
    raise ValueError(f'start_segmenter builds a Segmenter; the target spec has seg_classes=0 ({target})')
  if source.seg_classes:
    raise ValueError(f'{path} already holds a Segmenter; load it with cast_jax.loading.load instead')
  make = loading.CROSS_KIND.get((source.kind, target.kind))
  rules = make() if make is not None else loading.StartRules(kinds=(target.kind,), moco=None,
                                                             skip_unexpected=('params/head/.*',))
  collections = [c for c in ('params', 'batch_stats') if c in fresh]
  for collection in collections:
    if 'encoder' not in fresh[collection] or (collection == 'params' and 'decoder' not in fresh[collection]):
      raise ValueError(f'fresh variables are not a Segmenter\'s (no {collection}/encoder and decoder subtrees)')
  encoder_fresh = {c: fresh[c]['encoder'] for c in collections}
  encoder, kept = loading.start_from(encoder_fresh, target.replace(seg_classes=0), source, loaded, rules, seed=seed,
                                     path=path)
  out = {}
  for collection in collections:
    out[collection] = {k: v for k, v in fresh[collection].items() if k != 'encoder'}
    out[collection]['encoder'] = encoder.get(collection, {})
  kept = [f'{n.split("/", 1)[0]}/encoder/{n.split("/", 1)[1]}' for n in kept]
  kept += [n for n in loading.flat_names(fresh) if n.split('/')[1] != 'encoder']
  return out, sorted(kept)
