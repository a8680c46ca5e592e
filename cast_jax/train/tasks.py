"""What differs between the trainers: objective, optimizer, schedule and input pipeline, behind one ``Task``.

``loop.train_and_evaluate`` runs any task with the same mesh, checkpointing, metrics and evaluation.

Three words, one meaning each, used the same way in code, configs and docs:
  trainer    the name a config picks (``config.trainer``: 'moco', 'supervised', 'linear_probe', 'segmentation',
             'spml_finetune');
  task       what ``TASKS[trainer]`` builds for one run: the objective, the optimizer and schedule, the input
             pipeline and the checkpoints it may start from (a ``Task``);
  objective  the loss and its jitted step (``init_state`` / ``train_step``), e.g. ``MoCoObjective``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Iterator

import jax
import numpy as np

from cast_jax import loading
from cast_jax.data import recipes, segmentation as segmentation_data, spml as spml_data, supervised as supervised_data
from cast_jax.models.variants import ModelSpec
from cast_jax.superpixels import compute_superpixels, preset
from cast_jax.train import device_superpixels, inputs, optim, schedules, segmentation, spml_finetune
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


def trainable_labels(config, spec: ModelSpec, params) -> Any:
  """The original's trainable mask (``optim.trainable_labels``) with ``config.frozen_params`` frozen as well."""
  return optim.freeze_matching(optim.trainable_labels(spec, params), config.get('frozen_params', ()))


def refuse_frozen_params(config) -> None:
  """Trainers with their own fixed routing of frozen parameters do not read ``config.frozen_params`` (nor
  ``config.lr_multipliers``, which only the moco trainer reads)."""
  if tuple(config.get('frozen_params', ()) or ()):
    raise ValueError(f'config.frozen_params is read by the moco and supervised trainers only; the '
                     f'{config.trainer} trainer fixes which parameters train (leave frozen_params empty)')
  refuse_lr_multipliers(config)


def lr_multipliers(config) -> dict[str, float]:
  """``config.lr_multipliers``, pairs (pattern, multiplier), as a dict; a clear error for any other form."""
  pairs = config.get('lr_multipliers', ()) or ()
  try:
    return {str(pattern): float(mult) for pattern, mult in (pairs.items() if hasattr(pairs, 'items') else pairs)}
  except (TypeError, ValueError):
    raise ValueError(f"config.lr_multipliers must be pairs (pattern, multiplier), e.g. "
                     f"\"(('predictor/', 10.0),)\"; got {pairs!r}") from None


def refuse_lr_multipliers(config) -> None:
  if lr_multipliers(config):
    raise ValueError(f'config.lr_multipliers is read by the moco trainer only; the {config.trainer} trainer '
                     'has its own parameter groups (leave lr_multipliers empty)')
  if int(config.get('predictor_first_steps', 0) or 0):
    raise ValueError(f'config.predictor_first_steps is read by the moco trainer only; the {config.trainer} '
                     'trainer has no predictor (leave it 0)')


def moco_task(config, spec: ModelSpec, model, params, schedule: schedules.Schedule) -> Task:
  lr_fn = schedule.warmup_cosine(config.base_lr * config.batch_size / 256)
  labels = trainable_labels(config, spec, params)
  multipliers = lr_multipliers(config)
  predictor_first = int(config.get('predictor_first_steps', 0) or 0)
  if predictor_first:  # only the predictor's group moves for the first steps
    multipliers = {'predictor/': 1.0, **multipliers}
  if multipliers:  # e.g. {'predictor/': 10.0}; without any, the original's single group (same optimizer state)
    group_of, groups = optim.multiplier_groups(params, multipliers, config.weight_decay, predictor_first)
    optimizer = optim.adamw_groups(lr_fn, groups, group_of, labels)
  else:
    optimizer = optim.adamw(lr_fn, labels, config.weight_decay, optim.decay_all)
  objective = MoCoObjective(model=model, optimizer=optimizer,
                            momentum_fn=schedule.momentum_cosine(config.momentum),
                            temperature=config.temperature, learning_rate_fn=lr_fn)
  def make_iterator(local_batch, index, count):
    return inputs.moco_train_iterator(config.data, local_batch, config.seed, index, count, spec.uses_superpixels)

  objective, keys = on_device_superpixels(config, spec, objective, MOCO_BATCH_KEYS, ('view1', 'view2'))
  return Task(objective, keys, make_iterator, trainable_labels=labels)


def on_device_superpixels(config, spec: ModelSpec, objective, keys: tuple[str, ...],
                          device_keys: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
  """(objective, host batch keys): as given, or, under ``data.superpixels_on_device``, the objective wrapped
  to make its maps with jax_slic inside the jitted step and the keys the pixel-emitting recipes give it."""
  if not device_superpixels.enabled(config, spec.uses_superpixels):
    return objective, keys
  fn = device_superpixels.superpixel_fn(config.data, spec.max_segments)
  return device_superpixels.OnDeviceSuperpixels(objective, fn), device_keys


def supervised_task(config, spec: ModelSpec, model, params, schedule: schedules.Schedule) -> Task:
  """DeiT: lr = base_lr x batch / 512, per-epoch cosine with warmup (the original's off-by-one kept unless
  config.lr_original_off_by_one is False), decay except 1-D / bias / pos_embed / cls_token, weight EMA."""
  refuse_lr_multipliers(config)
  peak_lr = config.base_lr * config.batch_size / 512
  if config.get('lr_schedule', 'deit_epoch') == 'deit_epoch':
    lr_fn = schedule.deit_epoch(peak_lr, config.warmup_epochs, original_off_by_one=config.lr_original_off_by_one)
  elif config.lr_schedule == 'warmup_cosine':  # per step: short schedules lose no epoch at the warm-up rate
    lr_fn = schedule.warmup_cosine(peak_lr)
  else:
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; choose 'deit_epoch' or 'warmup_cosine'")
  labels = trainable_labels(config, spec, params)
  optimizer = optim.adamw(lr_fn, labels, config.weight_decay, optim.decay_matrices)
  objective = SupervisedObjective(model=model, optimizer=optimizer, num_classes=spec.num_classes,
                                  label_smoothing=config.label_smoothing, ema_decay=config.ema_decay or None,
                                  learning_rate_fn=lr_fn)
  data = config.data

  def make_iterator(local_batch, index, count):
    recipe = supervised_data.SupervisedTrain(inputs.superpixel_fn(data, spec.uses_superpixels),
                                             size=data.image_size,
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

  objective, keys = on_device_superpixels(config, spec, objective, ('image', 'superpixels', 'targets'),
                                          ('image', device_superpixels.PIXELS_KEY, 'targets'))
  return Task(objective, keys, make_iterator, classifier=True,
              trainable_labels=labels)


def linear_probe_task(config, spec: ModelSpec, model, params, schedule: schedules.Schedule) -> Task:
  """MoCo-v3 ``main_lincls``: frozen backbone in inference mode, a linear head on the normalized cls feature,
  SGD momentum 0.9 without weight decay, lr = base_lr x batch / 256 on a per-epoch cosine."""
  refuse_frozen_params(config)
  lr_fn = schedule.epoch_cosine(config.base_lr * config.batch_size / 256)
  labels = optim.head_only_labels(params)
  objective = SupervisedObjective(model=model, optimizer=optim.sgd(lr_fn, labels, momentum=0.9),
                                  num_classes=spec.num_classes, label_smoothing=0.0, trainable_labels=labels,
                                  learning_rate_fn=lr_fn)
  data = config.data

  def make_iterator(local_batch, index, count):
    recipe = recipes.LinearProbeTrain(inputs.superpixel_fn(data, spec.uses_superpixels), size=data.image_size)
    return inputs.train_iterator(data, recipe, local_batch, config.seed, index, count)

  objective, keys = on_device_superpixels(config, spec, objective, ('image', 'superpixels', 'label'),
                                          ('image', 'label'))
  return Task(objective, keys, make_iterator, classifier=True,
              trainable_labels=labels)


@dataclasses.dataclass(frozen=True)
class IgnorePaddingRows:
  """Wraps a segmentation recipe: a padding row of an epoch's short last batch (``mask`` False, added by
  ``pipeline.PadEpochToBatches``) gets an all-255 label map, so the loss ignores every one of its pixels and the
  mean is over the real rows' valid pixels, as the original's short batch. The row still passes through the
  model: train-mode BatchNorm statistics of that one step include it (a static batch shape needs it there)."""

  recipe: Any

  def __call__(self, example, rng):
    out = self.recipe(example, rng)
    if 'mask' in example and not bool(example['mask']):
      out['label_map'] = np.full_like(out['label_map'], segmentation.IGNORE_LABEL)
    return out


def segmentation_superpixel_fn(data, max_segments: int | None = None, *, wrapped: bool):
  """SEEDS as the Segmenter runs it (``generate_superpixels``: one segment per 16x16 pixels unless
  ``data.superpixel_overrides`` says otherwise). ``wrapped``: whether this function applies the x255 uint8 wrap
  itself (the sliding window's) or receives an image the recipe already wrapped (``SegmentationTrain``)."""
  overrides = dict(data.get('superpixel_overrides', {}) or {})
  invert = bool(data.get('invert_quirk', True)) and wrapped
  return functools.partial(compute_superpixels, config=preset(data.superpixels, **dict(overrides, invert_uint8=invert)),
                           max_segments=max_segments)


def segmentation_train_recipe(data, spec: ModelSpec) -> IgnorePaddingRows:
  """mmseg's train recipe (``data.segmentation.SegmentationTrain``) with the data block's crop and scales. Under
  ``data.superpixels_on_device`` it computes no map and emits the pixels SEEDS would have been handed instead
  (``superpixel_pixels``, segmented in the jitted step)."""
  on_device = bool(data.get('superpixels_on_device', False))
  if on_device:
    device_superpixels.check_method(data)
  recipe = segmentation_data.SegmentationTrain(
      None if on_device else segmentation_superpixel_fn(data, spec.max_segments, wrapped=False),
      crop_size=data.crop_size,
      img_scale=tuple(data.img_scale), ratio_range=tuple(data.ratio_range), cat_max_ratio=data.cat_max_ratio,
      reduce_zero_label=bool(data.reduce_zero_label), invert_quirk=bool(data.get('invert_quirk', True)),
      num_classes=spec.seg_classes)  # a label id the model cannot predict raises, naming the file
  return IgnorePaddingRows(recipe)


def segmentation_task(config, spec: ModelSpec, model, params, schedule: schedules.Schedule) -> Task:
  """The Segmenter (``segmenter/train_cast.py``): masked cross-entropy (255 ignored) on the full-resolution
  masks, SGD momentum 0.9 Nesterov without weight decay, the polynomial lr stepped every update over
  ``iter_max = schedule.total_steps`` (ceil(N / B) x epochs with ``partial_last_batch``), the mmseg recipe.

  Train-mode BatchNorm normalises with the statistics of the whole global batch (the original is one process);
  with ``partial_last_batch`` the batch's ``mask`` keeps the padding rows of each epoch's short batch out of
  both the loss (all-255 labels) and those statistics, so that step sees only its real images, as the original.

  ``data.superpixels_on_device`` (jax_slic): the recipe ships the uint8 pixels SEEDS would have seen beside the
  float image, and the jitted step makes the maps (``on_device_superpixels``).
  """
  refuse_frozen_params(config)
  if not spec.seg_classes:
    raise ValueError('the segmentation trainer needs config.model.seg_classes > 0 (the Segmenter decoder) and '
                     "config.model.kind='cast_seg_deit'")
  lr_fn = segmentation.segmenter_schedule(config.base_lr, schedule.total_steps, config.min_lr, config.lr_power)
  objective = segmentation.SegmentationObjective(
      model=model, optimizer=segmentation.segmenter_optimizer(lr_fn, params, momentum=config.momentum,
                                                              kind=config.get('optimizer', 'sgd'),
                                                              weight_decay=config.weight_decay),
      num_classes=spec.seg_classes, learning_rate_fn=lr_fn, label_key='label_map')
  data = config.data

  def make_iterator(local_batch, index, count):
    return inputs.train_iterator(data, segmentation_train_recipe(data, spec), local_batch, config.seed, index, count,
                                 partial_last_batch=schedule.partial_last_batch)

  labels = jax.tree_util.tree_map(lambda _: 'trainable', params)
  mask = ('mask',) if schedule.partial_last_batch else ()
  objective, keys = on_device_superpixels(config, spec, objective, ('image', 'superpixels', 'label_map') + mask,
                                          ('image', device_superpixels.PIXELS_KEY, 'label_map') + mask)
  return Task(objective, keys, make_iterator, trainable_labels=labels)


def spml_train_recipe(data, spec: ModelSpec) -> spml_data.SPMLTrain:
  """SPML's augmentation (``data.spml.SPMLTrain``) with the data block's crop, scales and superpixel count."""
  return spml_data.SPMLTrain(crop_size=data.crop_size, scale_range=tuple(data.scale_range),
                             num_superpixels=data.num_superpixels, superpixel_scale=data.superpixel_scale,
                             max_segments=spec.max_segments, num_classes=spec.spml_classes)


def spml_finetune_task(config, spec: ModelSpec, model, params, schedule: schedules.Schedule) -> Task:
  """SPML's fine-tuning (``train_softmax.py``, ``train.spml_finetune``): cross-entropy (255 and ids >= n_cls
  ignored) on the classifier's logits bilinearly upsampled to the crop, reduced as ``config.loss_reduction``
  ('per_group_mean' over ``config.loss_groups``: the original's mean of 4 per-GPU means; 'global': the mean over
  every valid pixel); SPML's SGD (lr folded into the momentum buffer, coupled L2 ``weight_decay``, groups x1 / x2 /
  x10 / x20; ``cls_token`` and the position tables frozen; ``config.optimizer='adamw'`` swaps in AdamW over the
  same groups) on ``lr_poly`` (power 0.9 over ``total_steps``, the first ``config.warmup_steps`` warmed up). Train-mode BatchNorm sees the whole global batch (SyncBN). Each epoch's
  short last batch is dropped, as the original's iterator restarts before it.
  """
  if not spec.spml_classes:
    raise ValueError("the spml_finetune trainer needs config.model.spml_classes > 0 (SPML's SoftmaxClassifier) and "
                     "config.model.kind='cast_seg'")
  refuse_frozen_params(config)
  reduction, groups = config.loss_reduction, int(config.loss_groups)
  spml_finetune.check_reduction(reduction, groups, config.batch_size)
  objective = spml_finetune.make_objective(model, params, spec, base_lr=config.base_lr,
                                           max_iteration=schedule.total_steps, warmup_iteration=config.warmup_steps,
                                           weight_decay=config.weight_decay, momentum=config.momentum,
                                           reduction=reduction, groups=groups,
                                           optimizer_kind=config.get('optimizer', 'spml_sgd'))
  data = config.data

  def make_iterator(local_batch, index, count):
    return inputs.train_iterator(data, spml_train_recipe(data, spec), local_batch, config.seed, index, count)

  return Task(objective, ('image', 'superpixels', 'label_map'), make_iterator,
              trainable_labels=spml_finetune.trainable_labels(params, spec))


def probe_head_init(variables, seed: int = 0):
  """MoCo-v3's probe head (``main_lincls``): weight N(0, 0.01), bias 0."""
  head = variables['params']['head']
  rng = np.random.default_rng(seed)
  head = {'kernel': (0.01 * rng.standard_normal(np.shape(head['kernel']))).astype(np.float32),
          'bias': np.zeros(np.shape(head['bias']), np.float32)}
  return dict(variables, params=dict(variables['params'], head=head))


def start_rules(config, spec: ModelSpec) -> tuple[tuple[loading.StartRules, ...], bool]:
  """(the checkpoints this trainer may start ``spec`` from, whether it needs one).

  moco: a MoCo checkpoint of the same kind, every leaf (encoder, projector, predictor). supervised: a non-MoCo
  checkpoint of the same kind, every leaf. linear_probe: the same kind, MoCo (its query encoder) or not; the
  ``head`` stays fresh with MoCo-v3's N(0, 0.01). segmentation: a Segmenter of the same kind and classes, every
  leaf, or an encoder checkpoint (the DeiT ``cast_deit``) into the encoder with a fresh decoder
  (``segmentation.start_segmenter``). spml_finetune: an SPML checkpoint of the same kind and classes, or the COCO
  MoCo ``cast_seg_pretrain`` (or a plain ``cast_seg``) into the encoder with a fresh classifier
  (``spml_finetune.start_spml``). Every trainer also accepts the original's cross-kind starts
  into its model kind (``loading.CROSS_KIND``: cast_deit -> cast_seg_deit, cast_seg_pretrain -> cast_seg).
  """
  cross = tuple(make() for (_, target), make in loading.CROSS_KIND.items() if target == spec.kind)
  if config.trainer == 'segmentation':
    return (loading.StartRules(kinds=(spec.kind,), moco=False, why='a Segmenter checkpoint continues'),) + cross, \
        False
  if config.trainer == 'spml_finetune':
    return (loading.StartRules(kinds=(spec.kind,), moco=False, why='an SPML fine-tuning checkpoint continues'),) + \
        cross, False
  if config.trainer == 'moco':
    return (loading.StartRules(kinds=(spec.kind,), moco=True, why='MoCo continues from a MoCo model'),) + cross, False
  if config.trainer == 'linear_probe':
    probe = loading.StartRules(kinds=(spec.kind,), dont_load=('params/head/.*',), reinit=probe_head_init,
                               why='the probe trains a new head on a frozen encoder')
    return (probe,), True
  return (loading.StartRules(kinds=(spec.kind,), moco=False, why='fine-tuning a model of the same kind'),) + cross, \
      False


def starting_variables(config, spec: ModelSpec, fresh) -> dict[str, Any]:
  """``fresh`` (the model's seeded initialisation), overlaid with ``config.init_checkpoint`` (a converted .npz or
  a workdir) under the trainer's ``start_rules``; leaves matching ``config.init_keep_fresh`` (a regex; supervised,
  moco and linear_probe trainers) keep ``fresh``'s value. Raises naming every leaf that does not fit."""
  rules, required = start_rules(config, spec)
  if not config.init_checkpoint:
    if required:
      raise ValueError(f'the {config.trainer} trainer needs --config.init_checkpoint=CKPT (a converted .npz or a '
                       f'workdir) of a {" or ".join(k for r in rules for k in r.kinds)} model')
    return fresh
  source, loaded = loading.load_variables(config.init_checkpoint)
  keep_fresh = config.get('init_keep_fresh') or ''
  try:
    re.compile(keep_fresh)
  except re.error as e:
    raise ValueError(f'--config.init_keep_fresh={keep_fresh!r} is not a regular expression ({e}); write one '
                     "matching leaf names such as 'params/head/.*'") from None
  if keep_fresh and config.trainer not in ('supervised', 'moco', 'linear_probe'):
    raise ValueError(f'--config.init_keep_fresh is for the supervised, moco and linear_probe trainers; the '
                     f'{config.trainer} trainer decides itself which leaves of its checkpoint start fresh')
  if config.trainer == 'segmentation' and not source.seg_classes:
    # An encoder checkpoint (the DeiT ``cast_deit``) under a fresh decoder: the encoder subtree only.
    loading.choose_rules(rules, source, str(config.init_checkpoint))
    variables, kept = segmentation.start_segmenter(fresh, spec, source, loaded, seed=config.seed,
                                                   path=str(config.init_checkpoint))
    if jax.process_index() == 0:
      print(f'initialised the encoder from {config.init_checkpoint}; kept fresh: {kept}', flush=True)
    return variables
  if config.trainer == 'spml_finetune' and not source.spml_classes:
    # SPML's start: an encoder (the COCO MoCo cast_seg_pretrain) under a fresh SoftmaxClassifier.
    loading.choose_rules(rules, source, str(config.init_checkpoint))
    variables, kept = spml_finetune.start_spml(fresh, spec, source, loaded, seed=config.seed,
                                               path=str(config.init_checkpoint))
    if jax.process_index() == 0:
      print(f'initialised the encoder from {config.init_checkpoint}; kept fresh: {kept}', flush=True)
    return variables
  chosen = loading.choose_rules(rules, source, str(config.init_checkpoint))
  if keep_fresh:
    chosen = dataclasses.replace(chosen, dont_load=chosen.dont_load + (keep_fresh,))
  try:
    variables, kept = loading.start_from(fresh, spec, source, loaded, chosen, seed=config.seed,
                                         path=str(config.init_checkpoint))
  except loading.LoadError as e:
    if not e.misshaped or keep_fresh:
      raise
    raise loading.LoadError(str(config.init_checkpoint), e.missing, e.unexpected, e.misshaped, e.unused_patterns,
                            hint="To train mis-shaped leaves from scratch instead (e.g. a classifier head for "
                                 "another class count), name them in --config.init_keep_fresh='params/head/.*'.") \
        from None
  if jax.process_index() == 0:
    print(f'initialised from {config.init_checkpoint}; kept fresh: {kept}', flush=True)
  return variables


# Trainers whose original drops each epoch's short last batch (their objectives take no ``mask``).
DROP_LAST = ('moco', 'supervised', 'linear_probe', 'spml_finetune')
TASKS = {'moco': moco_task, 'supervised': supervised_task, 'linear_probe': linear_probe_task,
         'segmentation': segmentation_task, 'spml_finetune': spml_finetune_task}


def build_task(config, spec, model, params, schedule: schedules.Schedule) -> Task:
  """The trainer's task; ``schedule``: the run's lengths (steps per epoch, total, warm-up)."""
  if config.trainer not in TASKS:
    raise ValueError(f'unknown trainer {config.trainer!r}; choose one of {sorted(TASKS)}')
  if not isinstance(schedule, schedules.Schedule):  # the former (steps_per_epoch, total, warmup) tuple
    schedule = schedules.Schedule(*schedule)
  if schedule.partial_last_batch and config.trainer in DROP_LAST:
    raise ValueError(f'the {config.trainer} trainer drops the short last batch of an epoch, as its original '
                     '(drop_last=True); unset config.partial_last_batch')
  return TASKS[config.trainer](config, spec, model, params, schedule)
