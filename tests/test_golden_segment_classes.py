"""``python -m cast_jax.segment`` with a Segmenter checkpoint writes per-pixel class maps: on the golden
``segmenter_window`` image (the golden checkpoint converted by the command-line converter, the fixture's window
settings) its class-index PNG is the original's sliding-window prediction, away from near-ties.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cast_jax import convert, segment, visualize
from cast_jax.models.variants import ModelSpec
from cast_jax.segment_classes import ClassMapSegmenter, settings_for, write_class_map
from conftest import checkpoint_path
from test_golden_segmenter import (TIE_MARGIN, WINDOW_FOLDERS, require_folder, segmenter_spec,
                                   window_slots)


def converted(tmp_path, folder):
  """(meta, inputs, outputs, npz path) of a segmenter_window folder, its checkpoint converted."""
  path = require_folder(folder)
  meta = json.loads((path / 'meta.json').read_text())
  spec = segmenter_spec(meta, window_slots(meta))  # the command raises the slots when a window needs more
  npz = tmp_path / 'segmenter.npz'
  assert convert.main([str(checkpoint_path(path)), str(npz),
                       '--max-segments', str(spec.max_segments), '--num-clusters', ','.join(map(str, spec.num_clusters)),
                       '--decoder-heads', str(spec.decoder_heads), '--num-heads', str(spec.num_heads)]) == 0
  return meta, np.load(path / 'inputs.npz'), np.load(path / 'outputs.npz'), npz


@pytest.mark.parametrize('folder', WINDOW_FOLDERS)  # every fixture set of kind segmenter_window
def test_segment_command_writes_the_originals_class_map(folder, tmp_path, capsys):
  meta, inputs, expected, npz = converted(tmp_path, folder)
  image = inputs['image_uint8']
  height, width = image.shape[:2]
  photos = tmp_path / 'photos'
  photos.mkdir()
  Image.fromarray(image).save(photos / 'coffee.png')
  # The same picture at twice the size: the test resize brings it back to 100 x 140 (cv2 bilinear at exactly
  # 0.5 of a nearest 2x is the original), and the class map comes back at 200 x 280.
  Image.fromarray(image.repeat(2, 0).repeat(2, 1)).save(photos / 'coffee_x2.png')
  (photos / 'broken.jpg').write_bytes(b'not an image')
  out = tmp_path / 'out'
  # img_scale (4 x 140, 100): the largest kept-ratio size within it is the image itself, as in the fixture.
  argv = [str(photos), '--checkpoint', str(npz), '--out', str(out), '--window', str(meta['window_size']),
          '--stride', str(meta['window_stride']), '--window-batch', str(meta['window_batch_size']),
          '--img-scale', str(4 * width), str(height)]
  assert segment.main(argv) == 1  # the broken file fails, the others are written
  printed = capsys.readouterr()
  assert '2/3 images segmented into class maps' in printed.out and 'broken.jpg' in printed.err

  classes = np.asarray(Image.open(out / 'coffee_classes.png'))
  assert classes.dtype == np.uint8 and classes.shape == (height, width)
  differ = (classes != expected['prediction']) & (expected['prediction_margin'] >= TIE_MARGIN)
  assert not differ.any(), f'{int(differ.sum())} pixels differ from the original away from ties'
  assert len(np.unique(classes)) >= 3
  colour = np.asarray(Image.open(out / 'coffee_classes_colour.png'))
  np.testing.assert_array_equal(colour, visualize.PALETTE[classes])
  overlay = np.asarray(Image.open(out / 'coffee_classes_overlay.png'))
  assert overlay.shape == (height, width, 3)
  inside = ~visualize.boundaries(classes)
  np.testing.assert_array_equal(overlay[inside], ((image.astype(int) + colour) // 2)[inside])

  large = np.asarray(Image.open(out / 'coffee_x2_classes.png'))
  assert large.shape == (2 * height, 2 * width)
  # The same logits, bilinearly resized x2 before the argmax: each output pixel mixes its own pixel's logits with
  # neighbours' (align_corners=False), and a mix of logits that all pick class c picks c. So it may differ from
  # the original's map only where a pixel's 3x3 neighbourhood holds another class or a near-tie.
  differ = large != expected['prediction'].repeat(2, 0).repeat(2, 1)
  allowed = near(expected['prediction'], lambda shifted, own: shifted != own)
  allowed |= near(expected['prediction_margin'], lambda shifted, own: shifted < TIE_MARGIN)
  outside = differ & ~allowed.repeat(2, 0).repeat(2, 1)
  assert not outside.any(), f'{int(outside.sum())} pixels of the x2 map differ away from class borders and ties'


def near(values: np.ndarray, test) -> np.ndarray:
  """(H, W) bool: ``test(neighbour, own)`` holds for some pixel of the 3x3 neighbourhood (edges repeated)."""
  height, width = values.shape
  padded = np.pad(values, 1, mode='edge')
  found = np.zeros((height, width), bool)
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      found |= test(padded[dy:dy + height, dx:dx + width], values)
  return found


def test_class_map_settings_from_a_workdir_and_defaults(tmp_path):
  spec = ModelSpec(kind='cast_seg_deit', embed_dim=24, num_clusters=(8, 4, 2, 1), max_segments=16, seg_classes=3,
                   image_size=512)
  npz_like = settings_for(tmp_path / 'x.npz', spec)
  assert (npz_like.window, npz_like.stride, npz_like.img_scale) == (512, 480, (2048, 512))
  assert npz_like.superpixels.pixels_per_segment == 256 and npz_like.superpixels.invert_uint8
  assert settings_for(tmp_path / 'x.npz', spec, window=480).stride == 448
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'config.json').write_text(json.dumps({'data': {
      'crop_size': 64, 'window_stride': 48, 'window_batch': 3, 'img_scale': [128, 64], 'superpixels': 'segmentation',
      'superpixel_overrides': {'pixels_per_segment': 84}, 'invert_quirk': False}}))
  run = settings_for(tmp_path / 'run', spec)
  assert (run.window, run.stride, run.window_batch, run.img_scale) == (64, 48, 3, (128, 64))
  assert run.superpixels.pixels_per_segment == 84 and not run.superpixels.invert_uint8
  assert settings_for(tmp_path / 'run', spec, stride=32, img_scale=(96, 48)).img_scale == (96, 48)


def test_class_maps_need_a_segmenter_and_valid_indices(tmp_path):
  spec = ModelSpec(kind='cast_seg_deit', embed_dim=24, num_clusters=(8, 4, 2, 1), max_segments=16)
  with pytest.raises(ValueError, match='no segmentation decoder'):
    ClassMapSegmenter(spec, {}, settings_for(tmp_path, spec.replace(image_size=64)))
  image = np.zeros((4, 5, 3), np.uint8)
  paths = write_class_map(tmp_path, 'many', image, np.full((4, 5), 300))  # > 256 classes: a 16-bit PNG
  assert np.asarray(Image.open(paths['classes'])).max() == 300
  with pytest.raises(ValueError, match=r'class indices must be in \[0, 65535\]'):
    write_class_map(tmp_path, 'bad', image, np.full((4, 5), -1))
