"""From a config's ``data`` block to sources, recipes and batch iterators for the trainers.

``data.name`` picks the source: 'partworld' (built in, generated), 'partworld_segmentation' (the same images with
class-index label maps, ``data.seg_labels``), 'folder' (ImageNet layout at ``data.path``), 'flat_folder'
(unlabeled images, e.g. COCO), 'ade20k' / 'pascal_context' / 'voc_sbd' (segmentation: the ArrayRecord builds of the
repository's ``data/`` builders, read by ``cast_jax.data.segmentation_sources``),
or any other name as a TFDS dataset read from ``data.data_dir``. Evaluation batches are padded to a fixed size with a ``mask`` so shapes stay static.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Iterator

import ml_collections
import numpy as np
from PIL import Image

from cast_jax.data import partworld, recipes, segmentation_sources, sources
from cast_jax.data.partworld_segmentation import PartWorldSegmentation
from cast_jax.data.pipeline import PipelineConfig, make_dataset
from cast_jax.superpixels import compute_superpixels, preset


def make_source(data, split: str):
  """The random-access source of ``split`` (a split name of the dataset, e.g. data.train_split).

  Built once per (data settings, split) in a process: the loop, the task and every evaluation ask for the
  same sources, and listing an ImageNet folder takes tens of seconds.
  """
  settings = data.to_dict() if hasattr(data, 'to_dict') else dict(data)
  return _source(json.dumps(settings, sort_keys=True, default=str), split)


@functools.lru_cache(maxsize=8)
def _source(settings: str, split: str):
  data = ml_collections.ConfigDict(json.loads(settings))
  if data.name == 'partworld':
    count = data.num_train_examples if split == 'train' else data.num_eval_examples
    return partworld.PartWholeDataset(count, image_size=data.source_image_size, seed=data.seed, split=split,
                                      second_rendering=bool(data.get('second_rendering', False)),
                                      palette=data.get('palette', 'random'),
                                      keep_object_colours=bool(data.get('keep_object_colours', False)))
  if data.name == 'partworld_segmentation':
    count = data.num_train_examples if split == 'train' else data.num_eval_examples
    return PartWorldSegmentation(count, image_size=data.source_image_size, seed=data.seed, split=split,
                                 labels=data.get('seg_labels', 'objects'), palette=data.get('palette', 'random'))
  if data.name == 'segmentation_folder':
    return segmentation_sources.SegmentationFolderSource(data.path, split, segmentation_sources.folder_layout(data))
  if data.name in segmentation_sources.DATASETS:
    return segmentation_sources.make(data.name, split, data.get('data_dir') or None)
  if data.name == 'folder':
    return sources.ImageFolderSource(f'{data.path}/{split}')
  if data.name == 'flat_folder':
    return sources.FlatFolderSource(f'{data.path}/{split}')
  return sources.TfdsSource(data.name, split, data_dir=data.get('data_dir') or None)


def _no_superpixels(pixels: np.ndarray) -> np.ndarray:
  """For the ViT baseline, which never reads them: one segment, no SEEDS cost."""
  return np.zeros(pixels.shape[:2], np.int32)


def superpixel_fn(data, uses_superpixels: bool = True):
  """A picklable (H, W, 3) uint8 -> (H, W) int32 function for the recipes; None under on-device superpixels
  (``data.superpixels_on_device``), where the recipes emit pixels and the jitted step makes the maps
  (``train.device_superpixels``)."""
  if not uses_superpixels:
    return _no_superpixels
  if data.get('superpixels_on_device', False):
    return None
  overrides = dict(data.get('superpixel_overrides', {}) or {})
  return functools.partial(compute_superpixels, config=preset(data.superpixels, **overrides))


def moco_train_iterator(data, batch_size: int, seed: int, process_index: int, process_count: int,
                        uses_superpixels: bool = True):
  """An infinite, resumable iterator of MoCo two-view batches (``batch_size`` per process)."""
  views = [recipes.ViewAugmentation(size=data.image_size, crop_scale=tuple(data.crop_scale),
                                    jitter_prob=data.get('jitter_prob', 0.8),
                                    jitter_strength=tuple(data.get('jitter_strength', (0.4, 0.4, 0.2, 0.1))),
                                    grayscale_prob=data.get('grayscale_prob', 0.2),
                                    blur_prob=tuple(data.get('blur_probs', (1.0, 0.1)))[i],
                                    solarize_prob=tuple(data.get('solarize_probs', (0.0, 0.2)))[i],
                                    blur_sigma=tuple(data.get('blur_sigma', (0.1, 2.0))))
           for i in range(2)]
  recipe = recipes.MoCoTwoViews(superpixel_fn(data, uses_superpixels), view1=views[0], view2=views[1],
                                shared_geometry=bool(data.get('shared_geometry', False)))
  return train_iterator(data, recipe, batch_size, seed, process_index, process_count)


def train_iterator(data, recipe, batch_size: int, seed: int, process_index: int, process_count: int,
                   partial_last_batch: bool = False):
  """An infinite, resumable iterator of ``recipe``'s batches over the train split (``batch_size`` per process).

  partial_last_batch: each epoch ends with its short batch padded to full size, ``mask`` False on the padding
  (PyTorch ``drop_last=False``; ``schedules.Schedule`` then counts ceil(N / B) steps per epoch).
  """
  config = PipelineConfig(batch_size=batch_size, seed=seed, num_workers=data.num_workers,
                          read_threads=data.get('read_threads'), pad_last_batch=partial_last_batch)
  return iter(make_dataset(make_source(data, data.train_split), recipe, config, process_index, process_count))


def eval_batches(data, split: str, batch_size: int, num_examples: int, process_index: int = 0,
                 process_count: int = 1, uses_superpixels: bool = True) -> Iterator[dict[str, Any]]:
  """Centre-crop evaluation batches of ``num_examples`` of ``split`` spread evenly over it (all when <= 0), each
  padded to ``batch_size`` rows with a boolean ``mask`` (False on padding)."""
  source = make_source(data, split)
  count = len(source) if num_examples <= 0 else min(num_examples, len(source))
  source = _EvenSubset(source, count)
  resize = int(round(data.image_size * data.eval_resize_ratio))
  resample = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[data.get('eval_interpolation', 'bilinear')]
  recipe = recipes.CenterCropEval(superpixel_fn(data, uses_superpixels), size=data.image_size, resize=resize,
                                  resample=resample,
                                  superpixels_from_normalized=data.get('superpixels_from_normalized', False))
  config = PipelineConfig(batch_size=batch_size, shuffle=False, num_epochs=1, drop_remainder=False,
                          num_workers=0, read_threads=data.get('read_threads'))
  # Every process must run the same number of steps (the forward is one global computation), so a process
  # whose shard ends early repeats its last batch fully masked.
  global_batch = batch_size * process_count  # process 0 holds the most rows (ProcessBatchShard)
  rows_of_first = count // global_batch * batch_size + min(count % global_batch, batch_size)
  expected = -(-rows_of_first // batch_size)
  produced, last = 0, None
  for batch in make_dataset(source, recipe, config, process_index, process_count):
    last = pad_batch(batch, batch_size)
    produced += 1
    yield last
  while produced < expected and last is not None:
    produced += 1
    yield dict(last, mask=np.zeros(batch_size, bool))


def pad_batch(batch: dict[str, Any], batch_size: int) -> dict[str, Any]:
  """Pads every array to ``batch_size`` rows (repeating row 0) and adds ``mask``."""
  rows = len(batch['label'])
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.ndim == 0:
      continue
    if rows < batch_size:
      value = np.concatenate([value, np.repeat(value[:1], batch_size - rows, axis=0)])
    out[key] = value
  out['mask'] = np.arange(batch_size) < rows
  return out


class _EvenSubset:
  """``count`` records spread evenly over a source: a folder source is sorted by class, so its first records
  would all come from the first few classes."""

  def __init__(self, source, count: int):
    self._source, self._count = source, count

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index):
    if not 0 <= index < self._count:
      raise IndexError(index)
    return self._source[index * len(self._source) // self._count]
