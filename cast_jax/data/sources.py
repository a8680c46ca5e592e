"""Random-access data sources: image folders and TFDS datasets prepared as ArrayRecord.

A source is anything with ``__len__`` and ``__getitem__(i) -> {'image': bytes | array, 'label': int}``;
decoding happens later (``pipeline.ResilientDecode``), so a corrupt file never breaks listing or indexing.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Optional, Sequence

import numpy as np

_LOG = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.jfif')


def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
  """Every image file under ``folder`` (recursively), sorted."""
  return sorted(p for p in folder.rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageFolderSource:
  """The ImageNet layout: ``root/<class name>/**/<image>``; labels are sorted class names' positions."""

  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)
    if not self.root.is_dir():
      raise FileNotFoundError(f'image folder {self.root} does not exist')
    self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
    if not self.classes:
      raise ValueError(f'{self.root} has no class subfolders; expected root/<class>/<image> (the ImageNet '
                       'layout). For a folder of unlabeled images use FlatFolderSource.')
    self._items = [(path, label) for label, name in enumerate(self.classes)
                   for path in list_images(self.root / name)]
    if not self._items:
      raise ValueError(f'no images with extensions {IMAGE_EXTENSIONS} under {self.root}/<class>/')

  def __len__(self) -> int:
    return len(self._items)

  def __getitem__(self, index: int) -> dict:
    path, label = self._items[index]
    try:
      data = path.read_bytes()
    except OSError:
      data = b''  # unreadable file: the decoder reports and skips it
    return {'image': data, 'label': label, 'path': str(path)}


class FlatFolderSource:
  """Every image under ``root`` (recursively), unlabeled (label -1), e.g. COCO train2017."""

  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)
    if not self.root.is_dir():
      raise FileNotFoundError(f'image folder {self.root} does not exist')
    self._paths = list_images(self.root)
    if not self._paths:
      raise ValueError(f'no images with extensions {IMAGE_EXTENSIONS} under {self.root}')

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> dict:
    try:
      data = self._paths[index].read_bytes()
    except OSError:
      data = b''
    return {'image': data, 'label': -1, 'path': str(self._paths[index])}


class TfdsSource:
  """A TFDS split read with ``tfds.data_source`` (random access; needs the ArrayRecord file format).

  Images come back as the stored (encoded) bytes: TFDS's own decoding would run inside ``__getitem__``, before
  the pipeline's skip logic, and a corrupt record would stop the run there (``cv2.imdecode`` returns None and
  TFDS calls ``.astype`` on it). Undecoded, a bad image is skipped and counted like a bad file in a folder, and
  decoding goes through the same PIL path as image folders. A record TFDS cannot even deserialize is passed on
  as empty bytes, so it is skipped and counted the same way.

  Prepare once, e.g.:
    tfds build imagenette --file_format=array_record --data_dir=~/tensorflow_datasets
  (imagenet2012 needs the manually downloaded archives in ``<data_dir>/downloads/manual``).
  """

  def __init__(self, name: str, split: str, data_dir: Optional[str] = None, image_key: str = 'image',
               label_key: Optional[str] = 'label'):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                      decoders={image_key: tfds.decode.SkipDecoding()})
    except Exception as e:  # tfds raises several types for "not prepared" / "wrong format"
      raise ValueError(
          f"TFDS dataset {name!r} split {split!r} is not available as ArrayRecord under data_dir={data_dir!r} "
          f'({type(e).__name__}: {e}). Prepare it with: tfds build {name.split(":")[0]} '
          f'--file_format=array_record{" --data_dir=" + data_dir if data_dir else ""}') from e
    self._image_key, self._label_key = image_key, label_key

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    try:
      record = self._source[index]
    except IndexError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # A record whose bytes do not parse (protobuf, ArrayRecord chunk): empty bytes, which the pipeline skips
      # and counts. The error types depend on the file format, hence the broad except.
      _LOG.warning('TFDS record %d cannot be read (%s: %s); skipping it', index, type(e).__name__, e)
      return {'image': b'', 'label': -1}
    if self._image_key not in record:
      raise KeyError(f'TFDS records have no {self._image_key!r} feature (they have {sorted(record)}); '
                     'pass image_key= the name of the image feature')
    label = int(record[self._label_key]) if self._label_key and self._label_key in record else -1
    image = record[self._image_key]
    if isinstance(image, np.bytes_):
      image = bytes(image)
    return {'image': image, 'label': label}


class ListSource:
  """In-memory records, for tests and small generated datasets."""

  def __init__(self, records: Sequence[dict]):
    self._records = list(records)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    return self._records[index]
