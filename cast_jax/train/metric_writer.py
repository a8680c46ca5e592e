"""Training metrics: a JSON-lines log, TensorBoard event files, PNG snapshots and a progress line.

TensorBoard event files are written without TensorFlow, tensorboard or protobuf: the few protobuf
messages needed (``Event``, ``Summary``, ``Summary.Value``, ``Summary.Image``) are encoded by hand and
framed as TFRecords, which keeps those heavy packages out of the dependencies. ``read_events`` parses
the files back (checking every CRC), for tests and for quick looks at a run without TensorBoard.

    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    writer.write_config(config.to_dict())
    writer.write_scalars(step, {'loss': loss, 'lr': lr})
    writer.write_images(step, {'val/segments': rgb_uint8})
    print(format_progress(step, total_steps, {'loss': loss}, images_per_second, elapsed))
    writer.close()
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import pathlib
import socket
import struct
import time
from typing import Any, BinaryIO, Mapping

import numpy as np
from PIL import Image

FILE_VERSION = 'brain.Event:2'

# --------------------------------------------------------------------------- crc32c


def _crc32c_table() -> tuple[int, ...]:
  """Byte-at-a-time table for CRC-32C (Castagnoli), reflected polynomial 0x82F63B78."""
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C of ``data`` (the checksum TFRecord framing uses; zlib's crc32 is a different polynomial)."""
  crc = 0xFFFFFFFF
  table = _CRC_TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotate right by 15 and add a constant, so CRCs of CRCs do not degenerate."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- protobuf wire format

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
  # Negative int64/int32 are sent as their 64-bit two's complement (10 bytes), as protobuf does.
  value &= 0xFFFFFFFFFFFFFFFF
  out = bytearray()
  while value >= 0x80:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint((field << 3) | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
  return _key(field, _LEN) + _varint(len(payload)) + payload


def _varint_field(field: int, value: int) -> bytes:
  return _key(field, _VARINT) + _varint(value)


def _encode_image(height: int, width: int, png: bytes) -> bytes:
  """``Summary.Image``; colorspace 3 means RGB."""
  return (_varint_field(1, height) + _varint_field(2, width) + _varint_field(3, 3)
          + _len_field(4, png))


def _encode_value(tag: str, *, simple_value: float | None = None, image: bytes | None = None) -> bytes:
  """``Summary.Value`` holding either a scalar (field 2, float32) or an encoded image (field 4)."""
  out = _len_field(1, tag.encode('utf-8'))
  if simple_value is not None:
    out += _key(2, _FIXED32) + struct.pack('<f', simple_value)
  if image is not None:
    out += _len_field(4, image)
  return out


def _encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                  summary_values: list[bytes] | None = None) -> bytes:
  out = _key(1, _FIXED64) + struct.pack('<d', wall_time) + _varint_field(2, step)
  if file_version is not None:
    out += _len_field(3, file_version.encode('utf-8'))
  if summary_values is not None:
    out += _len_field(5, b''.join(_len_field(1, v) for v in summary_values))
  return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError('truncated varint in protobuf message')
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return result, pos
    shift += 7


def _fields(buf: bytes):
  """Yields ``(field, wire_type, value)``; value is an int for varints, bytes otherwise."""
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire_type = key >> 3, key & 7
    if wire_type == _VARINT:
      value, pos = _read_varint(buf, pos)
    elif wire_type in (_FIXED64, _FIXED32):
      size = 8 if wire_type == _FIXED64 else 4
      value, pos = buf[pos:pos + size], pos + size
    elif wire_type == _LEN:
      size, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + size], pos + size
    else:
      raise ValueError(f'unsupported protobuf wire type {wire_type}')
    if pos > len(buf):
      raise ValueError('truncated protobuf message')
    yield field, wire_type, value


def _signed64(value: int) -> int:
  return value - (1 << 64) if value >= 1 << 63 else value


def _decode_event(buf: bytes) -> dict[str, Any]:
  event: dict[str, Any] = {'wall_time': 0.0, 'step': 0}
  for field, _, value in _fields(buf):
    if field == 1:
      event['wall_time'] = struct.unpack('<d', value)[0]
    elif field == 2:
      event['step'] = _signed64(value)
    elif field == 3:
      event['file_version'] = value.decode('utf-8')
    elif field == 5:
      scalars, images = {}, {}
      for vfield, _, vbuf in _fields(value):
        if vfield != 1:
          continue
        tag, simple, image = '', None, None
        for f, _, v in _fields(vbuf):
          if f == 1:
            tag = v.decode('utf-8')
          elif f == 2:
            simple = struct.unpack('<f', v)[0]
          elif f == 4:
            image = {f2: v2 for f2, _, v2 in _fields(v)}
        if simple is not None:
          scalars[tag] = simple
        if image is not None:
          images[tag] = (_signed64(image.get(1, 0)), _signed64(image.get(2, 0)), bytes(image.get(4, b'')))
      event['scalars'], event['images'] = scalars, images
  return event


# --------------------------------------------------------------------------- TFRecord framing


def _write_record(f: BinaryIO, data: bytes) -> None:
  header = struct.pack('<Q', len(data))
  f.write(header + struct.pack('<I', masked_crc32c(header)) + data
          + struct.pack('<I', masked_crc32c(data)))


def _read_records(raw: bytes, name: str):
  pos = 0
  while pos < len(raw):
    if pos + 12 > len(raw):
      raise ValueError(f'{name}: truncated record header at byte {pos}')
    header = raw[pos:pos + 8]
    (length,) = struct.unpack('<Q', header)
    (header_crc,) = struct.unpack('<I', raw[pos + 8:pos + 12])
    if header_crc != masked_crc32c(header):
      raise ValueError(f'{name}: corrupt record length at byte {pos} (CRC mismatch)')
    start, end = pos + 12, pos + 12 + length
    if end + 4 > len(raw):
      raise ValueError(f'{name}: truncated record at byte {pos}')
    data = raw[start:end]
    (data_crc,) = struct.unpack('<I', raw[end:end + 4])
    if data_crc != masked_crc32c(data):
      raise ValueError(f'{name}: corrupt record data at byte {pos} (CRC mismatch)')
    yield data
    pos = end + 4


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Parses a TensorBoard event file (or every ``events.out.tfevents.*`` in a directory, by name).

  Each event is ``{'wall_time', 'step'}`` plus either ``'file_version'`` or ``'scalars': {tag: float}``
  and ``'images': {tag: (height, width, png_bytes)}``. Raises ValueError on a corrupt or truncated record.
  """
  path = pathlib.Path(path)
  files = sorted(path.glob('events.out.tfevents.*')) if path.is_dir() else [path]
  events = []
  for file in files:
    for data in _read_records(file.read_bytes(), str(file)):
      events.append(_decode_event(data))
  return events


# --------------------------------------------------------------------------- writer


class _EventFileWriter:
  """Appends events to one new event file; the first record is the ``file_version`` event."""

  def __init__(self, logdir: pathlib.Path):
    logdir.mkdir(parents=True, exist_ok=True)
    stem = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
    # Two writers opened in the same second by one process (a restart in a notebook, tests) would share
    # the name; the last number counts up instead, so each file keeps one file_version record at its head.
    for counter in itertools.count():
      self.path = logdir / f'{stem}.{counter}'
      try:
        self._file = open(self.path, 'xb')
        break
      except FileExistsError:
        continue
    self.write([_encode_event(time.time(), 0, file_version=FILE_VERSION)])

  def write(self, events: list[bytes]) -> None:
    for event in events:
      _write_record(self._file, event)
    self._file.flush()

  def close(self) -> None:
    self._file.close()


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
  """Writes metrics of one run under ``workdir``.

  ``metrics.jsonl`` (one line per ``write_scalars``), ``tensorboard/`` (event files), ``pictures/``
  (PNG copies of ``write_images``) and ``config.json``. With ``enabled=False`` (non-zero processes in a
  multi-host run) every method does nothing and no file is created.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._jsonl = None
    self._events = None
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._events = _EventFileWriter(self.workdir / 'tensorboard')

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One JSON line ``{"step": step, **scalars}`` and one TensorBoard event holding every scalar."""
    if not self.enabled:
      return
    step = int(step)
    if self._jsonl is None:
      self._jsonl = open(self.workdir / 'metrics.jsonl', 'a', encoding='utf-8')
    line = {'step': step, **{k: _json_value(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(line) + '\n')
    self._jsonl.flush()
    values = [_encode_value(tag, simple_value=float(v)) for tag, v in scalars.items()]
    self._events.write([_encode_event(time.time(), step, summary_values=values)])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """PNG image summaries, plus ``pictures/<tag with / as _>_<step:07d>.png`` for each image."""
    if not self.enabled:
      return
    step = int(step)
    # Check every image first, so a bad one leaves no half-written batch behind.
    checked = {tag: _check_image(tag, image) for tag, image in images.items()}
    pictures = self.workdir / 'pictures'
    pictures.mkdir(parents=True, exist_ok=True)
    values = []
    for tag, image in checked.items():
      png = _png_bytes(image)
      (pictures / f"{tag.replace('/', '_')}_{step:07d}.png").write_bytes(png)
      height, width = image.shape[:2]
      values.append(_encode_value(tag, image=_encode_image(height, width, png)))
    self._events.write([_encode_event(time.time(), step, summary_values=values)])

  def write_config(self, config: Mapping[str, Any]) -> None:
    """``config.json``, indented; values JSON has no type for (paths, dtypes, ...) are written with ``str``."""
    if not self.enabled:
      return
    (self.workdir / 'config.json').write_text(json.dumps(config, indent=2, default=str) + '\n',
                                              encoding='utf-8')

  def close(self) -> None:
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


def format_progress(step: int, total_steps: int, scalars: Mapping[str, float],
                    images_per_second: float, elapsed_seconds: float) -> str:
  """E.g. ``step 120/1000 (12.0%)  loss 5.1234  lr 1.50e-04  momentum 0.99000  3.2 img/s  ETA 0:43:12``.

  The ETA assumes the remaining steps take the average time per step so far (``elapsed / step``).
  Keys come loss, lr, momentum first, then the rest sorted, so lines stay comparable across a run.
  """
  percent = 100.0 * step / total_steps if total_steps > 0 else 0.0
  parts = [f'step {step}/{total_steps} ({percent:.1f}%)']
  keys = [k for k in _FIRST_KEYS if k in scalars] + sorted(k for k in scalars if k not in _FIRST_KEYS)
  for key in keys:
    parts.append(f'{key} {float(scalars[key]):{_FORMATS.get(key, ".4g")}}')
  parts.append(f'{images_per_second:.1f} img/s')
  if step > 0:
    parts.append(f'ETA {_duration(elapsed_seconds / step * max(total_steps - step, 0))}')
  else:
    parts.append('ETA ?')
  return '  '.join(parts)
