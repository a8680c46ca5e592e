"""Shared config defaults and the ``:test`` shrink, used by the files in ``configs/``.

A config file defines ``get_config(arg=None)``; ``arg == 'test'`` (``--config=configs/X.py:test``) turns any
recipe into a few steps on tiny images that run on one CPU in about a minute.
"""

from __future__ import annotations

import difflib
import importlib.util
import pathlib

import ml_collections


def eval_entry(type_name: str, num_examples: int = -1, **options) -> ml_collections.ConfigDict:
  """One ``config.evals`` entry (see cast_jax.evaluators.base for the options every type takes).

  ``every_steps`` and ``batch_size`` start unset (None: the config's ``eval_every_steps`` / ``eval_batch_size``)
  but exist, so that ``--config.evals.NAME.every_steps=N`` works on the command line; ``num_examples`` -1 is
  the whole split.
  """
  return ml_collections.ConfigDict(dict(
      type=type_name, num_examples=num_examples, every_steps=ml_collections.FieldReference(None, field_type=int),
      batch_size=ml_collections.FieldReference(None, field_type=int), **options))


def moco_defaults() -> ml_collections.ConfigDict:
  """MoCo-v3 as the original runs it for CAST on ImageNet-1K
  (docs/original_behaviour.md#moco-optimisation-and-schedules)."""
  c = ml_collections.ConfigDict()
  c.trainer = 'moco'
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      kind='cast', variant='small', image_size=224, moco=True, moco_dim=256, moco_mlp_dim=4096,
      embed_dim=ml_collections.FieldReference(None, field_type=int),
      depth=ml_collections.FieldReference(None, field_type=tuple),
      num_heads=ml_collections.FieldReference(None, field_type=int),
      num_clusters=ml_collections.FieldReference(None, field_type=tuple),
      max_segments=ml_collections.FieldReference(None, field_type=int),
      drop_path_rate=0.0, pool_dropout=0.1, fusion_dropout=0.2))
  c.compute_dtype = 'float32'  # or 'bfloat16': parameters stay float32
  c.data = ml_collections.ConfigDict(dict(
      name='imagenet2012', data_dir='', path='', train_split='train', eval_split='validation',
      image_size=224, crop_scale=(0.08, 1.0), eval_resize_ratio=256 / 224, superpixels='moco',
      superpixel_overrides={}, num_workers=8, read_threads=ml_collections.FieldReference(None, field_type=int),
      # True (with superpixels='jax_slic'): the host only decodes and augments, the jitted step and evaluation
      # forward make the maps (cast_jax.train.device_superpixels).
      superpixels_on_device=False,
      # Only for the built-in 'partworld' dataset:
      num_train_examples=0, num_eval_examples=0, source_image_size=224, seed=0, second_rendering=False,
      palette='random',
      # With second_rendering: the re-rendered view keeps the object's part colours (new textures, background
      # and clutter only).
      keep_object_colours=False,
      # The two views' appearance augmentations (view 1, view 2 where a pair; jitter_strength: ColorJitter's
      # brightness, contrast, saturation, hue), the original's values; and
      # shared_geometry (not in the original): one crop box and flip for both views.
      jitter_prob=0.8, jitter_strength=(0.4, 0.4, 0.2, 0.1), grayscale_prob=0.2, blur_probs=(1.0, 0.1),
      solarize_probs=(0.0, 0.2),
      # The blur's radius range in pixels of the view (the original's, for 224 px views).
      blur_sigma=(0.1, 2.0),
      shared_geometry=False))
  c.batch_size = 256  # global, over all devices and processes
  c.num_epochs = 100
  c.warmup_epochs = 10
  c.base_lr = 1.5e-4  # the learning rate is base_lr * batch_size / 256
  c.weight_decay = 0.1
  c.temperature = 0.2
  c.momentum = 0.99  # to 1 on a cosine
  # Parameters kept at their initial values besides the original's own (regexes matched at the start of the
  # '/'-joined path below 'params', e.g. 'encoder/patch_embed': MoCo-v3's frozen random patch projection, on
  # CAST's conv stem). Not in the original CAST recipes; read by the moco and supervised trainers.
  c.frozen_params = ()
  # Learning-rate multipliers for the moco trainer, pairs (pattern, multiplier) with patterns as above, e.g.
  # (('predictor/', 10.0),): a faster predictor (not in the original's recipes). Empty: one AdamW group.
  c.lr_multipliers = ()
  # For the first N steps only the predictor trains (the encoder and projector keep their initial values), so
  # it can align with the momentum projections before the encoder moves (not in the original; moco only).
  c.predictor_first_steps = 0
  c.steps_per_epoch = -1  # -1: len(train split) // batch_size (ceil with partial_last_batch)
  c.total_steps = -1  # -1: num_epochs * steps_per_epoch
  c.partial_last_batch = False  # keep each epoch's short batch, padded and masked (PyTorch drop_last=False)
  c.schedule_rounding = 'round'  # epochs -> steps (warmup, fractional epochs): 'round', 'floor' or 'ceil'
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.eval_at_start = False  # also evaluate the initial weights (step 0), e.g. to see what training adds
  c.eval_every_steps = 5000  # the default cadence of the evaluators below; each also runs at the last step
  c.eval_batch_size = 256  # the default global batch of the evaluators
  # Named evaluators (cast_jax.evaluators: type, split, num_examples, every_steps, prefix, options), logged as
  # <name>/<scalar>. kNN as a cheap progress signal on 10,000 validation images against 50,000 training ones.
  c.evals = ml_collections.ConfigDict(dict(
      knn=eval_entry('knn', num_examples=10000, num_train=50000, k=20, temperature=0.07, num_classes=1000),
      hierarchy=eval_entry('hierarchy_pictures', num_images=4)))
  # cpu_devices: on a host without an accelerator, how many jax devices its CPU presents (1: jax's default; the
  # core count runs the step data parallel, a slice of the batch per core: cast_jax.xla_cpu.use_cpu_devices).
  # Read by ``python -m cast_jax.main`` before jax starts; the batch sizes must divide by it.
  c.mesh = ml_collections.ConfigDict(dict(fsdp=1, cpu_devices=1))
  c.init_checkpoint = ''  # a converted .npz to start from
  # A regex of the model's leaves that keep their fresh initialisation when starting from init_checkpoint, e.g.
  # 'params/head/.*' to fine-tune a classifier on another class count ('' = every leaf comes from the checkpoint).
  c.init_keep_fresh = ''
  c.compilation_cache_dir = ''
  c.fast_compile = False  # cheaper XLA CPU code generation (tests)
  # A jax.profiler trace of num_steps steps from first_step into <workdir>/profile (0: none).
  c.profile = ml_collections.ConfigDict(dict(first_step=10, num_steps=0))
  return c


def supervised_defaults() -> ml_collections.ConfigDict:
  """DeiT supervised training of CAST on ImageNet-1K as the original (docs/original_behaviour.md#deit-recipe)."""
  c = moco_defaults()
  c.trainer = 'supervised'
  c.model.update(kind='cast_deit', moco=False, drop_path_rate=0.1)
  c.model.num_classes = 1000
  c.data.update(superpixels='deit', eval_interpolation='bicubic', superpixels_from_normalized=True)
  c.batch_size = 1024  # 128 per GPU x 8 in the original
  c.num_epochs = 300
  c.warmup_epochs = 5
  c.base_lr = 5e-4  # the learning rate is base_lr * batch_size / 512
  c.weight_decay = 0.05
  c.data.crop_scale = (0.08, 1.0)  # RandomResizedCrop's area range (timm's default)
  c.label_smoothing = 0.1
  c.mixup_alpha = 0.8  # batch mixup Beta(a, a); 0 turns mixup off
  c.cutmix_alpha = 1.0  # batch cutmix Beta(a, a); 0 turns cutmix off
  c.mix_prob = 1.0  # probability that a batch is mixed at all (0: plain labels, smoothed)
  c.randaugment = True
  c.random_erasing = 0.25
  c.repeated_augmentation = 3
  c.ema_decay = 0.99996
  c.lr_schedule = 'deit_epoch'  # timm's per-epoch cosine; 'warmup_cosine': per-step linear warm-up + cosine
  c.lr_original_off_by_one = True  # epoch e trains with sched(e - 1), as the published models did
  # Top-1 of the weights and of their EMA on the whole validation split (the published 80.4 is on all 50,000);
  # kNN only on demand (python -m cast_jax.evaluate --evaluator=knn), as the original has none.
  c.evals.knn.every_steps = 0
  c.evals.classifier = eval_entry('classifier')
  c.evals.classifier_ema = eval_entry('classifier', ema=True)
  return c


def lincls_defaults() -> ml_collections.ConfigDict:
  """MoCo-v3 ``main_lincls`` on a pretrained encoder (docs/original_behaviour.md#linear-probe): frozen backbone in
  inference mode, linear head on the normalized cls feature, SGD momentum 0.9, no weight decay, 90 epochs per-epoch
  cosine."""
  c = moco_defaults()
  c.trainer = 'linear_probe'
  c.model.update(kind='cast', moco=False)
  c.model.num_classes = 1000  # the original uses a 1000-way head for ImageNet-100 too
  c.data.update(superpixels='linear_probe', crop_scale=(0.08, 1.0))
  c.init_checkpoint = ''  # required: a converted MoCo .npz or a MoCo workdir of ours
  c.batch_size = 1024
  c.num_epochs = 90
  c.warmup_epochs = 0
  c.base_lr = 30.0  # x batch / 256 -> 120 for ImageNet-1K
  c.weight_decay = 0.0
  # The probe's top-1 on the whole validation split and its best over evaluations (the published 68.1);
  # the frozen backbone draws no new pictures, and its kNN runs only on demand.
  c.evals.knn.every_steps = 0
  del c.evals['hierarchy']
  c.evals.classifier = eval_entry('classifier')
  return c


def segmenter_defaults(dataset: str = 'ade20k') -> ml_collections.ConfigDict:
  """The Segmenter fine-tuning CAST-S (``segmenter/train_cast.py``; docs/original_behaviour.md#segmentation-recipe)
  on ``dataset`` ('ade20k' or 'pascal_context': crop, scales, zero-label reduction and the evaluation window of
  ``cast_jax.data.segmentation.DATASETS``).

  SGD momentum 0.9 Nesterov, weight decay 0, lr (1e-3 - 1e-5)(1 - k / iter_max)^0.9 + 1e-5 per update, batch 8
  (ADE20K) / 16 (Pascal Context),
  the short last batch of each epoch kept (``partial_last_batch``: iter_max = ceil(N / B) x epochs; its padding
  rows, there for the static shape, are masked out of the loss and of the train-mode BatchNorm statistics).
  Starts from the published DeiT ``best_checkpoint.pth`` (``cast_deit``, converted) or a Segmenter checkpoint.
  """
  from cast_jax.data.segmentation import DATASETS  # pylint: disable=import-outside-toplevel

  recipe = DATASETS[dataset]
  c = moco_defaults()
  c.trainer = 'segmentation'
  c.model.update(kind='cast_seg_deit', moco=False, image_size=recipe['crop_size'], drop_path_rate=0.0)
  c.model.seg_classes = {'ade20k': 150, 'pascal_context': 60}[dataset]
  c.model.decoder_dim = ml_collections.FieldReference(None, field_type=int)  # None: the encoder's width
  c.model.decoder_depth = 2
  c.model.decoder_heads = ml_collections.FieldReference(None, field_type=int)  # None: width // 64
  c.model.decoder_mlp_dim = ml_collections.FieldReference(None, field_type=int)  # None: 4 x width
  c.model.decoder_dropout = 0.1
  c.data = ml_collections.ConfigDict(dict(
      name=dataset, data_dir='', train_split='train', eval_split='validation',
      crop_size=recipe['crop_size'], img_scale=(recipe['max_ratio'] * recipe['im_size'], recipe['im_size']),
      ratio_range=(0.5, 2.0), cat_max_ratio=0.75, reduce_zero_label=recipe['reduce_zero_label'],
      window_stride=recipe['window_stride'], window_batch=2, invert_quirk=True, superpixels='segmentation',
      superpixel_overrides={}, num_workers=8, read_threads=ml_collections.FieldReference(None, field_type=int),
      # Only for the built-in 'partworld_segmentation' dataset:
      num_train_examples=0, num_eval_examples=0, source_image_size=224, seed=0, seg_labels='objects'))
  c.model.max_segments = (recipe['crop_size'] // 16) ** 2  # SEEDS' int(H W / 256): 1024 (ADE), 900 (PC)
  c.batch_size = 8 if dataset == 'ade20k' else 16  # segm/config.yml, one process
  c.num_epochs = 64 if dataset == 'ade20k' else 256
  c.warmup_epochs = 0
  c.base_lr = 1e-3  # not scaled by the batch
  c.min_lr = 1e-5
  c.lr_power = 0.9
  c.optimizer = 'sgd'  # Nesterov momentum, the original; 'adamw' for short schedules (configs/seg_demo.py)
  c.momentum = 0.9
  c.weight_decay = 0.0
  c.partial_last_batch = True
  c.eval_batch_size = 1  # one image at a time, as the original's evaluation
  c.eval_every_steps = 0  # the original evaluates at the end (and every few epochs); see evals.miou
  c.evals = ml_collections.ConfigDict(dict(miou=eval_entry('miou')))
  c.evals.miou.every_steps = 10000
  return c


def spml_defaults() -> ml_collections.ConfigDict:
  """SPML fine-tuning CAST-S on Pascal VOC 2012 (``scripts/spml/finetune_cast.sh``; spec ``voc_parts_notebooks``
  section 2.3): ``cast_seg`` segmentation stage (image_size 512: the 64x64 sin-cos grid, clusters 320/160/80/40,
  1024 token slots) under the SoftmaxClassifier (21 classes); 30,000 updates of batch 16 (4 GPUs x 4), seed 235;
  SPML's SGD (base lr 3e-3, momentum 0.9, coupled weight decay 1e-4, groups x1 / x2 / x10 / x20) on ``lr_poly``
  (power 0.9, 100 warm-up steps); crop 512, rescale 0.5-1.5, flip, superpixels (SEEDS 1024) on the half-size
  crop. The loss is the original's mean of 4 per-GPU means (``loss_reduction='per_group_mean'``,
  ``loss_groups=4``; 'global' is the plain mean over the batch's valid pixels). Evaluation: ``spml_miou``
  (SEEDS 1024 at the original resolution, max side 512, argmax, nearest back; SPML's benchmark).
  """
  c = moco_defaults()
  c.trainer = 'spml_finetune'
  c.seed = 235  # torch.manual_seed(235) in train_softmax.py
  c.model.update(kind='cast_seg', moco=False, image_size=512, max_segments=1024, drop_path_rate=0.0)
  c.model.spml_classes = 21
  c.data = ml_collections.ConfigDict(dict(
      name='voc_sbd', data_dir='', train_split='train_aug', eval_split='validation', crop_size=512,
      scale_range=(0.5, 1.5), num_superpixels=1024, superpixel_scale=0.5, test_image_size=512, num_workers=8,
      read_threads=ml_collections.FieldReference(None, field_type=int),
      # Only for the built-in 'partworld_segmentation' dataset:
      num_train_examples=0, num_eval_examples=0, source_image_size=224, seed=0, seg_labels='objects'))
  c.batch_size = 16  # 4 per GPU x 4 GPUs
  c.total_steps = 30000  # max_iteration; 661 steps per epoch of train_aug (10,582 images): ~45 epochs
  c.num_epochs = 46  # unused while total_steps is set
  c.warmup_epochs = 0
  c.warmup_steps = 100  # lr_poly's warmup_iteration
  c.base_lr = 3e-3
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.optimizer = 'spml_sgd'  # SPML's own; 'adamw' (same groups and schedule) for short schedules
  c.loss_reduction = 'per_group_mean'  # the original's mean of per-GPU means; or 'global'
  c.loss_groups = 4  # the original's GPUs (batch_size must be a multiple)
  c.partial_last_batch = False  # the original's iterator restarts before an epoch's short batch
  c.eval_batch_size = 1  # images of one prepared size are batched; VOC's sizes vary
  c.eval_every_steps = 0
  c.evals = ml_collections.ConfigDict(dict(miou=eval_entry('spml_miou')))
  c.evals.miou.every_steps = 10000  # and the last step (the original scores its final snapshot)
  c.checkpoint_every_steps = 2000
  return c


def use_demo_model_and_data(c: ml_collections.ConfigDict, superpixels: str = 'moco') -> ml_collections.ConfigDict:
  """The demo's small CAST (96 wide, 2-2-2-1 blocks, 64 px) on PartWorld, shared by demo, deit_demo and
  lincls_demo so that a probe or a comparison always sees the model and data the demo trained."""
  c.model.update(variant='small', image_size=64, embed_dim=96, depth=(2, 2, 2, 1), num_heads=4,
                 num_clusters=(16, 8, 4, 2), max_segments=64)
  if 'num_classes' in c.model:
    c.model.num_classes = 8
  c.data.update(name='partworld', train_split='train', eval_split='validation', image_size=64,
                source_image_size=96, crop_scale=(0.25, 1.0), eval_resize_ratio=1.0, num_train_examples=4096,
                num_eval_examples=512, num_workers=0, read_threads=2, superpixels=superpixels,
                superpixel_overrides={'num_segments': 49, 'iterations': 10})
  c.eval_batch_size = 128
  c.evals.knn.update(num_examples=-1, num_train=2048, num_classes=8)  # all 512 held-out images
  return c


def shrink_for_test(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few steps of a tiny model on tiny built-in images: checks the whole path on one CPU."""
  c.model.update(variant='small', image_size=64, embed_dim=24, depth=(1, 1, 1, 1), num_heads=2,
                 num_clusters=(16, 8, 4, 2), max_segments=64, moco_dim=16, moco_mlp_dim=32)
  if 'num_classes' in c.model:
    c.model.num_classes = 8  # PartWorld
  c.data.update(name='partworld', train_split='train', eval_split='validation', image_size=64,
                source_image_size=64, num_train_examples=64,
                num_eval_examples=16, num_workers=0, read_threads=2, superpixels='moco',
                superpixel_overrides={'num_segments': 36, 'iterations': 4})
  c.batch_size = 8
  c.num_epochs = 1
  c.warmup_epochs = 0
  c.steps_per_epoch = 6
  c.total_steps = 6
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.keep_checkpoints = 2
  c.eval_every_steps = 6
  c.eval_batch_size = 8
  if 'knn' in c.evals:
    c.evals.knn.update(num_examples=-1, num_train=32, num_classes=8)
  if 'hierarchy' in c.evals:
    c.evals.hierarchy.num_images = 2
  c.fast_compile = True
  c.eval_at_start = False  # tests that want the step-0 evaluation ask for it
  if c.trainer == 'segmentation':
    _shrink_segmentation(c)
  if c.trainer == 'spml_finetune':
    _shrink_spml(c)
  return c


def _shrink_segmentation(c: ml_collections.ConfigDict) -> None:
  """The Segmenter's ``:test``: object maps of 44 PartWorld images (6 steps of 8, the last with 4 padding rows,
  as ``partial_last_batch`` keeps it) and mIoU of 6 validation images (one batch of 4 and a masked half)."""
  c.model.update(kind='cast_seg_deit', moco=False, seg_classes=9, decoder_dim=None, decoder_heads=None,
                 decoder_mlp_dim=None)
  c.data.update(name='partworld_segmentation', seg_labels='objects', num_train_examples=44, num_eval_examples=6,
                crop_size=64, img_scale=(128, 64), window_stride=48, window_batch=2, superpixels='segmentation',
                reduce_zero_label=False)
  # Replaced, not merged: the moco shrink's num_segments and pixels_per_segment exclude each other.
  c.data.superpixel_overrides = ml_collections.ConfigDict({'pixels_per_segment': 100, 'iterations': 4})
  c.partial_last_batch = True
  c.eval_batch_size = 4
  c.evals.miou.update(num_examples=-1)


def _shrink_spml(c: ml_collections.ConfigDict) -> None:
  """SPML's ``:test``: PartWorld object maps (9 classes) of 48 images, 6 steps of 8 (3 warmed up), 64 px crops
  with 32x32 superpixel maps (SEEDS asked for 36: 25 superpixels), the loss as the mean of 4 group means, and
  ``spml_miou`` on 6 validation images (batches of 4)."""
  c.model.update(kind='cast_seg', moco=False, spml_classes=9)
  c.data.update(name='partworld_segmentation', seg_labels='objects', num_train_examples=48, num_eval_examples=6,
                crop_size=64, scale_range=(0.5, 1.5), num_superpixels=36, superpixel_scale=0.5, test_image_size=64)
  c.warmup_steps = 3
  c.loss_reduction, c.loss_groups = 'per_group_mean', 4
  c.eval_batch_size = 4
  c.evals.miou.update(num_examples=-1)


def finalize(c: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
  """Applies ``:test``; any other argument is an error (say what is accepted)."""
  if arg in (None, ''):
    return c
  if arg == 'test':
    return shrink_for_test(c)
  raise ValueError(f'unknown config argument {arg!r}; the only one is ":test"')


def finalize_retrieval(c: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
  """A retrieval config (``spml_retrieval_main --config``) has no ``:test`` form: it trains nothing and its
  sizes come from the checkpoint; any argument is an error."""
  if arg in (None, ''):
    return c
  raise ValueError(f'unknown config argument {arg!r}; a retrieval config takes none (it has no ":test" form)')


def load_config_file(path_and_arg) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file named as on the command line: 'configs/demo.py' or 'configs/demo.py:test'.

  For notebooks and scripts; ``python -m cast_jax.main --config=...`` reads the same files through absl.
  """
  path, arg = str(path_and_arg), None
  head, colon, tail = path.rpartition(':')
  if colon and not any(c in tail for c in '/\\'):  # 'X.py:test', not a drive letter's 'C:\\configs'
    path, arg = head, tail
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'config file {path} not found (the configs live in configs/ of the repository)')
  module_spec = importlib.util.spec_from_file_location(f'cast_config_{path.stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path} defines no get_config(arg=None)')
  return module.get_config(arg or None)


def _override_paths(argv, flag: str) -> tuple[str | None, list[str]]:
  """(config file argument, dotted field paths overridden) from a command line: ``--config=F`` or ``--config F``
  and every ``--config.a.b=V`` / ``--config.a.b V`` (``--noconfig.x`` sets a boolean False)."""
  config_file, paths = None, []
  for index, arg in enumerate(argv):
    name, _, value = arg.partition('=')
    if name in (f'--{flag}', f'-{flag}'):
      config_file = value if value else (argv[index + 1] if index + 1 < len(argv) else None)
    for prefix in (f'--{flag}.', f'-{flag}.', f'--no{flag}.'):
      if name.startswith(prefix):
        paths.append(name[len(prefix):])
  return config_file, paths


def unknown_field_message(config, path: str) -> str | None:
  """None if ``path`` ('optim.lr') names a field of ``config``; else which part is unknown and the close names."""
  node, walked = config, []
  for part in path.split('.'):
    fields = list(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else None
    if fields is None:
      return (f'{".".join(walked)} is a {type(node).__name__}, not a group of fields, so '
              f'{".".join(walked + [part])} does not exist')
    if part not in fields:
      where = f'{".".join(walked)}.' if walked else ''
      close = [where + name for name in difflib.get_close_matches(part, fields, n=5, cutoff=0.6)]
      # The same (or a nearly same) name at another depth ('--config.lr' for 'optim.lr') is a common slip too.
      for other in _dotted_fields(config):
        leaf = other.rsplit('.', 1)[-1]
        similar = difflib.SequenceMatcher(None, part, leaf).ratio() >= 0.8 or part in leaf.split('_')
        if other not in close and similar:
          close.append(other)
      hint = f'close names: {", ".join(close[:8])}' if close else f'fields there: {", ".join(sorted(fields))}'
      return f'the config has no field {where}{part} ({hint})'
    node = node[part]
    walked.append(part)
  return None


def _dotted_fields(config, prefix: str = '') -> list[str]:
  out = []
  for key, value in config.items():
    out.append(prefix + key)
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out += _dotted_fields(value, f'{prefix}{key}.')
  return out


def explain_bad_overrides(argv, flag: str = 'config') -> str | None:
  """A message naming every ``--config.X`` override of ``argv`` that is not a field of the config file it names
  (with the close names), or None when they all exist or the config cannot be read here."""
  config_file, paths = _override_paths(argv, flag)
  if not config_file or not paths:
    return None
  try:
    config = load_config_file(config_file)
  except Exception:  # pylint: disable=broad-except
    return None  # absl reports a missing or broken config file itself
  problems = [f'--{flag}.{path}: {message.replace("the config", f"the config {config_file}", 1)}' for path in paths
              if (message := unknown_field_message(config, path)) is not None]
  return '\n'.join(problems) or None


def parse_flags_explaining_overrides(argv):
  """A ``flags_parser`` for ``absl.app.run``: absl's own parsing, except that a misspelt ``--config.X`` override
  (which ml_collections reports as a bare ``AttributeError: "'X'"``) exits with a message that names the
  field and the close names."""
  import sys  # pylint: disable=import-outside-toplevel

  from absl import app  # pylint: disable=import-outside-toplevel

  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    message = explain_bad_overrides(argv)
    if message is None:
      raise
    print(f'FATAL Flags parsing error: {message}', file=sys.stderr)
    raise SystemExit(1) from e
