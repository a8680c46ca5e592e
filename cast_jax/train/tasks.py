"""What differs between the trainers: objective, optimizer, schedule and input pipeline, behind one ``Task``.

``loop.train_and_evaluate`` runs any task with the same mesh, checkpointing, metrics and evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator


from cast_jax.data import recipes, supervised as supervised_data
from cast_jax.models.variants import ModelSpec
from cast_jax.train import inputs, optim, schedules
from cast_jax.train.moco import BATCH_KEYS as MOCO_BATCH_KEYS, MoCoObjective
from cast_jax.train.supervised import SupervisedObjective


@dataclasses.dataclass
class Task:
  """objective: has init_state / train_step. batch_keys: what the step reads from a host batch.
  make_iterator(local_batch, process_index, process_count): a resumable iterator of host batches.
  classifier: whether the model has a head worth top-1 at evaluation. trainable_labels: 'trainable' /
  'frozen' per parameter, as the optimizer routes them."""

  objective: Any
  batch_keys: tuple[str, ...]
  make_iterator: Callable[[int, int, int], Iterator[dict[str, Any]]]
  classifier: bool = False
  trainable_labels: Any = None


def moco_task(config, spec: ModelSpec, model, params, lengths) -> Task:
  steps_per_epoch, total_steps, warmup_steps = lengths
  lr_fn = schedules.warmup_cosine(config.base_lr * config.batch_size / 256, warmup_steps, total_steps)
  labels = optim.trainable_labels(spec, params)
  objective = MoCoObjective(model=model, optimizer=optim.adamw(lr_fn, labels, config.weight_decay, optim.decay_all),
                            momentum_fn=schedules.momentum_cosine(config.momentum, total_steps),
                            temperature=config.temperature, learning_rate_fn=lr_fn)
  def make_iterator(local_batch, index, count):
    return inputs.moco_train_iterator(config.data, local_batch, config.seed, index, count, spec.uses_superpixels)

  return Task(objective, MOCO_BATCH_KEYS, make_iterator,
              trainable_labels=labels)


def supervised_task(config, spec: ModelSpec, model, params, lengths) -> Task:
  """DeiT: lr = base_lr x batch / 512, per-epoch cosine with warmup (the original's off-by-one kept unless
  config.lr_original_off_by_one is False), decay except 1-D / bias / pos_embed / cls_token, weight EMA."""
  steps_per_epoch, total_steps, _ = lengths
  total_epochs = max(total_steps // steps_per_epoch, 1)
  peak_lr = config.base_lr * config.batch_size / 512
  if config.get('lr_schedule', 'deit_epoch') == 'deit_epoch':
    lr_fn = schedules.deit_epoch_lr(peak_lr, config.warmup_epochs, total_epochs, steps_per_epoch,
                                    original_off_by_one=config.lr_original_off_by_one)
  elif config.lr_schedule == 'warmup_cosine':  # per step: short schedules lose no epoch at the warm-up rate
    lr_fn = schedules.warmup_cosine(peak_lr, lengths[2], total_steps)
  else:
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; choose 'deit_epoch' or 'warmup_cosine'")
  labels = optim.trainable_labels(spec, params)
  optimizer = optim.adamw(lr_fn, labels, config.weight_decay, optim.decay_matrices)
  objective = SupervisedObjective(model=model, optimizer=optimizer, num_classes=spec.num_classes,
                                  label_smoothing=config.label_smoothing, ema_decay=config.ema_decay or None,
                                  learning_rate_fn=lr_fn)
  data = config.data

  def make_iterator(local_batch, index, count):
    recipe = supervised_data.SupervisedTrain(inputs.superpixel_fn(data), size=data.image_size,
                                             erasing_prob=config.random_erasing, crop_scale=tuple(data.crop_scale))
    if not config.randaugment:
      recipe = dataclasses.replace(recipe, randaugment=None)
    source = inputs.make_source(data, data.train_split)
    # One original "GPU" per process: mixing draws one lambda per process batch, as each GPU did.
    dataset = supervised_data.make_train_dataset(
        source, recipe, spec.num_classes, per_replica_batch=local_batch, ranks=(index,), num_replicas=count,
        seed=config.seed, num_workers=data.num_workers, repeats=config.repeated_augmentation,
        round_to=min(256, local_batch * count), read_threads=data.get('read_threads'),
        label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
        prob=config.mix_prob)
    return iter(dataset)

  return Task(objective, ('image', 'superpixels', 'targets'), make_iterator, classifier=True,
              trainable_labels=labels)


def linear_probe_task(config, spec: ModelSpec, model, params, lengths) -> Task:
  """MoCo-v3 ``main_lincls``: frozen backbone in inference mode, a linear head on the normalized cls feature,
  SGD momentum 0.9 without weight decay, lr = base_lr x batch / 256 on a per-epoch cosine."""
  steps_per_epoch, total_steps, _ = lengths
  lr_fn = schedules.epoch_cosine(config.base_lr * config.batch_size / 256, max(total_steps // steps_per_epoch, 1),
                                 steps_per_epoch)
  labels = optim.head_only_labels(params)
  objective = SupervisedObjective(model=model, optimizer=optim.sgd(lr_fn, labels, momentum=0.9),
                                  num_classes=spec.num_classes, label_smoothing=0.0, trainable_labels=labels,
                                  learning_rate_fn=lr_fn)
  data = config.data

  def make_iterator(local_batch, index, count):
    recipe = recipes.LinearProbeTrain(inputs.superpixel_fn(data, spec.uses_superpixels), size=data.image_size)
    return inputs.train_iterator(data, recipe, local_batch, config.seed, index, count)

  return Task(objective, ('image', 'superpixels', 'label'), make_iterator, classifier=True,
              trainable_labels=labels)


TASKS = {'moco': moco_task, 'supervised': supervised_task, 'linear_probe': linear_probe_task}


def build_task(config, spec, model, params, lengths) -> Task:
  if config.trainer not in TASKS:
    raise ValueError(f'unknown trainer {config.trainer!r}; choose one of {sorted(TASKS)}')
  return TASKS[config.trainer](config, spec, model, params, lengths)
