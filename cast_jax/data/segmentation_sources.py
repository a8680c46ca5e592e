"""The segmentation datasets: TFDS ArrayRecord builds of the repository's ``data/`` builders, or ADE20K and
Pascal Context as the folders their archives unpack to (``SegmentationFolderSource``, mmseg's layout).

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

import dataclasses
import io
import pathlib
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
    name = f'{self.name} {self.split} record {index}'
    if record.get('file_name'):
      name += f' ({_text(record["file_name"])})'
    label = _label_array(record['label_map'], name)
    image = record['image']
    if isinstance(image, np.bytes_):
      image = bytes(image)
    if isinstance(image, np.ndarray):  # decoded by TFDS: compare sizes here, naming the record
      check_sizes(image, label, name)
    return {'image': image, 'label_map': label, 'file_name': name}


def _text(value) -> str:
  return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


def make(name: str, split: str, data_dir: Optional[str] = None) -> SegmentationTfdsSource:
  return SegmentationTfdsSource(name, split, data_dir)


@dataclasses.dataclass(frozen=True)
class FolderLayout:
  """Where one split's files are under the dataset root, as mmseg's ``CustomDataset`` finds them: images
  ``img_dir/NAME + img_suffix``, label maps ``ann_dir/NAME + seg_map_suffix``; NAME from the split list
  (one name per line, no suffix) when ``split_file`` is set, else every image in ``img_dir``. ``{split}`` in
  any of the three is the split's name (the config's train_split / eval_split)."""

  img_dir: str
  ann_dir: str
  split_file: str = ''
  img_suffix: str = '.jpg'
  seg_map_suffix: str = '.png'


# The unpacked archives (mmseg's configs/_base_/datasets): ADE20K's splits are 'training' / 'validation', Pascal
# Context's 'train' / 'val' (the 60-class label PNGs of the Detail API in SegmentationClassContext).
FOLDER_LAYOUTS = {
    'ade20k': FolderLayout('images/{split}', 'annotations/{split}'),
    'pascal_context': FolderLayout('JPEGImages', 'SegmentationClassContext', 'ImageSets/SegmentationContext/{split}.txt'),
}


def folder_layout(data) -> FolderLayout:
  """The layout a config's data block names: ``data.folder_layout`` is a key of FOLDER_LAYOUTS or a dict of
  FolderLayout's fields."""
  layout = data.get('folder_layout', 'ade20k')
  if isinstance(layout, str):
    if layout not in FOLDER_LAYOUTS:
      raise ValueError(f'data.folder_layout={layout!r} is not one of {sorted(FOLDER_LAYOUTS)}; or give a dict with '
                       f'the fields {[f.name for f in dataclasses.fields(FolderLayout)]}')
    return FOLDER_LAYOUTS[layout]
  return FolderLayout(**dict(layout))


class SegmentationFolderSource:
  """``ds[i]``: {'image': (H, W, 3) uint8, 'label_map': (H, W) class ids, 'file_name': the image's path} from
  image and label files on disk (``FolderLayout``).

  Checked when built: the folders (and the split list, when the layout has one) exist, and every listed image
  has its label map; checked per example: both decode, the label map is single-channel, and it covers its
  image pixel for pixel. Each error names the file and what was expected.
  """

  def __init__(self, root, split: str, layout: FolderLayout):
    self.root, self.split, self.layout = pathlib.Path(root).expanduser(), split, layout
    img_dir = self.root / layout.img_dir.format(split=split)
    ann_dir = self.root / layout.ann_dir.format(split=split)
    for what, folder in (('image', img_dir), ('label map', ann_dir)):
      if not folder.is_dir():
        raise FileNotFoundError(f'{folder}: no such folder; split {split!r} reads its {what}s from '
                                f'<data.path>/{(layout.img_dir if what == "image" else layout.ann_dir)} '
                                f'(data.path={str(self.root)!r}); check data.path, the split names and data.folder_layout')
    if layout.split_file:
      split_file = self.root / layout.split_file.format(split=split)
      if not split_file.is_file():
        raise FileNotFoundError(f'{split_file}: split list not found; split {split!r} takes its image names from '
                                f'it (one name per line, without {layout.img_suffix!r}); check data.path, the split '
                                f'name and data.folder_layout (its split_file is {layout.split_file!r})')
      names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
      if not names:
        raise ValueError(f'{split_file}: the split list is empty; expected one image name per line')
    else:
      names = sorted(p.name[:-len(layout.img_suffix)] for p in img_dir.iterdir()
                     if p.name.endswith(layout.img_suffix))
      if not names:
        raise ValueError(f'{img_dir}: no *{layout.img_suffix} images for split {split!r}')
    self.files = [(img_dir / (n + layout.img_suffix), ann_dir / (n + layout.seg_map_suffix)) for n in names]
    missing = [str(p) for pair in self.files for p in pair if not p.is_file()]
    if missing:
      raise FileNotFoundError(f'split {split!r} lists {len(missing)} files that do not exist, e.g. {missing[:3]}; '
                              f'every name needs {layout.img_dir}/NAME{layout.img_suffix} and '
                              f'{layout.ann_dir}/NAME{layout.seg_map_suffix}')

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict:
    image_path, label_path = self.files[index]
    from cast_jax.data.decode import decode_image  # pylint: disable=import-outside-toplevel

    image, reason = decode_image(image_path.read_bytes())
    if image is None:
      raise ValueError(f'{image_path}: the image cannot be decoded ({reason})')
    try:
      label = _label_array(label_path.read_bytes(), str(label_path))
    except OSError as e:  # PIL's "cannot identify image file"
      raise ValueError(f'{label_path}: the label map cannot be decoded ({e}); expected a single-channel PNG of '
                       'class indices') from e
    check_sizes(image, label, f'{image_path} / {label_path}')
    return {'image': image, 'label_map': label, 'file_name': str(image_path)}

  def __repr__(self) -> str:
    return f'SegmentationFolderSource({str(self.root)!r}, split={self.split!r}, {len(self)} images)'


def check_sizes(image: np.ndarray, label: np.ndarray, what: str) -> None:
  """Raises ValueError unless the label map (H, W) covers the image (H, W, 3) pixel for pixel."""
  if tuple(np.shape(label)[:2]) != tuple(np.shape(image)[:2]):
    raise ValueError(f'{what}: image is {tuple(np.shape(image)[:2])} (H, W) but its label map is '
                     f'{tuple(np.shape(label)[:2])}; every label map must cover its image pixel for pixel')
