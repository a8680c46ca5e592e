"""Bad segmentation input stops with an error naming the file and what was expected: a label id the model does
not have (other than 255), a label map of another size than its image, a missing split list or file. And the
folder source (mmseg's layout) reads what it should when nothing is wrong.
"""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cast_jax.data import segmentation as seg
from cast_jax.data.segmentation_sources import FOLDER_LAYOUTS, FolderLayout, SegmentationFolderSource, folder_layout
from cast_jax.models.variants import ModelSpec
from cast_jax.train import inputs, tasks

LAYOUT = FOLDER_LAYOUTS['pascal_context']  # JPEGImages/, SegmentationClassContext/, ImageSets/.../{split}.txt


def no_superpixels(view):
  return np.zeros(view.shape[:2], np.int32)


def write_pascal_like(root, sizes, labels=None, split='val', palette=False):
  """Images NAME.jpg (``sizes`` (H, W) each) and label PNGs in Pascal Context's layout, split list included.
  Returns the label maps written."""
  (root / 'JPEGImages').mkdir(parents=True)
  (root / 'SegmentationClassContext').mkdir()
  (root / 'ImageSets' / 'SegmentationContext').mkdir(parents=True)
  rng = np.random.default_rng(0)
  written = []
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / 'JPEGImages' / f'im{i}.jpg')
    label = labels[i] if labels is not None else rng.integers(0, 5, (h, w)).astype(np.uint8)
    png = Image.fromarray(label)
    if palette:  # a palette PNG: its pixels are the indices, its colours only for display
      png = png.convert('P')
      png.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
    png.save(root / 'SegmentationClassContext' / f'im{i}.png')
    written.append(label)
  (root / 'ImageSets' / 'SegmentationContext' / f'{split}.txt').write_text(
      ''.join(f'im{i}\n' for i in range(len(sizes))))
  return written


def test_folder_source_reads_images_label_indices_and_names(tmp_path):
  labels = write_pascal_like(tmp_path, [(20, 30), (24, 16)], palette=True)
  source = SegmentationFolderSource(tmp_path, 'val', LAYOUT)
  assert len(source) == 2
  example = source[1]
  assert example['image'].shape == (24, 16, 3) and example['image'].dtype == np.uint8
  np.testing.assert_array_equal(example['label_map'], labels[1])  # indices, not palette colours
  assert example['file_name'].endswith('JPEGImages/im1.jpg')


def test_folder_source_through_the_config(tmp_path):
  write_pascal_like(tmp_path, [(20, 30)], split='train')
  data = ml_collections.ConfigDict(dict(name='segmentation_folder', path=str(tmp_path), folder_layout='pascal_context'))
  source = inputs.make_source(data, 'train')
  assert isinstance(source, SegmentationFolderSource) and len(source) == 1
  custom = dict(img_dir='imgs', ann_dir='anns', split_file='', img_suffix='.png', seg_map_suffix='.png')
  assert folder_layout({'folder_layout': custom}) == FolderLayout(**custom)
  with pytest.raises(ValueError, match="folder_layout='voc'"):
    folder_layout({'folder_layout': 'voc'})


def test_missing_split_list_names_the_file_and_the_format(tmp_path):
  write_pascal_like(tmp_path, [(20, 30)], split='val')
  with pytest.raises(FileNotFoundError) as error:
    SegmentationFolderSource(tmp_path, 'train', LAYOUT)
  message = str(error.value)
  assert str(tmp_path / 'ImageSets' / 'SegmentationContext' / 'train.txt') in message
  assert 'split list not found' in message and 'one name per line' in message


def test_missing_folder_and_listed_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='JPEGImages: no such folder'):
    SegmentationFolderSource(tmp_path, 'val', LAYOUT)
  write_pascal_like(tmp_path, [(20, 30)])
  (tmp_path / 'SegmentationClassContext' / 'im0.png').unlink()
  with pytest.raises(FileNotFoundError, match=r'SegmentationClassContext/im0\.png'):
    SegmentationFolderSource(tmp_path, 'val', LAYOUT)
  (tmp_path / 'ImageSets' / 'SegmentationContext' / 'val.txt').write_text('\n')
  with pytest.raises(ValueError, match='split list is empty'):
    SegmentationFolderSource(tmp_path, 'val', LAYOUT)


def test_label_map_of_another_size_names_both_files(tmp_path):
  write_pascal_like(tmp_path, [(20, 30), (24, 16)], labels=[np.zeros((20, 30), np.uint8), np.zeros((16, 24), np.uint8)])
  source = SegmentationFolderSource(tmp_path, 'val', LAYOUT)
  assert source[0]['label_map'].shape == (20, 30)
  with pytest.raises(ValueError) as error:
    source[1]
  message = str(error.value)
  assert 'JPEGImages/im1.jpg' in message and 'SegmentationClassContext/im1.png' in message
  assert '(24, 16)' in message and '(16, 24)' in message and 'pixel for pixel' in message


def test_recipes_reject_a_label_map_of_another_size():
  """A source that does not check (a TFDS record, PartWorld) is caught by the recipes."""
  example = {'image': np.zeros((32, 40, 3), np.uint8), 'label_map': np.zeros((40, 32), np.uint8),
             'file_name': 'ade20k validation record 7'}
  with pytest.raises(ValueError, match=r'ade20k validation record 7: image is \(32, 40\).*\(40, 32\)'):
    seg.SegmentationEval(img_scale=(64, 32))(example)
  with pytest.raises(ValueError, match='record 7: image is'):
    seg.SegmentationTrain(no_superpixels, crop_size=32, img_scale=(64, 32))(example, np.random.default_rng(0))


def test_label_ids_beyond_the_classes_name_the_file():
  label = np.zeros((32, 32), np.uint8)
  label[:4] = 255  # ignored: fine
  label[10, 10] = 5  # the model has 5 classes (0-4)
  example = {'image': np.zeros((32, 32, 3), np.uint8), 'label_map': label, 'file_name': '/data/im3.jpg'}
  train = seg.SegmentationTrain(no_superpixels, crop_size=32, img_scale=(64, 32), num_classes=5)
  with pytest.raises(ValueError, match=r'/data/im3.jpg: label map holds class ids \[5\] outside \[0, 5\)'):
    train(example, np.random.default_rng(0))
  with pytest.raises(ValueError, match=r'/data/im3.jpg: .*\[5\]'):
    seg.SegmentationEval(img_scale=(64, 32), num_classes=5)(example)
  ok = seg.SegmentationEval(img_scale=(64, 32), num_classes=6)(example)['label_map']
  assert ok[10, 10] == 5 and (ok[:4] == 255).all()
  # ADE20K's raw ids are 1..150 (0 unlabelled): raw 151 becomes 150 after reduce_zero_label, one too many.
  label[10, 10] = 6
  with pytest.raises(ValueError, match=r'\[5\] \(after reduce_zero_label'):
    seg.SegmentationEval(img_scale=(64, 32), num_classes=5, reduce_zero_label=True)(example)
  # Without a name the message still says what was wrong.
  with pytest.raises(ValueError, match='its source gives no file name'):
    seg.SegmentationEval(img_scale=(64, 32), num_classes=5)({'image': example['image'], 'label_map': label})


def test_segmentation_trainer_checks_label_ids_against_the_model():
  data = ml_collections.ConfigDict(dict(superpixels='segmentation', superpixel_overrides={}, crop_size=32,
                                        img_scale=(64, 32), ratio_range=(0.5, 2.0), cat_max_ratio=0.75,
                                        reduce_zero_label=False, invert_quirk=True))
  spec = ModelSpec(kind='cast_seg_deit', seg_classes=7, num_clusters=(8, 4, 2, 1), max_segments=16)
  assert tasks.segmentation_train_recipe(data, spec).recipe.num_classes == 7


def test_colour_label_maps_are_refused():
  example = {'image': np.zeros((8, 8, 3), np.uint8), 'label_map': np.zeros((8, 8, 3), np.uint8), 'file_name': 'x.png'}
  with pytest.raises(ValueError, match=r'x.png: the label map must be \(H, W\) class indices'):
    seg.SegmentationEval(img_scale=(16, 8))(example)
