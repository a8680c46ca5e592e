"""MetricWriter: hand-encoded TensorBoard events round-trip, JSON lines, pictures, progress line."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from cast_jax.train.metric_writer import (
    MetricWriter, crc32c, format_progress, masked_crc32c, read_events)


def _event_file(workdir):
  files = sorted((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  assert len(files) == 1, files
  return files[0]


def _image(seed, h=5, w=7):
  return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_crc32c_known_vectors():
  assert crc32c(b'123456789') == 0xE3069283
  assert crc32c(b'') == 0
  assert crc32c(b'a') == 0xC1D04330
  # The masked value follows the TFRecord formula.
  crc = 0xE3069283
  assert masked_crc32c(b'123456789') == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def test_scalars_and_images_round_trip(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.write_scalars(10, {'loss': 2.5, 'lr': 1.5e-4})
  writer.write_scalars(20, {'loss': 1.25, 'lr': 3e-4, 'grad_norm': float('nan')})
  img_a, img_b = _image(0), _image(1, h=3, w=4)
  writer.write_images(20, {'val/segments': img_a, 'train': img_b})
  writer.close()

  events = read_events(_event_file(tmp_path))
  assert events[0]['file_version'] == 'brain.Event:2'
  assert 'scalars' not in events[0]
  assert len(events) == 4
  assert [e['step'] for e in events[1:]] == [10, 20, 20]
  assert all(e['wall_time'] > 1e9 for e in events)

  assert events[1]['scalars'] == {'loss': 2.5, 'lr': pytest.approx(1.5e-4, rel=1e-6)}
  assert events[1]['images'] == {}
  s2 = events[2]['scalars']
  assert s2['loss'] == 1.25 and s2['lr'] == pytest.approx(3e-4, rel=1e-6)
  assert math.isnan(s2['grad_norm'])

  images = events[3]['images']
  assert events[3]['scalars'] == {}
  assert sorted(images) == ['train', 'val/segments']
  for tag, want in (('val/segments', img_a), ('train', img_b)):
    h, w, png = images[tag]
    assert (h, w) == want.shape[:2]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), want)
    saved = tmp_path / 'pictures' / f"{tag.replace('/', '_')}_0000020.png"
    np.testing.assert_array_equal(np.asarray(Image.open(saved)), want)

  # A directory reads the same as its single file.
  assert read_events(tmp_path / 'tensorboard')[1]['scalars']['loss'] == 2.5


def test_negative_and_large_steps_round_trip(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write_scalars(-3, {'x': 1.0})
    writer.write_scalars(2**40 + 5, {'x': 2.0})
  events = read_events(_event_file(tmp_path))
  assert [e['step'] for e in events[1:]] == [-3, 2**40 + 5]


@pytest.mark.parametrize('where', ['length', 'data'])
def test_corrupt_byte_raises(tmp_path, where):
  with MetricWriter(tmp_path) as writer:
    writer.write_scalars(1, {'loss': 1.0})
  path = _event_file(tmp_path)
  raw = bytearray(path.read_bytes())
  assert len(read_events(path)) == 2
  # The second record starts after the first: 8 length + 4 crc + data + 4 crc.
  first_len = int.from_bytes(raw[:8], 'little')
  second = 16 + first_len
  offset = second + (0 if where == 'length' else 12 + 3)
  raw[offset] ^= 0x01
  path.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match='CRC mismatch'):
    read_events(path)


def test_truncated_file_raises(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write_scalars(1, {'loss': 1.0})
  path = _event_file(tmp_path)
  path.write_bytes(path.read_bytes()[:-2])
  with pytest.raises(ValueError, match='truncated'):
    read_events(path)


def test_metrics_jsonl(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.write_scalars(1, {'loss': 0.5, 'acc': np.float32(0.25), 'count': np.int64(7)})
  writer.write_scalars(2, {'loss': float('nan'), 'lr': float('inf'), 'g': -float('inf')})
  writer.close()
  # Appending: a second writer on the same workdir adds lines, it does not truncate.
  with MetricWriter(tmp_path) as again:
    again.write_scalars(3, {'loss': 0.125})

  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 3
  # parse_constant is only called for NaN/Infinity tokens: there must be none.
  rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f'non-JSON token {c}')) for line in lines]
  assert rows[0] == {'step': 1, 'loss': 0.5, 'acc': 0.25, 'count': 7}
  assert rows[1] == {'step': 2, 'loss': 'nan', 'lr': 'inf', 'g': '-inf'}
  assert rows[2] == {'step': 3, 'loss': 0.125}
  # Two writers, two event files.
  assert len(list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))) == 2


def test_write_config(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write_config({'model': {'name': 'cast_small', 'depth': 12}, 'path': tmp_path, 'sizes': (1, 2)})
  text = (tmp_path / 'config.json').read_text()
  assert '\n  "model": {' in text  # indent=2
  assert json.loads(text) == {'model': {'name': 'cast_small', 'depth': 12}, 'path': str(tmp_path),
                              'sizes': [1, 2]}


@pytest.mark.parametrize('bad', [
    np.zeros((4, 4, 3), np.float32),
    np.zeros((4, 4), np.uint8),
    np.zeros((4, 4, 4), np.uint8),
    np.zeros((0, 4, 3), np.uint8),
])
def test_bad_images_rejected(tmp_path, bad):
  with MetricWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match=r'uint8 array of shape \(H, W, 3\)'):
      writer.write_images(5, {'ok': _image(0), 'bad': bad})
  # Nothing of the batch was written.
  assert not list((tmp_path / 'pictures').glob('*.png'))
  assert len(read_events(_event_file(tmp_path))) == 1


def test_disabled_writer_creates_nothing(tmp_path):
  workdir = tmp_path / 'run'
  writer = MetricWriter(workdir, enabled=False)
  writer.write_config({'a': 1})
  writer.write_scalars(1, {'loss': 1.0})
  writer.write_images(1, {'x': _image(0)})
  writer.write_images(1, {'x': np.zeros(3)})  # Not even validated.
  writer.close()
  assert not workdir.exists()
  assert list(tmp_path.iterdir()) == []


def test_format_progress():
  line = format_progress(120, 1000, {'zeta': 3.0, 'momentum': 0.99, 'lr': 1.5e-4, 'loss': 5.12344,
                                     'acc': 0.5}, images_per_second=3.21, elapsed_seconds=360.0)
  # 360 s / 120 steps = 3 s per step; 880 steps left -> 2640 s = 0:44:00.
  assert line == ('step 120/1000 (12.0%)  loss 5.1234  lr 1.50e-04  momentum 0.99000  acc 0.5  zeta 3  '
                  '3.2 img/s  ETA 0:44:00')
  # Past a day the hours keep counting.
  assert format_progress(1, 101, {}, 1.0, 1000.0).endswith('ETA 27:46:40')
  assert format_progress(0, 10, {'loss': 1.0}, 0.0, 0.0) == 'step 0/10 (0.0%)  loss 1.0000  0.0 img/s  ETA ?'
  assert format_progress(10, 10, {}, 5.0, 50.0).endswith('ETA 0:00:00')


def test_tensorboard_reads_our_files_when_installed(tmp_path):
  """Extra check against the real reader; the hand-rolled reader above covers the format without it."""
  try:
    from tensorboard.backend.event_processing import event_accumulator
  except ImportError:
    return
  with MetricWriter(tmp_path) as writer:
    writer.write_scalars(7, {'loss': 0.75})
    writer.write_images(7, {'val/img': _image(2)})
  acc = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'), size_guidance={'images': 0})
  acc.Reload()
  scalars = acc.Scalars('loss')
  assert [(s.step, s.value) for s in scalars] == [(7, 0.75)]
  (img,) = acc.Images('val/img')
  assert (img.step, img.height, img.width) == (7, 5, 7)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(img.encoded_image_string))), _image(2))
