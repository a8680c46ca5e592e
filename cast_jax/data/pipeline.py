"""From a random-access source to batches: grain, deterministic per seed, resumable, robust to bad files.

    source --ResilientDecode--> shuffle(seed) --> [PadEpochToBatches] --> repeat --recipe (RandomMap)-->
           [shard by process] --> batch --to_iter_dataset--> [mp_prefetch(workers)]

* ``ResilientDecode`` turns each record's image into RGB uint8. An unusable record (corrupt or truncated
  file, unsupported array) is replaced by the next usable record in source order, and the element carries
  ``skipped``, the number of records passed over; batching sums it, so the count survives worker processes.
* Sharding: every process shuffles with the same seed and reads its contiguous block of each *global*
  batch (process i: rows i*b..(i+1)*b-1 of global batch k). The augmentation rng is keyed by the global
  position, so the global batch (the concatenation of the processes' batches, which is how
  ``jax.make_array_from_process_local_data`` assembles it) is identical for any number of processes, and a
  run's losses do not depend on how it is spread over hosts. Only a process's own rows are decoded.
* The iterator's ``get_state()`` / ``set_state()`` (saved with the training checkpoint) resume exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import grain
import numpy as np

from cast_jax.data.decode import decode_image

# A recipe: (decoded example, rng) -> dict of numpy arrays with fixed shapes.
Recipe = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


class ResilientDecode(grain.MapDataset):
  """Decodes ``record['image']``; bad records are replaced by the next good one and counted.

  ``max_consecutive_failures`` bounds the search: a source where that many records in a row fail is
  almost certainly misconfigured (wrong folder, wrong format), which should stop the run with a message.
  """

  def __init__(self, parent: grain.MapDataset, max_consecutive_failures: int = 100):
    super().__init__(parent)
    self._max_failures = max_consecutive_failures

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return 'ResilientDecode'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    size = len(self._parent)
    reasons = []
    for offset in range(min(self._max_failures, size)):
      record = self._parent[(index + offset) % size]
      image, reason = decode_image(record['image'])
      if image is not None:
        out = {k: v for k, v in record.items() if k != 'image'}
        out.update(image=image, skipped=np.int32(offset))
        return out
      reasons.append(f'record {(index + offset) % size}: {reason}')
    raise RuntimeError(f'{len(reasons)} consecutive records could not be decoded; is the source right? '
                       f'First failures: {reasons[:3]}')


class ProcessBatchShard(grain.MapDataset):
  """Process ``index``'s rows of each global batch: row j of this process is global element
  (j // local) * (local * count) + index * local + j % local, for ``local`` rows per process."""

  def __init__(self, parent: grain.MapDataset, local_batch: int, index: int, count: int):
    super().__init__(parent)
    self._local, self._index, self._count = local_batch, index, count

  def __len__(self) -> int:
    size, global_batch = len(self._parent), self._local * self._count
    last = size % global_batch  # a partial last global batch (evaluation, drop_remainder=False)
    return size // global_batch * self._local + min(max(last - self._index * self._local, 0), self._local)

  def __str__(self) -> str:
    return f'ProcessBatchShard(index={self._index}, count={self._count})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    block, row = divmod(index, self._local)
    return self._parent[block * self._local * self._count + self._index * self._local + row]


class PadEpochToBatches(grain.MapDataset):
  """Each epoch of ``parent`` (N records) padded to whole global batches: ceil(N / B) * B elements, the last
  ceil(N / B) * B - N of them copies of the epoch's first record with ``mask`` False (True on real records).

  PyTorch's ``drop_last=False``: an epoch ends with a short batch that counts as a step; here that batch has the
  full static shape and its padding rows are masked out of the loss. Indices past the first epoch continue
  into the parent's next epoch (a shuffled parent reshuffles there).
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int):
    super().__init__(parent)
    self._size = len(parent)
    self._padded = -(-self._size // global_batch) * global_batch

  def __len__(self) -> int:
    return self._padded

  def __str__(self) -> str:
    return f'PadEpochToBatches({self._size} -> {self._padded})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, self._padded)
    real = position < self._size
    record = self._parent[epoch * self._size + (position if real else 0)]
    return dict(record, mask=np.bool_(real))


class ApplyRecipe(grain.transforms.RandomMap):
  """Runs a recipe with grain's per-element rng (deterministic for a given seed and position)."""

  def __init__(self, recipe: Recipe):
    self._recipe = recipe

  def random_map(self, element, rng: np.random.Generator):
    out = self._recipe(element, rng)
    out['skipped'] = element.get('skipped', np.int32(0))
    if 'mask' in element:  # PadEpochToBatches: padding rows of an epoch's last batch
      out['mask'] = element['mask']
    return out


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """batch_size: per process. num_epochs: None repeats forever. num_workers: 0 runs in this process."""

  batch_size: int
  seed: int = 0
  shuffle: bool = True
  num_epochs: Optional[int] = None
  num_workers: int = 0
  prefetch_buffer: int = 2
  drop_remainder: bool = True
  # Keep each epoch's short last batch, padded to full size with ``mask`` False rows (PyTorch drop_last=False).
  pad_last_batch: bool = False
  # Threads that run the recipe inside each process (OpenCV and PIL release the GIL) and the batches they
  # may read ahead; None: grain's 16 threads, one batch ahead per thread (``read_options``).
  read_threads: Optional[int] = None
  read_buffer: Optional[int] = None


def read_options(threads: Optional[int] = None, buffer: Optional[int] = None) -> grain.ReadOptions:
  """grain's in-process read options. threads: None keeps grain's default (16). buffer: how many elements may be
  read ahead; None means one per thread.

  The pipelines here batch before ``to_iter_dataset``, so an element is a whole batch, and grain's default
  buffer (500 elements) let a pipeline faster than the model read ahead 500 batches: the 64 px MoCo demo grew
  to 6-7 GB resident, a 224 px batch of 256 views is ~400 MB. One batch per thread keeps every thread busy
  (grain runs at most ``buffer`` elements at once) and bounds the memory.
  """
  options = grain.ReadOptions()
  if threads is not None:
    options = dataclasses.replace(options, num_threads=threads)
  return dataclasses.replace(options, prefetch_buffer_size=options.num_threads if buffer is None else buffer)


def make_dataset(source, recipe: Recipe, config: PipelineConfig, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """The batched, sharded, shuffled pipeline over ``source`` (anything with __len__ and __getitem__)."""
  if len(source) == 0:
    raise ValueError('the data source is empty: check the dataset path or split')
  ds = ResilientDecode(grain.MapDataset.source(source))
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)
  global_batch = config.batch_size * process_count
  if config.pad_last_batch:
    ds = PadEpochToBatches(ds, global_batch)
  if len(ds) < global_batch and config.drop_remainder:
    raise ValueError(f'{len(ds)} examples cannot fill one global batch of {global_batch} ({config.batch_size} '
                     f'per process x {process_count}); use a smaller batch or a larger dataset')
  ds = ds.repeat(config.num_epochs).seed(config.seed).random_map(ApplyRecipe(recipe))
  if process_count > 1:
    ds = ProcessBatchShard(ds, config.batch_size, process_index, process_count)
  ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
  it = ds.to_iter_dataset(read_options(config.read_threads, config.read_buffer))
  if config.num_workers > 0:
    _ensure_absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers,
                                                     per_worker_buffer_size=config.prefetch_buffer))
  return it


def _ensure_absl_flags_parsed():
  """Grain's worker processes read absl flags; outside an absl app (pytest, notebooks) take the defaults."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def summarize_skips(batch: Mapping[str, Any]) -> int:
  """Records skipped to fill this batch (0 when every file decoded)."""
  return int(np.sum(batch.get('skipped', 0)))
