"""The segmentation datasets built by the repository's ``data/`` builders, read as TFDS ArrayRecord.

Records are {'image': the image file's bytes, 'label_map': a PNG of class indices} (never a palette converted
to RGB; ``cast_jax.data.segmentation_archives`` writes them). Both are read undecoded and decoded here / by the
pipeline with PIL: a corrupt image is then skipped and counted like a bad file in a folder, and a palette PNG
gives its indices (TFDS's cv2 decoding would expand a palette to colours). Ids are stored as the datasets have
them: ADE20K keeps 0 = 'other' (the recipe's ``reduce_zero_label`` maps 0 to 255 and k to k - 1), Pascal
Context holds the 60-class ids (background 0), VOC 2012 + SBD 0..20 with 255 void.

Build once (``data/README.md``): ``python data/build.py <name> --manual_dir=<archives>`` (no TensorFlow) or
``tfds build data/<name> --manual_dir=<archives>`` (TFDS's CLI needs TensorFlow, apache-beam and mlcroissant).
TFDS's own ``scene_parse150`` is a different release of ADE20K (instance PNGs) and is not accepted here.
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
    'voc_sbd': ("VOC 2012 (VOCtrainval_11-May-2012.tar), SBD's benchmark.tgz and SPML's split lists "
                '(panoptic_train+_hed.txt, panoptic_val.txt)', 'voc_sbd'),
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
      skip = tfds.decode.SkipDecoding()
      self._source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False,
                                      decoders={'image': skip, 'label_map': skip})
    except Exception as e:  # not registered, not built, or not ArrayRecord
      why = str(e).splitlines()[0] if str(e) else ''  # tfds appends the list of every dataset it knows
      raise ValueError(
          f'segmentation dataset {name!r} split {split!r} is not prepared under data_dir={data_dir!r} '
          f'({type(e).__name__}: {why}). Download {archives} and build it once with the repository\'s builder: '
          f'python data/build.py {name} --manual_dir=<folder with the archives>'
          f'{" --data_dir=" + data_dir if data_dir else ""} (or, where TensorFlow is installed, tfds build data/{name} '
          'with the same flags; then set --config.data.data_dir to that data folder).') from e

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    if 'image' not in record or 'label_map' not in record:
      raise ValueError(f'{self.name} {self.split} record {index} has keys {sorted(record)}; expected "image" and '
                       f'"label_map" (rebuild it with data/{self.name})')
    label = _label_array(record['label_map'], f'{self.name} {self.split} record {index}')
    image = record['image']
    if isinstance(image, np.bytes_):
      image = bytes(image)
    return {'image': image, 'label_map': label}


def make(name: str, split: str, data_dir: Optional[str] = None) -> SegmentationTfdsSource:
  return SegmentationTfdsSource(name, split, data_dir)
