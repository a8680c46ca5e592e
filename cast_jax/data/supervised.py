"""The supervised DeiT recipe of CAST on ImageNet (docs/original_behaviour.md#deit-recipe): per-sample augmentation,
batch-level Mixup/CutMix, and repeated augmentation.

Per sample (``SupervisedTrain``; docs/original_behaviour.md#deit-augmentation and
docs/original_behaviour.md#deit-superpixels), as timm's ``transforms_imagenet_train`` with DeiT's arguments:

    RandomResizedCrop(224, bicubic) -> hflip(0.5) -> RandAugment(rand-m9-mstd0.5-inc1)
    -> ToTensor + Normalize -> RandomErasing(0.25, 'pixel', max_count=1) -> superpixels of the result

Per batch (``mix_batch``; docs/original_behaviour.md#deit-mixup): timm ``Mixup(mode='batch')``; superpixels are
deliberately left unmixed.

Per epoch (``repeated_augmentation_indices``; docs/original_behaviour.md#deit-rasampler): DeiT's ``RASampler`` order.

Evaluation (docs/original_behaviour.md#deit-evaluation) needs nothing new:
``recipes.CenterCropEval(superpixel_fn, resample=Image.BICUBIC)`` is DeiT's ``Resize(256, bicubic) -> CenterCrop(224)``;
see ``supervised_eval``.

How a training input pipeline is assembled (``make_train_dataset`` does exactly this):

    source -> ResilientDecode -> RepeatedAugmentation(epoch streams of this process's ranks)
           -> seed -> random_map(SupervisedTrain) -> batch(ranks x per-replica batch)
           -> random_map(MixBatch(groups=len(ranks))) -> iterator

It replaces ``pipeline.make_dataset``'s shuffle / shard / repeat, because RASampler *is* the shuffle and the
shard. One "replica" is one original GPU: to reproduce the 8-GPU run use ``num_replicas=8`` (whatever the
JAX device count), each process serving ``ranks`` = its share of the 8, and mix each replica's sub-batch with
its own lambda (``groups``) as each GPU did.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Optional, Sequence

import grain
import numpy as np
from PIL import Image

from cast_jax.data import augment, pipeline
from cast_jax.data.randaugment import RandAugment
from cast_jax.data.recipes import CenterCropEval, SuperpixelFn

# ----------------------------------------------------------------------------------------------------------
# Per-sample pieces.


def random_resized_crop_bicubic(img: Image.Image, size: int, rng: np.random.Generator,
                                scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Image.Image:
  """timm ``RandomResizedCropAndInterpolation(size, interpolation='bicubic')``.

  Its box sampling is torchvision's (``augment.random_resized_crop_box``). The pixels are torchvision's
  ``resized_crop``: crop first, then resize, so the bicubic kernel never reads outside the box (PIL's
  ``resize(box=...)`` would, at the box edges).
  """
  top, left, h, w = augment.random_resized_crop_box(img.width, img.height, rng, scale, ratio)
  return img.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)


def erasing_box(height: int, width: int, rng: np.random.Generator, min_area=0.02, max_area=1 / 3,
                min_aspect=0.3) -> Optional[tuple[int, int, int, int]]:
  """timm ``RandomErasing._erase``'s box for one block: (top, left, h, w), or None after 10 misses.

  Note timm's convention: ``h = sqrt(area * aspect)`` (the crop above uses ``w`` for that) and the box
  must be strictly smaller than the image.
  """
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  for _ in range(10):
    target_area = rng.uniform(min_area, max_area) * height * width
    aspect = math.exp(rng.uniform(*log_aspect))
    h = int(round(math.sqrt(target_area * aspect)))
    w = int(round(math.sqrt(target_area / aspect)))
    if w < width and h < height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  return None


def random_erasing(image: np.ndarray, rng: np.random.Generator, prob: float = 0.25) -> np.ndarray:
  """timm ``RandomErasing(prob, mode='pixel', max_count=1)`` on a normalized float32 (H, W, 3) image.

  With probability ``prob``, one box (area U(0.02, 1/3), log-uniform aspect in [0.3, 3.33]) is replaced
  by per-pixel, per-channel N(0, 1) noise, i.e. noise in *normalized* space. Returns a new array.
  """
  if rng.random() > prob:  # timm's test: skip when random() > probability
    return image
  box = erasing_box(image.shape[0], image.shape[1], rng)
  if box is None:
    return image
  top, left, h, w = box
  out = image.copy()
  out[top:top + h, left:left + w] = rng.standard_normal((h, w, image.shape[2]), dtype=np.float32)
  return out


# The original hands SEEDS the de-normalized, truncated tensor (see augment.seeds_input).
seeds_input = augment.seeds_input


@dataclasses.dataclass(frozen=True)
class SupervisedTrain:
  """DeiT's train recipe: example {'image': uint8 (H, W, 3), 'label': int} ->
  'image' float32 (S, S, 3) normalized, 'superpixels' int32 (S, S), 'label' int32.

  Superpixels come from ``seeds_input`` of the final (erased) image, as in the original
  (docs/original_behaviour.md#deit-superpixels). ``superpixel_fn=None`` (on-device superpixels): no map, and
  'superpixel_pixels' uint8 (S, S, 3) = ``seeds_input`` of the erased image instead, which Mixup leaves alone.
  ``randaugment=None`` or ``erasing_prob=0`` switch those stages off (tests, ablations); ``crop_scale`` is the
  RandomResizedCrop area range.
  """

  superpixel_fn: SuperpixelFn
  size: int = 224
  randaugment: Optional[RandAugment] = RandAugment()
  erasing_prob: float = 0.25
  crop_scale: tuple[float, float] = (0.08, 1.0)  # timm's default; small images want a larger lower bound

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    img = random_resized_crop_bicubic(Image.fromarray(example['image']), self.size, rng, scale=self.crop_scale)
    if rng.random() < 0.5:  # torchvision RandomHorizontalFlip: flip when rand < p
      img = augment.hflip(img)
    if self.randaugment is not None:
      img = self.randaugment(img, rng)
    image = augment.normalize(np.asarray(img, np.uint8))
    image = random_erasing(image, rng, self.erasing_prob)
    if self.superpixel_fn is None:  # on-device superpixels: the pixels SEEDS would have seen, no map
      return {'image': image, 'superpixel_pixels': seeds_input(image), 'label': np.int32(example.get('label', -1))}
    return {'image': image, 'superpixels': np.asarray(self.superpixel_fn(seeds_input(image)), np.int32),
            'label': np.int32(example.get('label', -1))}


def supervised_eval(superpixel_fn: SuperpixelFn, size: int = 224) -> CenterCropEval:
  """DeiT's eval transform: Resize(int(size / 0.875), bicubic) on the short side, CenterCrop(size); SEEDS
  sees ``seeds_input`` of the normalized crop, as in the original."""
  return CenterCropEval(superpixel_fn, size=size, resize=int(size / 0.875), resample=Image.BICUBIC,
                        superpixels_from_normalized=True)


# ----------------------------------------------------------------------------------------------------------
# Batch-level Mixup / CutMix (timm Mixup, mode='batch').


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
  """(B,) int -> (B, num_classes) float32: ``smoothing / C`` off, ``1 - smoothing + smoothing / C`` on."""
  off = smoothing / num_classes
  targets = np.full((len(labels), num_classes), off, np.float32)
  targets[np.arange(len(labels)), np.asarray(labels, np.int64)] = 1.0 - smoothing + off
  return targets


def cutmix_box(height: int, width: int, lam: float,
               rng: np.random.Generator) -> tuple[tuple[int, int, int, int], float]:
  """timm ``rand_bbox`` + lambda correction: ((y0, y1, x0, x1), lam') with lam' = 1 - box area / (H W).

  The box has sides ``int(H sqrt(1 - lam))`` (rounded down to even: the centre +- half) around a uniform
  centre, clipped to the image; the clipping is why lambda is recomputed from the real area.
  """
  cut = math.sqrt(1.0 - lam)
  cut_h, cut_w = int(height * cut), int(width * cut)
  cy = int(rng.integers(0, height))
  cx = int(rng.integers(0, width))
  y0, y1 = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
  x0, x1 = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
  return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)


def sample_mix(rng: np.random.Generator, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5,
               prob=1.0) -> tuple[float, bool]:
  """timm ``Mixup._params_per_batch``: (lam, use_cutmix); lam = 1 means no mixing this batch (also when both
  alphas are 0, DeiT's ``mixup_active=False``)."""
  if not rng.random() < prob:
    return 1.0, False
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = bool(rng.random() < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    return float(rng.beta(alpha, alpha)), use_cutmix
  if mixup_alpha > 0:
    return float(rng.beta(mixup_alpha, mixup_alpha)), False
  if cutmix_alpha > 0:
    return float(rng.beta(cutmix_alpha, cutmix_alpha)), True
  return 1.0, False  # both off: DeiT builds no Mixup at all, so the batch keeps its (smoothed) labels


def mix_batch(batch: dict[str, np.ndarray], rng: np.random.Generator, num_classes: int, mixup_alpha=0.8,
              cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1, prob=1.0) -> dict[str, np.ndarray]:
  """timm ``Mixup(mode='batch')`` on {'image': float32 (B, H, W, 3), 'label': int (B,), ...}.

  One lambda for the whole batch; example i is mixed with example B-1-i (``x.flip(0)``).
  * CutMix (prob ``switch_prob``): lambda ~ Beta(1, 1); the box comes from the flipped batch; lambda is
    corrected to the box's real area.
  * Mixup: lambda ~ Beta(0.8, 0.8); ``lam x + (1 - lam) x_flipped``.
  Adds 'targets' float32 (B, num_classes) = lam smooth(y) + (1 - lam) smooth(y flipped). Every other key,
  'superpixels' included, is passed through untouched: the original keeps the *first* image's superpixels
  even where CutMix pasted another image, or under a Mixup blend (docs/original_behaviour.md#deit-mixup). Returns a
  new dict.
  """
  image, labels = batch['image'], np.asarray(batch['label'])
  if len(image) % 2:
    raise ValueError(f'Mixup needs an even batch (timm asserts it); got {len(image)}')
  lam, use_cutmix = sample_mix(rng, mixup_alpha, cutmix_alpha, switch_prob, prob)
  if lam != 1.0:
    flipped = image[::-1]
    if use_cutmix:
      (y0, y1, x0, x1), lam = cutmix_box(image.shape[1], image.shape[2], lam, rng)
      image = image.copy()
      image[:, y0:y1, x0:x1] = flipped[:, y0:y1, x0:x1]
    else:
      image = image * np.float32(lam) + flipped * np.float32(1.0 - lam)
  targets = (smooth_one_hot(labels, num_classes, label_smoothing) * np.float32(lam)
             + smooth_one_hot(labels[::-1], num_classes, label_smoothing) * np.float32(1.0 - lam))
  return {**batch, 'image': image, 'targets': targets}


class MixBatch(grain.transforms.RandomMap):
  """``mix_batch`` as a grain transform after ``batch``; ``groups`` contiguous sub-batches (one per original
  GPU) are each mixed with their own lambda and flip pairing, as each GPU mixed its own 128 examples."""

  def __init__(self, num_classes: int, groups: int = 1, **mix_kwargs):
    self._num_classes = num_classes
    self._groups = groups
    self._mix_kwargs = mix_kwargs

  def random_map(self, batch, rng: np.random.Generator):
    size = len(batch['image'])
    if size % self._groups:
      raise ValueError(f'batch of {size} does not split into {self._groups} equal groups')
    step = size // self._groups
    parts = [mix_batch({k: v[g * step:(g + 1) * step] for k, v in batch.items()}, rng, self._num_classes,
                       **self._mix_kwargs) for g in range(self._groups)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ----------------------------------------------------------------------------------------------------------
# Repeated augmentation (DeiT RASampler, num_repeats=3).


def ra_num_selected(num_examples: int, num_replicas: int, round_to: int = 256) -> int:
  """Samples each replica takes per epoch: ``floor(N // round_to * round_to / num_replicas)``.

  That is DeiT's ``num_selected_samples`` (round_to=256; 160,128 for ImageNet on 8 GPUs). It is *not* the
  older ``ceil(N / num_replicas)``, which is commented out in the original; with ``round_to=1`` this is
  ``floor(N / num_replicas)``. Either way about N samples per epoch are consumed, i.e. ~N/3 images x 3.
  """
  return int(math.floor(num_examples // round_to * round_to / num_replicas))


def repeated_augmentation_indices(num_examples: int, repeats: int = 3, seed: int = 0, epoch: int = 0,
                                  num_replicas: int = 1, rank: int = 0, round_to: int = 256) -> np.ndarray:
  """The example indices replica ``rank`` reads in ``epoch``, in order: int64 (ra_num_selected,).

  RASampler: ``perm`` = a permutation of range(N) seeded by the epoch; each entry repeated ``repeats`` times
  in place ([a, a, a, b, b, b, ...]); padded from its own start to a multiple of ``num_replicas``; replica r
  takes every ``num_replicas``-th entry from r; then only the first ``ra_num_selected`` of them. So the copies
  of an image go to consecutive replicas (different GPUs, different augmentations), and an epoch covers only
  the first ~N/repeats images of the permutation (docs/original_behaviour.md#deit-rasampler).

  The permutation is numpy's, seeded by (seed, epoch): torch.randperm's stream is not reproducible without
  torch, and only its distribution matters. The original's seed is just the epoch.
  """
  perm = np.random.default_rng((seed, epoch)).permutation(num_examples)
  stream = np.repeat(perm, repeats)
  per_replica = math.ceil(num_examples * repeats / num_replicas)
  padding = per_replica * num_replicas - len(stream)
  if padding > 0:
    stream = np.concatenate([stream, stream[:padding]])
  return stream[rank::num_replicas][:ra_num_selected(num_examples, num_replicas, round_to)]


def process_stream(num_examples: int, per_replica_batch: int, ranks: Sequence[int], num_replicas: int,
                   repeats: int = 3, seed: int = 0, epoch: int = 0, round_to: int = 256) -> np.ndarray:
  """One process's example order for ``epoch`` when it serves several replicas (e.g. one per local device).

  Each step's batch is the concatenation, in ``ranks`` order, of every replica's next ``per_replica_batch``
  indices; the last incomplete step is dropped (``drop_last=True``). int64 (steps * len(ranks) * batch,).
  """
  streams = [repeated_augmentation_indices(num_examples, repeats, seed, epoch, num_replicas, r, round_to)
             for r in ranks]
  steps = len(streams[0]) // per_replica_batch
  per_rank = np.stack([s[:steps * per_replica_batch].reshape(steps, per_replica_batch) for s in streams], 1)
  return per_rank.reshape(-1)


class RepeatedAugmentation(grain.MapDataset):
  """``parent`` read in ``process_stream`` order, epoch after epoch (``num_epochs=None``: forever).

  Element i belongs to epoch ``i // epoch_length``; the epoch's order is computed once and cached, so
  random access (grain's resumable iterators, worker processes) stays cheap.
  """

  def __init__(self, parent: grain.MapDataset, per_replica_batch: int, ranks: Sequence[int] = (0,),
               num_replicas: int = 1, repeats: int = 3, seed: int = 0, num_epochs: Optional[int] = None,
               round_to: int = 256):
    super().__init__(parent)
    self._stream_args = dict(num_examples=len(parent), per_replica_batch=per_replica_batch, ranks=tuple(ranks),
                             num_replicas=num_replicas, repeats=repeats, seed=seed, round_to=round_to)
    self.epoch_length = len(process_stream(**self._stream_args, epoch=0))
    if self.epoch_length == 0:
      raise ValueError(f'{len(parent)} examples give no full batch of {per_replica_batch} per replica '
                       f'(per-replica epoch: {ra_num_selected(len(parent), num_replicas, round_to)}); '
                       'use smaller batches or round_to')
    self._num_epochs = num_epochs
    self._cached = (-1, None)

  def __len__(self) -> int:
    return sys.maxsize if self._num_epochs is None else self._num_epochs * self.epoch_length

  def __str__(self) -> str:
    return 'RepeatedAugmentation'

  def order(self, epoch: int) -> np.ndarray:
    if self._cached[0] != epoch:
      self._cached = (epoch, process_stream(**self._stream_args, epoch=epoch))
    return self._cached[1]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, self.epoch_length)
    return self._parent[int(self.order(epoch)[position])]


def make_train_dataset(source, recipe, num_classes: int, per_replica_batch: int, ranks: Sequence[int] = (0,),
                       num_replicas: int = 1, seed: int = 0, num_epochs: Optional[int] = None,
                       num_workers: int = 0, prefetch_buffer: int = 2, repeats: int = 3,
                       round_to: int = 256, read_threads: Optional[int] = None,
                       **mix_kwargs) -> grain.IterDataset:
  """The supervised training pipeline for the replicas ``ranks`` of ``num_replicas`` (see the module doc).

  Batches hold len(ranks) * per_replica_batch examples: 'image', 'superpixels', 'label', 'targets'
  (mixed), 'skipped'. ``iter(...).get_state()`` / ``set_state()`` resume exactly, as in ``pipeline``.
  """
  if len(source) == 0:
    raise ValueError('the data source is empty: check the dataset path or split')
  ds = pipeline.ResilientDecode(grain.MapDataset.source(source))
  ds = RepeatedAugmentation(ds, per_replica_batch, ranks, num_replicas, repeats, seed, num_epochs, round_to)
  ds = ds.seed(seed).random_map(pipeline.ApplyRecipe(recipe))
  ds = ds.batch(len(ranks) * per_replica_batch, drop_remainder=True)
  ds = ds.random_map(MixBatch(num_classes, groups=len(ranks), **mix_kwargs))
  it = ds.to_iter_dataset(pipeline.read_options(read_threads))
  if num_workers > 0:
    pipeline._ensure_absl_flags_parsed()  # pylint: disable=protected-access
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=prefetch_buffer))
  return it
