"""The data/ TFDS builders: class-index label maps from tiny synthetic copies of each dataset's own layout.

The example generators (``cast_jax.data.segmentation_archives``) are checked directly, exact ids included; the
builders themselves are built end to end with TFDS (no TensorFlow needed) and read back through
``cast_jax.train.inputs.make_source``, as the segmentation configs read them.
"""

import io
import pathlib
import shutil
import tarfile
import zipfile

import ml_collections
import numpy as np
import pytest
from PIL import Image
from scipy import io as scipy_io

from cast_jax.data import segmentation_archives as archives

REPO = pathlib.Path(__file__).resolve().parents[1]


def _voc_palette() -> list[int]:
  """The PASCAL VOC bit-interleaved colour map (256 x RGB), as VOC's SegmentationClass PNGs carry it."""
  palette = []
  for index in range(256):
    r = g = b = 0
    c = index
    for bit in range(8):
      r |= ((c >> 0) & 1) << (7 - bit)
      g |= ((c >> 1) & 1) << (7 - bit)
      b |= ((c >> 2) & 1) << (7 - bit)
      c >>= 3
    palette += [r, g, b]
  return palette


def _ids(h: int, w: int, values, seed: int) -> np.ndarray:
  """(h, w) uint8 map using every id in ``values`` (in the first pixels) plus random ones of them."""
  rng = np.random.default_rng(seed)
  out = rng.choice(np.asarray(values), size=(h, w)).astype(np.uint8)
  out.flat[:len(values)] = values
  return out


def _jpeg(path: pathlib.Path, h: int, w: int, seed: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path, format='JPEG')


def _png(path: pathlib.Path, ids: np.ndarray, mode: str = 'L') -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(ids, 'L')
  if mode == 'P':
    image = image.convert('P')  # keeps the byte values as palette indices
    image.putpalette(_voc_palette())
  elif mode == 'RGB':
    image = image.convert('RGB')
  image.save(path, format='PNG')


def _sbd_mat(path: pathlib.Path, ids: np.ndarray) -> None:
  """An SBD ``cls/<id>.mat``: a GTcls struct with Segmentation, Boundaries and CategoriesPresent."""
  path.parent.mkdir(parents=True, exist_ok=True)
  present = np.unique(ids[ids > 0]).astype(np.uint8)
  scipy_io.savemat(path, {'GTcls': {'Segmentation': ids, 'Boundaries': np.zeros((1, 20), object),
                                    'CategoriesPresent': present}})


def _decoded(record: dict) -> np.ndarray:
  with Image.open(io.BytesIO(record['label_map'])) as image:
    assert image.mode == 'L'
    return np.asarray(image)


# ------------------------------------------------------------------------------------------ synthetic layouts

def _ade20k(root: pathlib.Path) -> dict:
  """ADEChallengeData2016 with 2 train and 1 validation images; returns {stem: ids}."""
  base, labels = root / 'ADEChallengeData2016', {}
  for split, first, stems in (('training', 0, ['ADE_train_00000002', 'ADE_train_00000001']),
                              ('validation', 2, ['ADE_val_00000001'])):
    for i, stem in enumerate(stems, start=first):
      h, w = 6 + i % 2, 9 - i % 2
      _jpeg(base / 'images' / split / f'{stem}.jpg', h, w, seed=i)
      labels[stem] = _ids(h, w, [0, 1, 75, 150], seed=10 + i)  # a different map for each image
      _png(base / 'annotations' / split / f'{stem}.png', labels[stem])
  return labels


def _pascal_context(root: pathlib.Path) -> dict:
  voc, labels = root / 'VOCdevkit' / 'VOC2010', {}
  lists = voc / 'ImageSets' / 'SegmentationContext'
  lists.mkdir(parents=True)
  (lists / 'train.txt').write_text('2008_000002\n2008_000008\n')
  (lists / 'val.txt').write_text('2008_000010\n')
  for i, stem in enumerate(['2008_000002', '2008_000008', '2008_000010', '2008_000099']):  # the last: unlisted
    h, w = 5 + i, 7
    _jpeg(voc / 'JPEGImages' / f'{stem}.jpg', h, w, seed=i)
    labels[stem] = _ids(h, w, [0, 1, 30, 59], seed=20 + i)
    _png(voc / 'SegmentationClassContext' / f'{stem}.png', labels[stem], mode='P' if i == 1 else 'L')
  return labels


def _voc_sbd(root: pathlib.Path) -> dict:
  """VOC2012 (2 palette PNGs), SBD (2 .mat files; one image in both) and SPML's two lists."""
  voc, sbd, labels = root / 'VOCdevkit' / 'VOC2012', root / 'benchmark_RELEASE' / 'dataset' / 'cls', {}
  for i, stem in enumerate(['2007_000032', '2007_000033', '2008_000123', '2009_000456']):
    _jpeg(voc / 'JPEGImages' / f'{stem}.jpg', 6, 8 + i, seed=i)
  labels['2007_000032'] = _ids(6, 8, [0, 1, 15, 20, 255], seed=1)  # VOC only
  labels['2007_000033'] = _ids(6, 9, [0, 7, 255], seed=2)  # VOC and SBD: VOC wins
  labels['2008_000123'] = _ids(6, 10, [0, 3, 12], seed=3)  # SBD only
  _png(voc / 'SegmentationClass' / '2007_000032.png', labels['2007_000032'], mode='P')
  _png(voc / 'SegmentationClass' / '2007_000033.png', labels['2007_000033'], mode='P')
  _sbd_mat(sbd / '2007_000033.mat', np.zeros((6, 9), np.uint8))
  _sbd_mat(sbd / '2008_000123.mat', labels['2008_000123'])
  (root / 'panoptic_train+_hed.txt').write_text(
      'VOC2012/JPEGImages/2008_000123.jpg VOC2012/segcls/2008_000123.png VOC2012/hed/2008_000123.png\n'
      'VOC2012/JPEGImages/2007_000033.jpg VOC2012/segcls/2007_000033.png VOC2012/hed/2007_000033.png\n')
  (root / 'panoptic_val.txt').write_text(
      'VOC2012/JPEGImages/2007_000032.jpg VOC2012/segcls/2007_000032.png VOC2012/segcls/2007_000032.png\n')
  return labels


# ---------------------------------------------------------------------------------------- generators, exact

def test_ade20k_examples_keep_raw_ids(tmp_path):
  labels = _ade20k(tmp_path)
  root = tmp_path / 'ADEChallengeData2016'
  train = list(archives.ade20k_examples(root, 'train'))
  assert [key for key, _ in train] == ['ADE_train_00000001', 'ADE_train_00000002']  # sorted, all of them
  for key, record in train + list(archives.ade20k_examples(root, 'validation')):
    np.testing.assert_array_equal(_decoded(record), labels[key])  # 0 and 150 kept: reduction is the recipe's
    assert record['image'] == (root / 'images' / ('training' if 'train' in key else 'validation')
                               / f'{key}.jpg').read_bytes()
    assert record['file_name'] == f'{key}.jpg'


def test_pascal_context_examples_follow_the_lists_and_read_palette_indices(tmp_path):
  labels = _pascal_context(tmp_path)
  voc = tmp_path / 'VOCdevkit' / 'VOC2010'
  args = (voc / 'JPEGImages', voc / 'SegmentationClassContext', voc / 'ImageSets' / 'SegmentationContext')
  train = dict(archives.pascal_context_examples(*args, 'train'))
  val = dict(archives.pascal_context_examples(*args, 'validation'))
  assert list(train) == ['2008_000002', '2008_000008'] and list(val) == ['2008_000010']
  for key, record in {**train, **val}.items():
    np.testing.assert_array_equal(_decoded(record), labels[key])


def test_voc_sbd_reads_palette_indices_and_sbd_mat(tmp_path):
  labels = _voc_sbd(tmp_path)
  voc, sbd = tmp_path / 'VOCdevkit' / 'VOC2012', tmp_path / 'benchmark_RELEASE' / 'dataset' / 'cls'
  # The trap the issue names: luminance of the palette colours is not the ids.
  with Image.open(voc / 'SegmentationClass' / '2007_000032.png') as image:
    assert image.mode == 'P'
    assert not np.array_equal(np.asarray(image.convert('L')), labels['2007_000032'])
  train = dict(archives.voc_sbd_examples(voc, sbd, tmp_path / 'panoptic_train+_hed.txt'))
  val = dict(archives.voc_sbd_examples(voc, sbd, tmp_path / 'panoptic_val.txt'))
  assert list(train) == ['2008_000123', '2007_000033'] and list(val) == ['2007_000032']  # list order
  assert [train['2008_000123']['label_source'], train['2007_000033']['label_source'],
          val['2007_000032']['label_source']] == ['sbd', 'voc', 'voc']
  for key, record in {**train, **val}.items():
    np.testing.assert_array_equal(_decoded(record), labels[key])
  assert set(np.unique(_decoded(val['2007_000032'])).tolist()) == {0, 1, 15, 20, 255}

  # SegSort's converted segcls PNG, where the list names one that exists, is what SPML reads: it comes first.
  segcls = _ids(6, 9, [0, 9], seed=5)
  _png(tmp_path / 'VOCdevkit' / 'VOC2012' / 'segcls' / '2007_000033.png', segcls)
  (tmp_path / 'VOCdevkit' / 'segcls_list.txt').write_text(
      'VOC2012/JPEGImages/2007_000033.jpg VOC2012/segcls/2007_000033.png\n'  # SPML's: relative to VOCdevkit
      '/JPEGImages/2008_000123.jpg /segcls/2008_000123.png\n')  # DeepLab's: relative to VOC2012
  listed = dict(archives.voc_sbd_examples(voc, sbd, tmp_path / 'VOCdevkit' / 'segcls_list.txt'))
  assert [r['label_source'] for r in listed.values()] == ['list', 'sbd']  # the second's segcls file is absent
  np.testing.assert_array_equal(_decoded(listed['2007_000033']), segcls)


# -------------------------------------------------------------------------------------------------- bad input

def test_a_listed_file_that_is_missing_is_named(tmp_path):
  _voc_sbd(tmp_path)
  voc, sbd = tmp_path / 'VOCdevkit' / 'VOC2012', tmp_path / 'benchmark_RELEASE' / 'dataset' / 'cls'
  listed = tmp_path / 'panoptic_train+_hed.txt'
  listed.write_text(listed.read_text() + 'VOC2012/JPEGImages/2010_999999.jpg x y\n')
  with pytest.raises(FileNotFoundError, match=r'panoptic_train\+_hed.txt:3 names .2010_999999. but '
                                              r'.*JPEGImages/2010_999999.jpg does not exist'):
    list(archives.voc_sbd_examples(voc, sbd, listed))
  # An image that exists but has neither label: both places are named.
  listed.write_text('2009_000456\n')
  with pytest.raises(FileNotFoundError, match=r':1 names .2009_000456. but it has no label map: none of '
                                              r'.*SegmentationClass/2009_000456.png, .*cls/2009_000456.mat exists'):
    list(archives.voc_sbd_examples(voc, sbd, listed))
  with pytest.raises(FileNotFoundError, match='split list .*nowhere.txt does not exist'):
    list(archives.voc_sbd_examples(voc, sbd, tmp_path / 'nowhere.txt'))
  listed.write_text('2007_000032\n2007_000032\n')
  with pytest.raises(ValueError, match=r':2: image .2007_000032. is listed twice \(first at line 1\)'):
    list(archives.voc_sbd_examples(voc, sbd, listed))


@pytest.mark.parametrize('dataset, bad_id', [('ade20k', 151), ('pascal_context', 60), ('voc_sbd', 21)])
def test_a_label_id_out_of_range_is_named(tmp_path, dataset, bad_id):
  if dataset == 'ade20k':
    _ade20k(tmp_path)
    path = tmp_path / 'ADEChallengeData2016' / 'annotations' / 'training' / 'ADE_train_00000002.png'
    run = lambda: list(archives.ade20k_examples(tmp_path / 'ADEChallengeData2016', 'train'))
  elif dataset == 'pascal_context':
    _pascal_context(tmp_path)
    voc = tmp_path / 'VOCdevkit' / 'VOC2010'
    path = voc / 'SegmentationClassContext' / '2008_000008.png'
    run = lambda: list(archives.pascal_context_examples(voc / 'JPEGImages', voc / 'SegmentationClassContext',
                                                        voc / 'ImageSets' / 'SegmentationContext', 'train'))
  else:
    _voc_sbd(tmp_path)
    path = tmp_path / 'benchmark_RELEASE' / 'dataset' / 'cls' / '2008_000123.mat'
    run = lambda: list(archives.voc_sbd_examples(tmp_path / 'VOCdevkit' / 'VOC2012', path.parent,
                                                 tmp_path / 'panoptic_train+_hed.txt'))
  assert run()  # fine before the edit
  if path.suffix == '.mat':
    ids = archives.read_sbd_mat(path)
    ids[2, 3] = bad_id
    _sbd_mat(path, ids)
  else:
    ids = archives.read_label_png(path)
    ids[1, 2] = bad_id
    _png(path, ids)
  with pytest.raises(ValueError, match=rf'{path.name}: label ids \[{bad_id}\] are outside \[0, {bad_id}\) '
                                       r'and are not the ignore id 255'):
    run()


def test_rgb_labels_size_mismatch_and_unpaired_ade_files_are_refused(tmp_path):
  _ade20k(tmp_path)
  root = tmp_path / 'ADEChallengeData2016'
  label = root / 'annotations' / 'validation' / 'ADE_val_00000001.png'
  ids = archives.read_label_png(label)
  _png(label, ids, mode='RGB')
  with pytest.raises(ValueError, match='ADE_val_00000001.png: a RGB image; label maps must be single-channel'):
    list(archives.ade20k_examples(root, 'validation'))
  _png(label, ids[:, :-1])
  with pytest.raises(ValueError, match=r'label map is 6x8 \(HxW\) but its image .*ADE_val_00000001.jpg is 6x9'):
    list(archives.ade20k_examples(root, 'validation'))
  label.unlink()
  with pytest.raises(FileNotFoundError, match='1 images of .*validation have no label map .*ADE_val_00000001.png'):
    list(archives.ade20k_examples(root, 'validation'))
  with pytest.raises(ValueError, match="unknown ADE20K split 'val'"):
    list(archives.ade20k_examples(root, 'val'))


def test_archives_that_would_write_outside_their_folder_are_refused(tmp_path):
  with zipfile.ZipFile(tmp_path / 'evil.zip', 'w') as zipped:
    zipped.writestr('../escaped.txt', 'x')
  with pytest.raises(ValueError, match=r"evil.zip: member '../escaped.txt' would be written outside"):
    archives.extract_archive(tmp_path / 'evil.zip', tmp_path / 'out')
  assert not (tmp_path / 'escaped.txt').exists()
  (tmp_path / 'plain.txt').write_text('x')
  with pytest.raises(ValueError, match='plain.txt is neither a zip nor a tar archive'):
    archives.extract_archive(tmp_path / 'plain.txt', tmp_path / 'out2')


# ---------------------------------------------------------------------------------- TFDS builds, end to end

def _read_back(name: str, data_dir: pathlib.Path, split: str) -> dict:
  from cast_jax.train import inputs  # pylint: disable=import-outside-toplevel

  source = inputs.make_source(ml_collections.ConfigDict({'name': name, 'data_dir': str(data_dir)}), split)
  out = {}
  for i in range(len(source)):
    record = source[i]
    assert isinstance(record['image'], bytes)  # undecoded: the pipeline decodes (and skips bad ones)
    out[i] = record
  return out


def test_tfds_builds_ade20k_from_the_zip_and_the_configs_read_it(tmp_path):
  from cast_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel

  unpacked, manual = tmp_path / 'unpacked', tmp_path / 'manual'
  labels = _ade20k(unpacked)
  manual.mkdir()
  with zipfile.ZipFile(manual / 'ADEChallengeData2016.zip', 'w') as zipped:
    for path in sorted((unpacked / 'ADEChallengeData2016').rglob('*')):
      zipped.write(path, path.relative_to(unpacked))
  builder = tfds_builders.build(REPO / 'data' / 'ade20k', manual, str(tmp_path / 'tfds'))
  assert builder.name == 'ade20k' and builder.info.file_format.value == 'array_record'
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train': 2, 'validation': 1}
  for split in ('train', 'validation'):
    records = _read_back('ade20k', tmp_path / 'tfds', split)
    seen = set()
    for record in records.values():
      matches = [k for k, v in labels.items() if v.shape == record['label_map'].shape
                 and np.array_equal(v, record['label_map'])]
      assert len(matches) == 1
      seen.add(matches[0])
      folder = 'training' if split == 'train' else 'validation'
      assert record['image'] == (unpacked / 'ADEChallengeData2016' / 'images' / folder
                                 / f'{matches[0]}.jpg').read_bytes()
    assert len(seen) == len(records)

  # Through the pipeline with the Segmenter's ADE recipe: the records decode, and the zero label is reduced
  # there (0 -> 255, k -> k - 1), not in the build.
  from cast_jax.data import pipeline, segmentation  # pylint: disable=import-outside-toplevel
  from cast_jax.train import inputs  # pylint: disable=import-outside-toplevel

  source = inputs.make_source(ml_collections.ConfigDict({'name': 'ade20k', 'data_dir': str(tmp_path / 'tfds')}),
                              'validation')
  recipe = segmentation.SegmentationEval(img_scale=(9, 6), reduce_zero_label=True)
  (batch,) = pipeline.make_dataset(source, recipe, pipeline.PipelineConfig(batch_size=1, shuffle=False,
                                                                           num_epochs=1))
  raw = labels['ADE_val_00000001']
  np.testing.assert_array_equal(batch['label_map'][0], np.where(raw == 0, 255, raw.astype(np.int32) - 1))
  assert batch['image'].shape == (1, 6, 9, 3) and batch['skipped'].tolist() == [0]


def test_tfds_builds_voc_sbd_from_a_tgz_and_pascal_context_from_folders(tmp_path):
  from cast_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel

  voc_labels = _voc_sbd(tmp_path / 'voc')
  # SBD given packed, as downloaded: the builder unpacks benchmark.tgz itself.
  with tarfile.open(tmp_path / 'voc' / 'benchmark.tgz', 'w:gz') as tarred:
    tarred.add(tmp_path / 'voc' / 'benchmark_RELEASE', 'benchmark_RELEASE')
  shutil.rmtree(tmp_path / 'voc' / 'benchmark_RELEASE')
  builder = tfds_builders.build(REPO / 'data' / 'voc_sbd', tmp_path / 'voc', str(tmp_path / 'tfds'))
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train_aug': 2, 'validation': 1}
  assert (tmp_path / 'tfds' / 'downloads' / 'extracted' / 'benchmark.tgz' / 'benchmark_RELEASE').is_dir()
  val = _read_back('voc_sbd', tmp_path / 'tfds', 'validation')
  np.testing.assert_array_equal(val[0]['label_map'], voc_labels['2007_000032'])
  train = [r['label_map'] for r in _read_back('voc_sbd', tmp_path / 'tfds', 'train_aug').values()]
  assert sorted(m.shape[1] for m in train) == [9, 10]
  for ids in train:
    key = '2007_000033' if ids.shape[1] == 9 else '2008_000123'
    np.testing.assert_array_equal(ids, voc_labels[key])

  pc_labels = _pascal_context(tmp_path / 'pc')
  builder = tfds_builders.build(REPO / 'data' / 'pascal_context', tmp_path / 'pc', str(tmp_path / 'tfds'))
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train': 2, 'validation': 1}
  (record,) = _read_back('pascal_context', tmp_path / 'tfds', 'validation').values()
  np.testing.assert_array_equal(record['label_map'], pc_labels['2008_000010'])


def test_a_build_without_its_files_says_what_to_download(tmp_path):
  from cast_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel

  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'unrelated.txt').write_text('x')
  with pytest.raises(FileNotFoundError, match=r'(?s)the ADEChallengeData2016 folder not found; looked for: .*'
                                              r'Put ADEChallengeData2016.zip \(packed or unpacked\) in the manual '
                                              r'folder .*manual:.*Download ADEChallengeData2016.zip'):
    tfds_builders.build(REPO / 'data' / 'ade20k', tmp_path / 'manual', str(tmp_path / 'tfds'))
