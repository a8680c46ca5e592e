"""TFDS builders of the segmentation datasets (ADE20K, Pascal Context, VOC 2012 + SBD) from downloaded archives.

The repository's ``data/<name>/<name>_dataset_builder.py`` files subclass these (TFDS names a builder after its
module, so the concrete ``Builder`` classes must live there). Build one with either

    tfds build data/ade20k --manual_dir=<folder with the archives>          # TFDS's CLI: TensorFlow, beam, mlcroissant
    python data/build.py ade20k --manual_dir=<folder with the archives>     # the same builder, no TensorFlow

The output is ArrayRecord by default (``--file_format`` overrides it), read back by
``cast_jax.data.segmentation_sources`` (``tfds.data_source``, random access). Records:
{'image': the image file's JPEG bytes, 'label_map': (H, W, 1) PNG of class ids, 'file_name': str} (plus
'label_source' for voc_sbd). The example logic is ``cast_jax.data.segmentation_archives`` (plain Python).

Archives may be given packed or unpacked: each builder first looks for the unpacked folder in the manual
folder and otherwise unpacks the archive it knows (into ``<data_dir>/downloads/extracted``) with Python's
zipfile/tarfile, because TFDS's own extractor needs TensorFlow. Writing needs no TensorFlow either: images go
in as their own bytes and label maps as PNGs encoded with PIL (TFDS would call ``tf.image.encode_png`` on arrays).
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Iterator, Optional, Sequence

import tensorflow_datasets as tfds

from cast_jax.data import segmentation_archives as archives


class _SegmentationArchives(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared parts: features, ArrayRecord by default, finding (or unpacking) folders in the manual folder."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Class-index label maps from the original archives.'}
  DESCRIPTION = ''
  HOMEPAGE = ''
  EXTRA_FEATURES: dict = {}

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
        'label_map': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
        'file_name': tfds.features.Text(),
    }
    features.update({k: v() for k, v in self.EXTRA_FEATURES.items()})
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                 features=tfds.features.FeaturesDict(features), homepage=self.HOMEPAGE)

  def _generate_examples(self, examples: Iterator[archives.Example]):
    yield from examples

  def _manual(self, dl_manager) -> pathlib.Path:
    return pathlib.Path(os.fspath(dl_manager.manual_dir))

  def _locate(self, dl_manager, candidates: Sequence[str], what: str, archive: Optional[str]) -> pathlib.Path:
    """The first candidate folder under the manual folder; failing that, under ``archive`` (a file in the
    manual folder) unpacked once into ``<data_dir>/downloads/extracted/<archive>``."""
    manual = self._manual(dl_manager)
    roots = [manual]
    if archive is not None and archives.find_dir(roots, candidates) is None and (manual / archive).is_file():
      extracted = pathlib.Path(os.fspath(dl_manager.download_dir)) / 'extracted' / archive
      roots.append(archives.extract_archive(manual / archive, extracted))
    return archives.require_dir(
        roots, candidates, what, f'Put {archive or "it"} (packed or unpacked) in the manual folder {manual}:\n'
        f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')


class Ade20k(_SegmentationArchives, skip_registration=True):
  """ADEChallengeData2016 (SceneParsing, 150 classes): 20,210 train / 2,000 validation images.

  Label maps keep the raw ids (0 = 'other', 1..150); the Segmenter's ``reduce_zero_label`` is the recipe's job
  (``cast_jax.data.segmentation.DATASETS['ade20k']``). TFDS's own ``scene_parse150`` is a different release of
  the data (its annotations are instance PNGs, not these class-index maps) and is not what the configs read.
  """

  DESCRIPTION = ('ADE20K SceneParsing (ADEChallengeData2016): images and class-index label maps, raw ids '
                 "(0 = 'other', 1..150). Not TFDS's scene_parse150, which is a different release.")
  HOMEPAGE = 'http://sceneparsing.csail.mit.edu/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download ADEChallengeData2016.zip (http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip)
  into the manual folder, as it is or unpacked (ADEChallengeData2016/{images,annotations}/{training,validation}).
  """

  def _split_generators(self, dl_manager):
    root = self._locate(dl_manager, ('ADEChallengeData2016', 'ade20k/ADEChallengeData2016'),
                        'the ADEChallengeData2016 folder', 'ADEChallengeData2016.zip')
    return {split: self._generate_examples(archives.ade20k_examples(root, split)) for split in archives.ADE20K_SPLITS}


class PascalContext(_SegmentationArchives, skip_registration=True):
  """Pascal Context, 60 classes (background 0 included): 4,998 train / 5,105 validation images of VOC2010."""

  DESCRIPTION = ('Pascal Context, 60 classes (0 = background, counted in the mIoU), on VOC2010 images, as '
                 "mmseg's PascalContextDataset and the Segmenter read it.")
  HOMEPAGE = 'https://cs.stanford.edu/~roozbeh/pascal-context/'
  _VOC2010 = ('VOCdevkit/VOC2010', 'pcontext/VOCdevkit/VOC2010', 'VOC2010')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  1. VOCtrainval_03-May-2010.tar (the VOC2010 images), as it is or unpacked (VOCdevkit/VOC2010/JPEGImages).
  2. The 60-class label maps and split lists, made by mmseg's tools/convert_datasets/pascal_context.py (from
     trainval_merged.json) or the Segmenter's segm/scripts/prepare_pcontext.py:
     VOCdevkit/VOC2010/SegmentationClassContext/<id>.png (single-channel ids 0..59) and
     VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt (4,998 / 5,105 ids).
  """

  def _split_generators(self, dl_manager):
    images = self._locate(dl_manager, [f'{p}/JPEGImages' for p in self._VOC2010], 'VOC2010 JPEGImages',
                          'VOCtrainval_03-May-2010.tar')
    labels = self._locate(dl_manager, [f'{p}/SegmentationClassContext' for p in self._VOC2010]
                          + ['SegmentationClassContext'], 'the Pascal Context label folder SegmentationClassContext',
                          None)
    lists = self._locate(dl_manager, [f'{p}/ImageSets/SegmentationContext' for p in self._VOC2010]
                         + ['ImageSets/SegmentationContext', 'SegmentationContext'],
                         'the split lists ImageSets/SegmentationContext', None)
    return {split: self._generate_examples(archives.pascal_context_examples(images, labels, lists, split))
            for split in archives.PASCAL_CONTEXT_SPLITS}


class VocSbd(_SegmentationArchives, skip_registration=True):
  """Pascal VOC 2012 + SBD as SPML reads it: 'train_aug' (train+, 10,582 images), 'validation' (1,449)."""

  DESCRIPTION = ('Pascal VOC 2012 segmentation with the SBD augmentation (train_aug 10,582 / val 1,449), 21 '
                 'classes, 255 void; labels from the files SPML lists (SegSort segcls) when present, else VOC '
                 'palette PNGs (indices) or SBD cls/*.mat (label_source says which).')
  HOMEPAGE = 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/'
  EXTRA_FEATURES = {'label_source': tfds.features.Text}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  1. VOCtrainval_11-May-2012.tar, as it is or unpacked (VOCdevkit/VOC2012/{JPEGImages,SegmentationClass}).
  2. SBD's benchmark.tgz, as it is or unpacked (benchmark_RELEASE/dataset/cls/<id>.mat).
  3. SPML's split lists, next to them: panoptic_train+_hed.txt (10,582 lines) and panoptic_val.txt (1,449)
     from SPML's datasets/voc12/ (other names accepted: train_aug.txt, val.txt; one id or path per line).
  4. Optional: SegSort's segcls PNGs in VOCdevkit/VOC2012/segcls/ (what SPML reads; used first when present).
  """

  def _split_generators(self, dl_manager):
    voc = self._locate(dl_manager, ('VOCdevkit/VOC2012', 'VOC2012'), 'the VOCdevkit/VOC2012 folder',
                       'VOCtrainval_11-May-2012.tar')
    sbd = self._locate(dl_manager, ('benchmark_RELEASE/dataset/cls', 'sbd/dataset/cls', 'SBD/cls', 'cls'),
                       "SBD's benchmark_RELEASE/dataset/cls folder", 'benchmark.tgz')
    manual = self._manual(dl_manager)
    generators = {}
    for split, names in archives.VOC_SBD_LISTS.items():
      list_file = archives.require_file([manual], names, f'the {split} split list',
                                        f'Put it in the manual folder:\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
      generators[split] = self._generate_examples(archives.voc_sbd_examples(voc, sbd, list_file))
    return generators


def load_builder_class(folder: str | os.PathLike) -> type:
  """The ``Builder`` of ``data/<name>``, imported as TFDS's CLI does (module ``<name>.<name>_dataset_builder``
  with ``data/`` on the path, registration skipped so repeated loads do not collide)."""
  folder = pathlib.Path(folder).resolve()
  module = folder / f'{folder.name}_dataset_builder.py'
  if not module.is_file():
    raise FileNotFoundError(f'{module} does not exist; pass a data/<name> folder of this repository')
  with tfds.core.utils.add_sys_path(folder.parent):
    return tfds.core.community.builder_cls_from_module(f'{folder.name}.{module.stem}')


def build(folder: str | os.PathLike, manual_dir: str | os.PathLike, data_dir: Optional[str] = None,
          file_format: str = 'array_record') -> tfds.core.DatasetBuilder:
  """Builds ``data/<name>`` from the archives in ``manual_dir`` into ``data_dir`` (TFDS's default when None)."""
  builder = load_builder_class(folder)(data_dir=data_dir, file_format=file_format)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def main(argv: Optional[Sequence[str]] = None, data_root: Optional[pathlib.Path] = None) -> None:
  """``python data/build.py NAME --manual_dir=... [--data_dir=...] [--file_format=...]``."""
  import argparse  # pylint: disable=import-outside-toplevel

  data_root = data_root or pathlib.Path(__file__).resolve().parents[2] / 'data'
  names = sorted(p.name for p in data_root.iterdir() if (p / f'{p.name}_dataset_builder.py').is_file())
  parser = argparse.ArgumentParser(description='Build a segmentation dataset of data/ as TFDS ArrayRecord, '
                                   'without TensorFlow.')
  parser.add_argument('name', choices=names)
  parser.add_argument('--manual_dir', required=True, help='folder holding the downloaded archives')
  parser.add_argument('--data_dir', default=None, help='TFDS data folder (default ~/tensorflow_datasets)')
  parser.add_argument('--file_format', default='array_record')
  args = parser.parse_args(argv)
  builder = build(data_root / args.name, args.manual_dir, args.data_dir, args.file_format)
  print(f'built {builder.name} {builder.version} in {builder.data_dir}: '
        + ', '.join(f'{k} {v.num_examples}' for k, v in builder.info.splits.items()), file=sys.stdout)

