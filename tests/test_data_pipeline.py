"""The grain pipeline: determinism, exact resume, per-process shards, bad files skipped and counted."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

from cast_jax.data.pipeline import PipelineConfig, make_dataset, summarize_skips
from cast_jax.data.sources import FlatFolderSource, ImageFolderSource, ListSource


def _png(value: int, size=(24, 32), mode='RGB') -> bytes:
  buffer = io.BytesIO()
  channels = {'RGB': 3, 'RGBA': 4}.get(mode)
  shape = size if channels is None else size + (channels,)
  Image.fromarray(np.full(shape, value % 256, np.uint8), mode).save(buffer, 'PNG')
  return buffer.getvalue()


def _first_pixel(example, rng):
  """A tiny recipe: the label, the first pixel, and one random number (to see the rng is per element)."""
  return {'label': np.int32(example['label']), 'pixel': example['image'][0, 0].astype(np.int32),
          'noise': np.float32(rng.random())}


def _labels(dataset, batches):
  it = iter(dataset)
  return [next(it)['label'].tolist() for _ in range(batches)]


def test_same_seed_same_batches_other_seed_other_order():
  source = ListSource([{'image': _png(i), 'label': i} for i in range(40)])
  config = PipelineConfig(batch_size=8, seed=3)
  first = _labels(make_dataset(source, _first_pixel, config), 6)
  assert first == _labels(make_dataset(source, _first_pixel, config), 6)
  assert first != _labels(make_dataset(source, _first_pixel, PipelineConfig(batch_size=8, seed=4)), 6)
  epoch = sorted(sum(first[:5], []))
  assert epoch == list(range(40)), 'one epoch visits every example once'


def test_restored_iterator_yields_exactly_the_next_batch():
  source = ListSource([{'image': _png(i), 'label': i} for i in range(30)])
  dataset = make_dataset(source, _first_pixel, PipelineConfig(batch_size=4, seed=0))
  it = iter(dataset)
  for _ in range(5):  # into the second epoch
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = iter(make_dataset(source, _first_pixel, PipelineConfig(batch_size=4, seed=0)))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_processes_get_disjoint_shards_of_each_epoch():
  source = ListSource([{'image': _png(i), 'label': i} for i in range(24)])
  config = PipelineConfig(batch_size=3, seed=5, num_epochs=1)
  shards = [sum((b['label'].tolist() for b in make_dataset(source, _first_pixel, config, p, 2)), [])
            for p in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == list(range(24))


def test_bad_files_are_skipped_counted_and_odd_formats_converted(tmp_path: pathlib.Path):
  for label in ('a', 'b'):
    (tmp_path / label).mkdir()
  (tmp_path / 'a' / 'ok.png').write_bytes(_png(10))
  (tmp_path / 'a' / 'rgba.png').write_bytes(_png(20, mode='RGBA'))
  gray16 = io.BytesIO()
  Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(gray16, 'PNG')
  (tmp_path / 'a' / 'gray16.png').write_bytes(gray16.getvalue())
  cmyk = io.BytesIO()
  Image.new('CMYK', (16, 16), (0, 0, 0, 0)).save(cmyk, 'JPEG')
  (tmp_path / 'b' / 'cmyk.jpg').write_bytes(cmyk.getvalue())
  (tmp_path / 'b' / 'truncated.png').write_bytes(_png(30)[:40])
  (tmp_path / 'b' / 'garbage.jpg').write_bytes(b'not an image at all')
  source = ImageFolderSource(tmp_path)
  assert source.classes == ['a', 'b'] and len(source) == 6
  config = PipelineConfig(batch_size=6, seed=0, shuffle=False, num_epochs=1)
  batch = next(iter(make_dataset(source, _first_pixel, config)))
  assert summarize_skips(batch) == 2 + 1  # garbage skips to truncated (bad) and on to the next good record
  pixels = sorted({tuple(p) for p in batch['pixel'].tolist()})
  # 16-bit white scaled to 8 bits and CMYK (0,0,0,0) are white; RGBA (20,20,20,20) drops its alpha, as the
  # original's convert('RGB') does (tests/test_decode.py).
  assert (255, 255, 255) in pixels and (10, 10, 10) in pixels
  assert (20, 20, 20) in pixels, pixels


def test_empty_or_misarranged_folders_say_how_to_fix(tmp_path: pathlib.Path):
  with pytest.raises(ValueError, match='no class subfolders'):
    ImageFolderSource(tmp_path)
  (tmp_path / 'cls').mkdir()
  with pytest.raises(ValueError, match='no images'):
    ImageFolderSource(tmp_path)
  with pytest.raises(ValueError, match='no images'):
    FlatFolderSource(tmp_path)
  with pytest.raises(ValueError, match='empty'):
    make_dataset(ListSource([]), _first_pixel, PipelineConfig(batch_size=2))


def test_worker_processes_give_the_same_batches():
  source = ListSource([{'image': _png(i), 'label': i} for i in range(16)])
  local = _labels(make_dataset(source, _first_pixel, PipelineConfig(batch_size=4, seed=2)), 4)
  workers = _labels(make_dataset(source, _first_pixel, PipelineConfig(batch_size=4, seed=2, num_workers=2)), 4)
  assert local == workers


def test_processes_read_blocks_of_the_same_global_batches():
  """Two processes' batches, concatenated, equal the single-process batches (augmentations included)."""
  from cast_jax.data import partworld, recipes
  from cast_jax.data.pipeline import PipelineConfig, make_dataset

  source = partworld.PartWholeDataset(24, image_size=64, seed=3)
  recipe = recipes.LinearProbeTrain(lambda pixels: np.zeros(pixels.shape[:2], np.int32), size=32)

  def batches(per_process, index, count, **kw):
    config = PipelineConfig(batch_size=per_process, seed=5, num_epochs=1, **kw)
    return list(make_dataset(source, recipe, config, process_index=index, process_count=count))

  whole = batches(8, 0, 1)
  parts = [batches(4, i, 2) for i in range(2)]
  assert len(whole) == len(parts[0]) == len(parts[1]) == 3
  for k, batch in enumerate(whole):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]), batch[key])
  # A partial last global batch (evaluation): 24 = 2 x 10 + 4 -> process 0 gets 4 rows, process 1 none.
  tail = [batches(5, i, 2, drop_remainder=False, shuffle=False) for i in range(2)]
  assert [sum(len(b['label']) for b in t) for t in tail] == [14, 10]
  whole_tail = batches(10, 0, 1, drop_remainder=False, shuffle=False)
  np.testing.assert_array_equal(np.concatenate([tail[0][-1]['label']]), whole_tail[-1]['label'])


class _CountingRecipe:
  """_first_pixel, counting its calls (from grain's reader threads)."""

  def __init__(self):
    self.calls = 0
    self._lock = __import__('threading').Lock()

  def __call__(self, example, rng):
    with self._lock:
      self.calls += 1
    return _first_pixel(example, rng)


@pytest.mark.parametrize('threads', [1, 2])
def test_the_reader_reads_ahead_one_batch_per_thread_not_hundreds(threads):
  """The pipeline batches before grain's reader, so grain's default buffer (500 elements) meant 500 batches read
  ahead (the 64 px MoCo demo grew to 6-7 GB); now at most one batch per thread is prepared beyond those taken."""
  import time
  source = ListSource([{'image': _png(i), 'label': i} for i in range(64)])
  recipe = _CountingRecipe()
  it = iter(make_dataset(source, recipe, PipelineConfig(batch_size=4, seed=0, read_threads=threads)))
  for _ in range(3):
    next(it)
  time.sleep(1.0)  # let the reader threads run as far ahead as they are allowed
  # 3 batches taken, at most `threads` in the buffer and one more being refilled per thread.
  assert 3 * 4 <= recipe.calls <= (3 + 2 * threads) * 4, recipe.calls
