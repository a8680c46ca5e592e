"""What every evaluator shares: the registry of types, the generic options, and the sharded evaluation pass.

An evaluator is built from one named entry of ``config.evals`` (as big_vision's ``evals`` block)::

    config.evals.knn = dict(type='knn', num_examples=-1, num_train=2048, num_classes=8)

Generic options, read here for every type (a type's own options are declared in its ``OPTIONS``):

  type          registered type name (default: the entry's name).
  prefix        what the logged keys start with (default ``'<name>/'``: ``knn/top1``, ``classifier/top1``).
  every_steps   run every this many training steps and at the last one; default ``config.eval_every_steps``;
                0 never runs it during training (``python -m cast_jax.evaluate`` still can, by name).
  split         the split evaluated (default ``config.data.eval_split``).
  num_examples  how many examples of ``split``, spread evenly over it; -1 (the default): all of them.
  batch_size    global batch of the evaluation pass (default ``config.eval_batch_size``).

A new type (e.g. a dense mIoU evaluator) is a subclass decorated with ``@register('name')`` in a module that
``cast_jax.evaluators`` imports; the training loop never changes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Iterator, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from cast_jax import xla_cpu
from cast_jax.data.augment import IMAGENET_MEAN, IMAGENET_STD
from cast_jax.models.hierarchy import encoder_forward
from cast_jax.models.variants import ModelSpec
from cast_jax.train import device_superpixels, inputs, sharding

GENERIC_OPTIONS = ('type', 'prefix', 'every_steps', 'split', 'num_examples', 'batch_size')

REGISTRY: dict[str, type['Evaluator']] = {}


def register(type_name: str) -> Callable[[type['Evaluator']], type['Evaluator']]:
  """Class decorator: makes ``type_name`` usable as ``config.evals.<name>.type``."""

  def add(cls):
    if type_name in REGISTRY and REGISTRY[type_name] is not cls:
      raise ValueError(f'evaluator type {type_name!r} is registered twice ({REGISTRY[type_name]} and {cls})')
    REGISTRY[type_name] = cls
    cls.type_name = type_name
    return cls

  return add


@dataclasses.dataclass(eq=False)
class EvalContext:
  """What every evaluator of one run shares: the config (its ``data`` block), the model and its mesh.

  ``classifier``: the model returns ``logits`` worth a top-1. The jitted forward is built once here, so that
  evaluators using the same batch size share one compiled program.
  """

  config: Any
  model: Any
  mesh: Any
  uses_superpixels: bool
  classifier: bool = False

  @functools.cached_property
  def forward(self) -> Callable:
    """(variables, images (B, H, W, 3), superpixels (B, H, W)) -> encoder_forward's dict, batch-sharded."""
    return xla_cpu.jit(encoder_forward(self.model, self.uses_superpixels),
                   out_shardings=sharding.batch_sharding(self.mesh))

  @functools.cached_property
  def superpixels_on_device(self) -> bool:
    """Whether the batches carry pixels and the maps are made on the device (``data.superpixels_on_device``)."""
    return device_superpixels.enabled(self.config, self.uses_superpixels)

  @functools.cached_property
  def prepare(self) -> Callable:
    """On-device superpixels: a pixel batch -> {'image': normalised, 'superpixels': jax_slic maps}, jitted,
    batch-sharded (``device_superpixels.prepare``), capped at the model's token slots."""
    max_segments = ModelSpec.from_config(self.config.model.to_dict()).max_segments
    superpixels = device_superpixels.superpixel_fn(self.config.data, max_segments)
    return jax.jit(lambda batch: device_superpixels.prepare(batch, superpixels),
                   out_shardings=sharding.batch_sharding(self.mesh))


def variables_of(target, ema: bool = False) -> dict[str, Any]:
  """Model variables from a train state (its weights, or their EMA) or from a variables dict as is."""
  if isinstance(target, Mapping):
    if ema:
      raise ValueError('this evaluator reads the weight EMA of a train state, but got plain variables; to '
                       'evaluate a checkpoint\'s EMA load it with --ema and use the non-EMA evaluator')
    return target
  if ema:
    if getattr(target, 'ema_params', None) is None:
      raise ValueError('the evaluator has ema=True but the train state keeps no weight EMA '
                       '(only the supervised trainer with ema_decay > 0 does); remove the evaluator or set ema=False')
    return {'params': target.ema_params, 'batch_stats': target.ema_batch_stats}
  return {'params': target.params, 'batch_stats': target.batch_stats}


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Normalized (B, H, W, 3) float -> uint8 pixels."""
  pixels = (np.asarray(images, np.float32) * IMAGENET_STD + IMAGENET_MEAN) * 255.0
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


class Evaluator:
  """One named evaluation of a run.

  Subclasses set ``OPTIONS`` (their own option names -> defaults) and implement ``run``; ``restore`` lets one
  that keeps state across evaluations (a best-so-far) pick it up again when a run resumes.
  """

  type_name: ClassVar[str] = ''
  OPTIONS: ClassVar[dict[str, Any]] = {}

  def __init__(self, name: str, entry, context: EvalContext):
    entry = dict(entry.to_dict() if hasattr(entry, 'to_dict') else entry)
    allowed = set(GENERIC_OPTIONS) | set(self.OPTIONS)
    unknown = sorted(set(entry) - allowed)
    if unknown:
      raise ValueError(f'config.evals.{name}: unknown option(s) {unknown} for type {self.type_name!r}; '
                       f'it takes {sorted(allowed)}')
    config = context.config
    self.name, self.context = name, context
    self.prefix = str(entry.get('prefix', f'{name}/'))
    every = entry.get('every_steps')
    self.every_steps = int(config.eval_every_steps if every is None else every)
    self.split = entry.get('split') or config.data.eval_split
    self.num_examples = int(entry.get('num_examples', -1))
    self.batch_size = int(entry.get('batch_size') or config.eval_batch_size)
    self.options = {key: entry.get(key, default) for key, default in self.OPTIONS.items()}
    check_batch_size(f'config.evals.{name}.batch_size', self.batch_size, context.mesh)

  def due(self, step: int, last_step: int) -> bool:
    """Whether training step ``step`` (counted from 1) evaluates: every ``every_steps`` and at the last."""
    return self.every_steps > 0 and (step % self.every_steps == 0 or step == last_step)

  def run(self, target, step: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(scalars, images) of ``target`` (a train state or a variables dict) at ``step``, keys without prefix."""
    raise NotImplementedError

  def restore(self, history: list[dict[str, Any]]) -> None:
    """Picks up state from the metrics logged before a resume (dicts with 'step' and prefixed keys)."""
    del history


def check_batch_size(what: str, batch_size: int, mesh) -> None:
  devices, processes = mesh.devices.size, jax.process_count()
  if batch_size <= 0 or batch_size % devices or batch_size % processes:
    raise ValueError(f'{what}={batch_size} must be a positive multiple of the number of devices ({devices}) and '
                     f'processes ({processes}); set it (or config.eval_batch_size) to such a multiple')


def evaluation_pass(context: EvalContext, variables, split: str, num_examples: int, batch_size: int,
                    gather: tuple[str, ...] = ('features', 'label'),
                    first_batch_only: bool = False) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict]]:
  """Runs the forward over ``num_examples`` of ``split`` (all when <= 0), centre-cropped, in global batches.

  Yields, per batch, (this process's host batch, the forward's output (global arrays), the ``gather`` keys of
  every process's valid rows as numpy, padding dropped). ``gather`` names keys of the output ('features',
  'logits', ...) or of the batch ('label', ...). Every process must consume the whole iterator: each step is
  one global computation.
  """
  local = batch_size // jax.process_count()
  batches = inputs.eval_batches(context.config.data, split, local, num_examples, jax.process_index(),
                                jax.process_count(), context.uses_superpixels)
  for batch in batches:
    if context.superpixels_on_device:
      # Pixels in, maps made on the device; the host batch gets the normalised images and the maps back (this
      # process's rows), so that evaluators drawing pictures see what the model saw.
      keys = [k for k in ('image', device_superpixels.PIXELS_KEY) if k in batch]
      device_batch = context.prepare(sharding.global_batch({k: batch[k] for k in keys}, context.mesh))
      local = multihost_utils.global_array_to_host_local_array(device_batch, context.mesh, P(sharding.DATA_AXES))
      batch = {k: v for k, v in batch.items() if k != device_superpixels.PIXELS_KEY}
      batch.update({k: np.asarray(v) for k, v in local.items()})
    else:
      device_batch = sharding.global_batch({'image': batch['image'], 'superpixels': batch['superpixels']},
                                           context.mesh)
    out = context.forward(variables, device_batch['image'], device_batch['superpixels'])
    wanted = {key: (out[key] if key in out else batch[key]) for key in gather}
    wanted['mask'] = batch['mask']
    gathered = multihost_utils.process_allgather(wanted, tiled=True)
    keep = np.asarray(gathered.pop('mask'), bool)
    yield batch, out, {key: np.asarray(value)[keep] for key, value in gathered.items()}
    if first_batch_only:
      return


def concatenate(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Per-batch dicts of rows -> one dict of all rows."""
  return {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
