"""MetricWriter: TensorBoard events (tensorboardX) read back by TensorBoard's own reader, JSON lines, pictures,
config, closing on errors, and the progress line (with its ETA after a resume)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from cast_jax.run_folder import RunFolder
from cast_jax.train.metric_writer import MetricWriter, format_progress


def _event_files(workdir):
  return sorted((workdir / 'tensorboard').glob('events.out.tfevents.*'))


def _read(workdir) -> event_accumulator.EventAccumulator:
  """TensorBoard's reader over the run's event folder (every image kept, not a sample)."""
  acc = event_accumulator.EventAccumulator(str(workdir / 'tensorboard'),
                                           size_guidance={event_accumulator.IMAGES: 0,
                                                          event_accumulator.SCALARS: 0})
  acc.Reload()
  return acc


def _image(seed, h=5, w=7):
  return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_scalars_and_images_round_trip_through_tensorboard(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.write_scalars(10, {'loss': 2.5, 'lr': 1.5e-4})
  writer.write_scalars(20, {'loss': 1.25, 'lr': 3e-4, 'grad_norm': float('nan')})
  img_a, img_b = _image(0), _image(1, h=3, w=4)
  writer.write_images(20, {'val/segments': img_a, 'train': img_b})
  writer.close()

  assert len(_event_files(tmp_path)) == 1
  acc = _read(tmp_path)
  tags = acc.Tags()
  assert sorted(tags['scalars']) == ['grad_norm', 'loss', 'lr']
  assert sorted(tags['images']) == ['train', 'val/segments']
  assert [(s.step, s.value) for s in acc.Scalars('loss')] == [(10, 2.5), (20, 1.25)]
  assert [s.step for s in acc.Scalars('lr')] == [10, 20]
  assert [s.value for s in acc.Scalars('lr')] == pytest.approx([1.5e-4, 3e-4], rel=1e-6)
  (nan,) = acc.Scalars('grad_norm')
  assert nan.step == 20 and math.isnan(nan.value)
  assert all(s.wall_time > 1e9 for s in acc.Scalars('loss'))

  for tag, want in (('val/segments', img_a), ('train', img_b)):
    (event,) = acc.Images(tag)
    assert (event.step, event.height, event.width) == (20, *want.shape[:2])
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string))), want)
    saved = RunFolder(tmp_path).picture_path(tag, 20)
    assert saved == tmp_path / 'pictures' / f"{tag.replace('/', '_')}_0000020.png"
    np.testing.assert_array_equal(np.asarray(Image.open(saved)), want)


def test_negative_and_large_steps_round_trip(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write_scalars(-3, {'x': 1.0})
    writer.write_scalars(2**40 + 5, {'x': 2.0})
  assert [(s.step, s.value) for s in _read(tmp_path).Scalars('x')] == [(-3, 1.0), (2**40 + 5, 2.0)]


def test_events_are_on_disk_before_close(tmp_path):
  """A run killed with SIGKILL never closes its writer: each write must already be readable."""
  writer = MetricWriter(tmp_path)
  writer.write_scalars(1, {'loss': 0.5})
  assert [(s.step, s.value) for s in _read(tmp_path).Scalars('loss')] == [(1, 0.5)]
  writer.close()


def test_close_on_an_error_flushes_and_closes_everything(tmp_path):
  with pytest.raises(RuntimeError, match='boom'):
    with MetricWriter(tmp_path) as writer:
      writer.write_scalars(3, {'loss': 0.25})
      raise RuntimeError('boom')
  assert writer._events is None and writer._jsonl is None and not writer.enabled  # pylint: disable=protected-access
  assert [(s.step, s.value) for s in _read(tmp_path).Scalars('loss')] == [(3, 0.25)]
  writer.write_scalars(4, {'loss': 1.0})  # a closed writer ignores writes instead of reopening files
  assert len((tmp_path / 'metrics.jsonl').read_text().splitlines()) == 1
  writer.close()  # twice is fine


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
  assert RunFolder(tmp_path).read_metrics() == rows
  # Two writers, two event files (even within one second), and TensorBoard reads both.
  assert len(_event_files(tmp_path)) == 2
  assert [s.step for s in _read(tmp_path).Scalars('loss')] == [1, 2, 3]


def test_write_config(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write_config({'model': {'name': 'cast_small', 'depth': 12}, 'path': tmp_path, 'sizes': (1, 2)})
  text = (tmp_path / 'config.json').read_text()
  assert '\n  "model": {' in text  # indent=2
  expected = {'model': {'name': 'cast_small', 'depth': 12}, 'path': str(tmp_path), 'sizes': [1, 2]}
  assert json.loads(text) == expected
  assert RunFolder(tmp_path).read_config() == expected


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
  assert _read(tmp_path).Tags()['images'] == []


def test_disabled_writer_creates_nothing(tmp_path):
  workdir = tmp_path / 'run'
  writer = MetricWriter(workdir, enabled=False)
  writer.write_config({'a': 1})
  writer.write_scalars(1, {'loss': 1.0})
  writer.write_images(1, {'x': _image(0)})
  writer.write_images(1, {'x': np.zeros(3)})  # Not even validated.
  writer.write_text('parameters.txt', 'x')
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


def test_eta_after_a_resume_counts_from_the_resumed_step():
  # Resumed at 90,000 of 100,000; 10 steps in 20 s here -> 2 s per step, 9,990 steps left -> 19,980 s.
  line = format_progress(90_010, 100_000, {}, 1.0, 20.0, start_step=90_000)
  assert line.endswith('ETA 5:33:00'), line
  # Right after the resume nothing was timed yet.
  assert format_progress(90_000, 100_000, {}, 0.0, 5.0, start_step=90_000).endswith('ETA ?')
  with pytest.raises(ValueError, match='start_step'):
    format_progress(5, 10, {}, 1.0, 1.0, start_step=6)
