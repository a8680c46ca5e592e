"""The segmentation datasets the Segmenter configs read: ADE20K and Pascal Context as TFDS ArrayRecord builds.

Records are expected as {'image': encoded or (H, W, 3) uint8, 'label_map': encoded PNG or (H, W) uint8 class
indices} (never a palette converted to RGB). ADE20K keeps its raw ids (0 = 'other'; the recipe's
``reduce_zero_label`` maps 0 to 255 and k to k - 1); Pascal Context holds the 60-class ids, background 0;
VOC 2012 + SBD (``voc2012_aug``, SPML's fine-tuning) the 21 VOC ids with 255 void.

The builders (``data/<name>`` of the repository: ``tfds build data/<name> --file_format=array_record``) make
them from the archives a user downloads; TFDS's own ``scene_parse150`` is a different release (instance PNGs)
and is not accepted here.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
from PIL import Image

# name -> (what to download, the TFDS name the builder registers)
DATASETS = {
    'ade20k': ('ADEChallengeData2016.zip (http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip)',
               'ade20k'),
    'pascal_context': ('VOC2010 (VOCtrainval_03-May-2010.tar) and the 60-class Pascal Context label PNGs',
                       'pascal_context'),
    # SPML's VOC 2012: splits 'train_aug' (10,582 = SBD train_aug, SPML's panoptic_train+ list) and 'val' (1,449);
    # 21 classes, 255 void.
    'voc2012_aug': ('VOC2012 (VOCtrainval_11-May-2012.tar) and SBD (benchmark.tgz, its .mat class maps)',
                    'voc2012_aug'),
}


def _label_array(value, what: str) -> np.ndarray:
  if isinstance(value, (bytes, bytearray)):
    with Image.open(io.BytesIO(value)) as image:
      if image.mode not in ('L', 'P', 'I', 'I;16'):
        raise ValueError(f'{what}: label maps must be single-channel class indices, got a {image.mode} image')
      return np.asarray(image)  # 'P' gives the indices, not the palette colours
  array = np.asarray(value)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 2:
    raise ValueError(f'{what}: label map must be (H, W) class indices; got shape {array.shape}')
  return array


class SegmentationTfdsSource:
  """``ds[i]``: {'image', 'label_map': (H, W) class ids}; raises naming the dataset and what to prepare."""

  def __init__(self, name: str, split: str, data_dir: Optional[str] = None):
    if name not in DATASETS:
      raise ValueError(f'unknown segmentation dataset {name!r}; choose one of {sorted(DATASETS)}')
    archives, tfds_name = DATASETS[name]
    self.name, self.split = name, split
    try:
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
      self._source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # not registered, not built, or not ArrayRecord
      why = str(e).splitlines()[0] if str(e) else ''  # tfds appends the list of every dataset it knows
      raise ValueError(
          f'segmentation dataset {name!r} split {split!r} is not prepared under data_dir={data_dir!r} '
          f'({type(e).__name__}: {why}). Download {archives} and build it once with the repository\'s builder: '
          f'tfds build data/{name} --file_format=array_record --manual_dir=<folder with the archives>'
          f'{" --data_dir=" + data_dir if data_dir else ""} (then set --config.data.data_dir to that folder).') from e

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    if 'image' not in record or 'label_map' not in record:
      raise ValueError(f'{self.name} {self.split} record {index} has keys {sorted(record)}; expected "image" and '
                       f'"label_map" (rebuild it with data/{self.name})')
    label = _label_array(record['label_map'], f'{self.name} {self.split} record {index}')
    return {'image': record['image'], 'label_map': label}


def make(name: str, split: str, data_dir: Optional[str] = None) -> SegmentationTfdsSource:
  return SegmentationTfdsSource(name, split, data_dir)
