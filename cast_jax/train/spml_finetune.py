"""SPML's fine-tuning (``SPML/pyscripts/train/train_softmax.py``) as an objective of the training loop.

The model is ``SPMLEmbedding`` with its SoftmaxClassifier (``ModelSpec(kind='cast_seg', spml_classes=N)``). One
update = ``spml_step.spml_gradients`` (train mode: BatchNorm batch statistics over the whole global batch, which
is the original's SyncBN; dropout on) and SPML's SGD (``spml_step.spml_optimizer``: lr inside the momentum
buffer, coupled L2, backbone weights x1 / biases x2 / classifier weights x10 / biases x20, ``cls_token`` and the
sin-cos position tables never move) on ``lr_poly`` with its warm-up.

The loss (``models.spml.spml_loss``) has two reductions:

* ``'per_group_mean'`` (the original): the original ran batch 4 on each of 4 GPUs, took each GPU's
  ``CrossEntropyLoss`` (mean over that GPU's valid pixels) and averaged the 4. Here the global batch is cut into
  ``groups`` consecutive parts whatever the device count, so the loss (and its gradient) is the original's on
  1, 4 or 64 devices;
* ``'global'``: the mean over every valid pixel of the global batch (what one device would compute).

They differ only when the groups hold different numbers of valid (non-255) pixels, e.g. when one group's crops
are mostly padding. ``start_spml`` builds the starting variables from a COCO MoCo ``cast_seg_pretrain`` checkpoint
(the original's ``checkpoint_0399.pth.tar``) with a fresh classifier.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cast_jax import loading
from cast_jax.models.variants import ModelSpec
from cast_jax.train import optim
from cast_jax.train.spml_step import spml_gradients, spml_optimizer, spml_trainable
from cast_jax.train.state import GradientStep, TrainState

REDUCTIONS = ('per_group_mean', 'global')


def check_reduction(reduction: str, groups: int, batch_size: int) -> None:
  """Raises ValueError naming the fix when ``reduction`` is unknown or ``groups`` does not divide the batch."""
  if reduction not in REDUCTIONS:
    raise ValueError(f'config.loss_reduction={reduction!r}; choose one of {REDUCTIONS} ("per_group_mean": the mean '
                     'of per-GPU means of the original, "global": the mean over all valid pixels)')
  if reduction == 'per_group_mean' and (groups < 1 or batch_size % groups):
    raise ValueError(f'loss_reduction "per_group_mean" cuts the global batch {batch_size} into config.loss_groups='
                     f'{groups} equal parts (the original: 4 GPUs x 4 images); choose a batch_size divisible by '
                     'loss_groups, or loss_groups=1 / loss_reduction="global"')


def trainable_labels(params, spec: ModelSpec):
  """'trainable' / 'frozen' per leaf: frozen are the sin-cos tables (``pos_embed``, ``pe_token``) and
  ``cls_token`` (in no param group in the original, so it never changes although it gets a gradient)."""
  return jax.tree_util.tree_map(lambda t: optim.TRAINABLE if t else optim.FROZEN, spml_trainable(params, spec))


@dataclasses.dataclass(frozen=True)
class SPMLObjective(GradientStep):
  """model: ``SPMLEmbedding`` with ``num_classes``; batches hold 'image' (B, H, W, 3), 'superpixels' (B, h, w)
  (the half-size map) and ``label_key`` (B, H, W) class ids, 255 ignored (ids >= num_classes too)."""

  model: Any
  optimizer: optax.GradientTransformation
  num_classes: int
  learning_rate_fn: Callable[[Any], Any] | None = None
  reduction: str = 'per_group_mean'
  groups: int = 4
  label_key: str = 'label_map'

  def init_state(self, variables, rng) -> TrainState:
    copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)  # noqa: E731
    params, stats = variables['params'], variables.get('batch_stats', {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=copy(params), batch_stats=copy(stats),
                      opt_state=self.optimizer.init(params), rng=jnp.asarray(rng))

  def gradients(self, state: TrainState, batch):
    """(grads, aux): aux has 'loss' and 'batch_stats' (after this step's forward)."""
    (rng,) = state.step_rngs(1)
    fn = spml_gradients(self.model, self.num_classes, self.reduction, self.groups)
    loss, grads, stats = fn(state.params, state.batch_stats, batch['image'], batch['superpixels'],
                            batch[self.label_key], rng)
    return grads, {'loss': loss, 'batch_stats': stats}

  def apply_gradients(self, state: TrainState, grads, aux) -> tuple[TrainState, dict[str, Any]]:
    new_state = state.apply_optimizer(self.optimizer, grads, aux['batch_stats'])
    return new_state, self.metrics(state, loss=aux['loss'])


def make_objective(model, params, spec: ModelSpec, *, base_lr: float, max_iteration: int, warmup_iteration: int,
                   weight_decay: float, momentum: float, reduction: str, groups: int,
                   optimizer_kind: str = 'spml_sgd') -> SPMLObjective:
  """The objective with SPML's optimizer (or AdamW over its groups: ``spml_optimizer``) over ``params``'s tree;
  the logged 'lr' is the schedule's base rate (the backbone weights' group; the others are x2 / x10 / x20 of it)."""
  optimizer, lr_fn = spml_optimizer(params, spec, base_lr, max_iteration, warmup_iteration, weight_decay, momentum,
                                    kind=optimizer_kind)
  return SPMLObjective(model=model, optimizer=optimizer, num_classes=spec.spml_classes, learning_rate_fn=lr_fn,
                       reduction=reduction, groups=groups)


def torch_classifier_init(classifier: dict[str, Any], seed: int) -> dict[str, Any]:
  """PyTorch's defaults for the SoftmaxClassifier's layers: ``Conv2d`` weight and bias U(+-1/sqrt(fan_in)) with
  fan_in = in_channels (1x1 kernels), BatchNorm scale 1 / bias 0 / statistics 0 and 1."""
  rng = np.random.default_rng(seed)
  params, stats = classifier['params'], classifier['batch_stats']

  def uniform(shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)

  new_params = {}
  for name, layer in params.items():
    if 'kernel' in layer:
      kernel_shape = np.shape(layer['kernel'])
      fan_in = int(np.prod(kernel_shape[:-1]))
      new_params[name] = {'kernel': uniform(kernel_shape, fan_in)}
      if 'bias' in layer:
        new_params[name]['bias'] = uniform(np.shape(layer['bias']), fan_in)
    else:
      new_params[name] = {'scale': np.ones(np.shape(layer['scale']), np.float32),
                          'bias': np.zeros(np.shape(layer['bias']), np.float32)}
  new_stats = {name: {'mean': np.zeros(np.shape(s['mean']), np.float32), 'var': np.ones(np.shape(s['var']),
                                                                                          np.float32)}
               for name, s in stats.items()}
  return {'params': new_params, 'batch_stats': new_stats}


def start_spml(fresh, target: ModelSpec, source: ModelSpec, loaded, *, seed: int = 0,
               path: str = 'the checkpoint') -> tuple[dict[str, Any], list[str]]:
  """SPML's start (``train_softmax.py`` with ``network.pretrained``): a ``cast_seg_pretrain`` MoCo checkpoint's
  query encoder into the ``cast_seg`` encoder (``loading.moco_seg_into_seg``: the 28x28 sin-cos table resampled
  to the model's grid, projector / predictor / momentum branch dropped), or a plain ``cast_seg`` encoder as it is;
  the classifier starts with PyTorch's default initialisation. An SPML checkpoint (with its classifier) loads
  with ``loading.load`` directly. Returns (variables, names of the leaves kept fresh)."""
  if not target.spml_classes:
    raise ValueError(f'start_spml builds SPML\'s model; the target spec has spml_classes=0 ({target})')
  if source.spml_classes:
    raise ValueError(f'{path} already holds an SPML model with its classifier; load it with cast_jax.loading.load')
  make = loading.CROSS_KIND.get((source.kind, 'cast_seg'))
  rules = make() if make is not None else loading.StartRules(kinds=('cast_seg',), moco=False,
                                                             why='an encoder of the same kind')
  for collection in ('params', 'batch_stats'):
    if set(fresh.get(collection, {})) != {'encoder', 'classifier'}:
      raise ValueError(f'fresh variables are not SPML\'s (expected {collection}/encoder and '
                       f'{collection}/classifier, got {sorted(fresh.get(collection, {}))})')
  encoder_fresh = {c: fresh[c]['encoder'] for c in ('params', 'batch_stats')}
  encoder, kept = loading.start_from(encoder_fresh, target.replace(spml_classes=0), source, loaded, rules,
                                     seed=seed, path=path)
  classifier = torch_classifier_init({c: fresh[c]['classifier'] for c in ('params', 'batch_stats')}, seed)
  out = {c: {'encoder': encoder.get(c, {}), 'classifier': classifier[c]} for c in ('params', 'batch_stats')}
  kept = [f'{n.split("/", 1)[0]}/encoder/{n.split("/", 1)[1]}' for n in kept]
  kept += [n for n in loading.flat_names(out) if n.split('/')[1] == 'classifier']
  return out, sorted(kept)
