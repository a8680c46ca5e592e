"""Training metrics: a JSON-lines log, TensorBoard event files (tensorboardX), PNG snapshots and a progress line.

    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    writer.write_config(config.to_dict())
    writer.write_scalars(step, {'loss': loss, 'lr': lr})
    writer.write_images(step, {'val/segments': rgb_uint8})
    print(format_progress(step, total_steps, {'loss': loss}, images_per_second, elapsed, start_step=resumed_at))
    writer.close()

Where each file goes is decided by ``cast_jax.run_folder``. TensorBoard files are written by tensorboardX (no
TensorFlow needed); read them with TensorBoard itself (``tensorboard --logdir=WORKDIR/tensorboard``).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import pathlib
import time
from typing import Any, Mapping

import numpy as np
from PIL import Image
from tensorboardX import summary as tb_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event

from cast_jax.run_folder import RunFolder

# Two writers opened in the same second by one process (a restart in a notebook, tests) would get the same
# tensorboardX file name (seconds, host); a per-process counter and the pid keep every writer's file its own.
_WRITER_COUNTER = itertools.count()


class _EventFile:
  """One new event file, written synchronously.

  tensorboardX's ``SummaryWriter`` hands events to a background thread and its ``flush()`` does not wait for
  that queue, so a run killed right after logging would lose its last events; its ``EventsWriter`` (the same
  record writer, without the thread) writes each event before returning.
  """

  def __init__(self, logdir: pathlib.Path):
    logdir.mkdir(parents=True, exist_ok=True)
    self._writer = EventsWriter(str(logdir / 'events'), f'.{os.getpid()}.{next(_WRITER_COUNTER)}')

  def write(self, step: int, summaries) -> None:
    for summary in summaries:
      self._writer.write_event(Event(wall_time=time.time(), step=step, summary=summary))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _json_value(value: Any) -> Any:
  """A JSON-safe number. NaN/inf become the strings "nan"/"inf"/"-inf": bare NaN/Infinity tokens are
  not JSON, and strict parsers (jq, JavaScript, pandas with some engines) reject the whole line."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  value = float(value)  # Also unwraps 0-d numpy / jax arrays.
  if math.isnan(value):
    return 'nan'
  if math.isinf(value):
    return 'inf' if value > 0 else '-inf'
  return value


def _check_image(tag: str, image: Any) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
    raise ValueError(f'image {tag!r}: expected a uint8 array of shape (H, W, 3), '
                     f'got dtype {image.dtype} and shape {image.shape}')
  return image


def _png_bytes(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image)).save(buf, format='PNG')
  return buf.getvalue()


class MetricWriter:
  """Writes metrics of one run under ``workdir`` (layout: ``cast_jax.run_folder``).

  ``metrics.jsonl`` (one line per ``write_scalars``, appended across restarts), ``tensorboard/`` (one new
  event file per writer), ``pictures/`` (PNG copies of ``write_images``) and ``config.json``. With
  ``enabled=False`` (non-zero processes in a multi-host run) every method does nothing and no file is created.
  Use it as a context manager (or call ``close``) so the event file is flushed and closed on errors too.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
    self.run = RunFolder(workdir)
    self.workdir = self.run.root
    self.enabled = enabled
    self._jsonl = None
    self._events = None
    if enabled:
      self.run.root.mkdir(parents=True, exist_ok=True)
      self._events = _EventFile(self.run.tensorboard_dir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One JSON line ``{"step": step, **scalars}`` and one TensorBoard scalar per entry."""
    if not self.enabled:
      return
    step = int(step)
    if self._jsonl is None:
      self._jsonl = open(self.run.metrics_path, 'a', encoding='utf-8')
    line = {'step': step, **{k: _json_value(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(line) + '\n')
    self._jsonl.flush()
    self._events.write(step, [tb_summary.scalar(tag, float(value)) for tag, value in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Image summaries, plus ``pictures/<tag with / as _>_<step:07d>.png`` for each image."""
    if not self.enabled:
      return
    step = int(step)
    # Check every image first, so a bad one leaves no half-written batch behind.
    checked = {tag: _check_image(tag, image) for tag, image in images.items()}
    if not checked:
      return
    self.run.pictures_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for tag, image in checked.items():
      self.run.picture_path(tag, step).write_bytes(_png_bytes(image))
      summaries.append(tb_summary.image(tag, image, dataformats='HWC'))
    self._events.write(step, summaries)

  def write_config(self, config: Mapping[str, Any]) -> None:
    """``config.json``, indented; values JSON has no type for (paths, dtypes, ...) are written with ``str``."""
    if not self.enabled:
      return
    self.run.write_config(dict(config))

  def write_text(self, name: str, text: str) -> None:
    """A text file of the run folder (e.g. ``run_folder.PARAMETERS``), replaced if present."""
    if not self.enabled:
      return
    (self.run.root / name).write_text(text, encoding='utf-8')

  def close(self) -> None:
    """Flushes and closes every file; safe to call twice (and after an error half-way through a run)."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._events is not None:
      self._events.close()
      self._events = None
    self.enabled = False

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# --------------------------------------------------------------------------- progress line

_FIRST_KEYS = ('loss', 'lr', 'momentum')
_FORMATS = {'loss': '.4f', 'lr': '.2e', 'momentum': '.5f'}


def _duration(seconds: float) -> str:
  """``H:MM:SS``; hours keep counting past a day so the line stays one token wide."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}'


def format_progress(step: int, total_steps: int, scalars: Mapping[str, float], images_per_second: float,
                    elapsed_seconds: float, start_step: int = 0) -> str:
  """E.g. ``step 120/1000 (12.0%)  loss 5.1234  lr 1.50e-04  momentum 0.99000  3.2 img/s  ETA 0:43:12``.

  ``elapsed_seconds`` is the time this process has trained since ``start_step`` (the step it resumed from, 0
  for a fresh run); the ETA assumes the remaining steps take the average time of those steps. Keys come
  loss, lr, momentum first, then the rest sorted, so lines stay comparable across a run.
  """
  if start_step < 0 or start_step > step:
    raise ValueError(f'start_step {start_step} must lie in [0, step={step}]: it is the step this process '
                     'resumed from, and elapsed_seconds counts from there')
  percent = 100.0 * step / total_steps if total_steps > 0 else 0.0
  parts = [f'step {step}/{total_steps} ({percent:.1f}%)']
  keys = [k for k in _FIRST_KEYS if k in scalars] + sorted(k for k in scalars if k not in _FIRST_KEYS)
  for key in keys:
    parts.append(f'{key} {float(scalars[key]):{_FORMATS.get(key, ".4g")}}')
  parts.append(f'{images_per_second:.1f} img/s')
  done_here = step - start_step
  if done_here > 0:
    parts.append(f'ETA {_duration(elapsed_seconds / done_here * max(total_steps - step, 0))}')
  else:
    parts.append('ETA ?')
  return '  '.join(parts)
