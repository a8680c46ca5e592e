"""Superpixels: parity of the SEEDS presets with the original's golden maps, the output contract, and the guards.

The golden maps (``inputs.npz['superpixels']``) were made by the original code with OpenCV-contrib SEEDS; the
SEEDS reference used for the segmentation quirk below is written here from the original's three lines
(``(x * 255).astype(np.uint8)``, ``cv2.COLOR_RGB2LAB``, SEEDS), not taken from the code under test.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.segmentation import slic

from cast_jax.superpixels import (PRESETS, SuperpixelConfig, compute_superpixels, compute_superpixels_batch,
                                  float_to_uint8, invert_uint8, preset, relabel_dense, seeds_grid,
                                  superpixel_throughput, validate_superpixels)
from conftest import golden_dir, golden_folders, load_meta, require_golden

FOLDERS = golden_folders() or ['<golden fixtures missing>']
PRESET_OF_KIND = {'moco': 'moco', 'deit': 'deit', 'seg_deit': 'deit', 'seg': 'segmentation'}


def crop_224(photo: np.ndarray) -> np.ndarray:
  """Short side to 224 (PIL bicubic), then the central 224x224."""
  image = Image.fromarray(photo)
  scale = 224 / min(image.size)
  image = image.resize((max(224, round(image.width * scale)), max(224, round(image.height * scale))),
                       Image.BICUBIC)
  left, top = (image.width - 224) // 2, (image.height - 224) // 2
  return np.asarray(image.crop((left, top, left + 224, top + 224)))


SAMPLES = {
    'astronaut': lambda: crop_224(data.astronaut()),
    'chelsea': lambda: crop_224(data.chelsea()),
    'coffee': lambda: crop_224(data.coffee()),
    'constant': lambda: np.full((224, 224, 3), 128, np.uint8),
}


def golden_inputs(folder: str):
  """(meta, images (B, H, W, 3) uint8, superpixels (B, H, W) int32) of one golden folder."""
  require_golden()
  meta = load_meta(folder)
  with np.load(golden_dir() / folder / 'inputs.npz') as arrays:
    return meta, arrays['image_uint8'], arrays['superpixels']


def golden_config(meta: dict, **overrides) -> SuperpixelConfig:
  """The preset for the folder's recipe, checked against the SEEDS settings its meta.json records."""
  config = preset(PRESET_OF_KIND[meta['kind']], **overrides)
  size = meta['image_size']
  assert (config.histogram_bins, config.iterations) == (meta['seeds']['bins'], meta['seeds']['iterations'])
  assert config.segments_for(size, size) == meta['num_superpixels']
  return config


def matching_pixels(config: SuperpixelConfig, images, expected) -> list[int]:
  return [int(np.sum(compute_superpixels(image, config) == want)) for image, want in zip(images, expected)]


# --- parity with the original ---------------------------------------------------------------------------------


@pytest.mark.parametrize('folder', FOLDERS)
def test_seeds_preset_reproduces_golden_superpixels(folder):
  meta, images, expected = golden_inputs(folder)
  # The segmentation fixture was made without the uint8 inversion quirk (see the next test).
  config = golden_config(meta, invert_uint8=False)
  matches = matching_pixels(config, images, expected)
  total = expected[0].size
  assert matches == [total] * len(images), f'{folder}: {matches} of {total} pixels match per image'


@pytest.mark.parametrize('folder', [f for f in golden_folders() if load_meta(f)['kind'] == 'seg'] or FOLDERS[:1])
def test_segmentation_fixture_was_made_without_the_inversion_quirk(folder):
  """With the quirk SEEDS sees an almost colour-inverted image, and only about 60% of the pixels agree."""
  meta, images, expected = golden_inputs(folder)
  assert meta['kind'] == 'seg', f'no segmentation golden folder among {golden_folders()}'
  matches = matching_pixels(golden_config(meta), images, expected)
  assert all(m < 0.8 * expected[0].size for m in matches), matches


def test_inversion_quirk_matches_the_segmenter_code():
  photo = SAMPLES['chelsea']()[:128, :128]
  assert np.array_equal(invert_uint8(np.arange(256, dtype=np.uint8)), (-np.arange(256)) % 256)
  wrapped = (photo * 255).astype(np.uint8)  # the original's line, on an image that is already uint8
  assert np.array_equal(invert_uint8(photo), wrapped)
  seeds = cv2.ximgproc.createSuperpixelSEEDS(128, 128, 3, num_superpixels=64, num_levels=1, prior=2,
                                             histogram_bins=5, double_step=False)
  seeds.iterate(cv2.cvtColor(wrapped, cv2.COLOR_RGB2LAB), num_iterations=15)
  assert np.array_equal(compute_superpixels(photo, 'segmentation'), seeds.getLabels())


# --- SEEDS presets and grid ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(SAMPLES))
def test_moco_preset_gives_exactly_196_ids_at_224(name):
  labels = compute_superpixels(SAMPLES[name](), 'moco')
  assert labels.dtype == np.int32 and labels.shape == (224, 224)
  assert np.array_equal(np.unique(labels), np.arange(196))


def test_presets_carry_each_recipes_settings():
  fields = lambda name: dataclasses.astuple(PRESETS[name])
  assert fields('moco') == fields('linear_probe')
  moco, deit, seg = PRESETS['moco'], PRESETS['deit'], PRESETS['segmentation']
  assert (moco.num_segments, moco.histogram_bins, moco.iterations) == (196, 15, 20)
  assert (deit.num_segments, deit.histogram_bins, deit.iterations) == (196, 5, 15)
  assert (seg.pixels_per_segment, seg.histogram_bins, seg.iterations, seg.invert_uint8) == (256, 5, 15, True)
  for config in (moco, deit, seg):
    assert (config.method, config.lab, config.prior, config.num_levels, config.double_step) == \
        ('seeds', True, 2, 1, False)
  assert not moco.invert_uint8 and not deit.invert_uint8
  assert [seg.segments_for(*hw) for hw in [(512, 512), (480, 480), (128, 128), (512, 683)]] == [1024, 900, 64, 1366]


@pytest.mark.parametrize('height, width, requested, count', [
    (224, 224, 196, 196), (512, 512, 1024, 1024), (480, 480, 900, 900), (128, 128, 64, 64),
    (512, 683, 1366, 1184),  # the spec's non-square example: fewer ids than requested
    (256, 256, 196, 144), (448, 448, 196, 196)])
def test_seeds_grid_predicts_opencvs_count(height, width, requested, count):
  assert seeds_grid(height, width, requested).count == count
  seeds = cv2.ximgproc.createSuperpixelSEEDS(width, height, 3, requested, 1, 2, 5, False)
  assert seeds.getNumberOfSuperpixels() == count


def test_seeds_refuses_sizes_that_crash_opencv():
  # OpenCV 5.0 segfaults or never returns on these; the guard must raise before calling it.
  for height, width, requested in [(16, 16, 196), (24, 11, 5), (8, 3, 10), (12, 3, 196)]:
    assert seeds_grid(height, width, requested) is None
  with pytest.raises(ValueError, match='OpenCV would crash'):
    compute_superpixels(np.zeros((16, 16, 3), np.uint8), 'moco')


def test_seeds_count_above_max_segments_is_refused():
  with pytest.raises(ValueError, match='raises requests below 10 to 10'):
    compute_superpixels(SAMPLES['constant'](), preset('moco', num_segments=1))
  with pytest.raises(ValueError, match='more than max_segments=100'):
    compute_superpixels(SAMPLES['constant'](), 'moco', max_segments=100)


def test_batch_stacks_per_image_maps():
  images = np.stack([SAMPLES['astronaut'](), SAMPLES['coffee']()])
  batch = compute_superpixels_batch(images, 'deit')
  assert batch.shape == (2, 224, 224) and batch.dtype == np.int32
  assert np.array_equal(batch[1], compute_superpixels(images[1], 'deit'))


# --- SLIC --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(SAMPLES))
def test_slic_meets_the_contract(name):
  labels = compute_superpixels(SAMPLES[name](), 'slic')
  validate_superpixels(labels, 196)
  assert labels.max() + 1 >= 98  # at least half the request, as the original's retry loop ensures


def test_slic_noise_image_retries_with_higher_compactness():
  noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
  config = preset('slic', num_segments=36)
  assert slic(noise, n_segments=36, compactness=10, start_label=0).max() + 1 < 18  # plain SLIC merges it all
  labels = compute_superpixels(noise, config)
  validate_superpixels(labels, 36)
  assert labels.max() + 1 >= 18


def test_slic_count_above_request_is_brought_down():
  image = data.astronaut()[:128:2, :128:2]
  assert slic(image, n_segments=136, compactness=10, start_label=0).max() + 1 > 136  # SLIC overshoots here
  labels = compute_superpixels(image, preset('slic', num_segments=136))
  validate_superpixels(labels, 136)


# --- input conversion and validation -------------------------------------------------------------------------------


def test_gray_and_rgba_inputs_are_converted_like_pil():
  rgb = SAMPLES['chelsea']()
  gray = np.asarray(Image.fromarray(rgb).convert('L'))
  as_rgb = np.asarray(Image.fromarray(gray).convert('RGB'))
  expected = compute_superpixels(as_rgb, 'deit')
  assert np.array_equal(compute_superpixels(gray, 'deit'), expected)
  assert np.array_equal(compute_superpixels(gray[..., None], 'deit'), expected)
  rgba = np.concatenate([rgb, np.full((224, 224, 1), 7, np.uint8)], axis=-1)
  assert np.array_equal(compute_superpixels(rgba, 'deit'), compute_superpixels(rgb, 'deit'))


@pytest.mark.parametrize('image, message', [
    (np.zeros((224, 224, 3), np.float32), 'float_to_uint8'),
    (np.zeros((224, 224, 3), np.int32), r'np.clip\(image, 0, 255\)'),
    (np.zeros((3, 224, 224), np.uint8), 'channels-first'),
    (np.zeros((2, 224, 224, 3), np.uint8), 'compute_superpixels_batch'),
    (np.zeros((224, 224, 2), np.uint8), r'\(H, W, 3\)'),
])
@pytest.mark.parametrize('method', ['moco', 'slic'])
def test_bad_images_are_refused_with_a_fix(image, message, method):
  with pytest.raises(ValueError, match=message):
    compute_superpixels(image, method)


def test_float_to_uint8_follows_the_original_cast():
  levels = np.arange(256, dtype=np.float32) / np.float32(255)
  assert np.array_equal(float_to_uint8(levels), np.arange(256))
  # The DeiT recipe never clips: the spec's examples of wrapped random-erased pixels.
  assert float_to_uint8(np.array([-0.3, 1.2], np.float32)).tolist() == [180, 50]
  assert float_to_uint8(np.array([-0.3, 1.2], np.float32), wrap=False).tolist() == [0, 255]


@pytest.mark.parametrize('labels, max_segments, message', [
    (np.zeros((4, 4), np.float32), 10, 'must be int32'),
    (np.zeros((4, 4), np.int64), 10, 'must be int32'),
    (np.zeros((1, 4, 4), np.int32), 10, r'one \(H, W\) array'),
    (np.array([[0, -1], [1, 2]], np.int32), 10, 'must be >= 0'),
    (np.array([[0, 2], [2, 5]], np.int32), 10, r'3 of 0..5 are missing \(first: \[1, 3, 4\]\).*relabel_dense'),
    (np.arange(12, dtype=np.int32).reshape(3, 4), 10, '12 superpixels exceed max_segments=10'),
])
def test_validation_errors_say_what_to_do(labels, max_segments, message):
  with pytest.raises(ValueError, match=message):
    validate_superpixels(labels, max_segments)


def test_relabel_dense_keeps_sorted_order_and_dense_maps():
  labels = np.array([[7, 7, 3], [9, 3, 3]])
  assert relabel_dense(labels).tolist() == [[1, 1, 0], [2, 0, 0]]
  dense = np.arange(6, dtype=np.int32).reshape(2, 3)
  assert relabel_dense(dense) is dense


def test_config_errors():
  with pytest.raises(ValueError, match='exactly one of num_segments'):
    SuperpixelConfig(num_segments=196, pixels_per_segment=256)
  with pytest.raises(ValueError, match="not one of"):
    SuperpixelConfig(method='quickshift')
  with pytest.raises(ValueError, match='unknown superpixel preset'):
    preset('mocov3')


def test_throughput_returns_images_per_second():
  for method in ('seeds', 'slic'):
    assert superpixel_throughput(method, image_size=64, num_images=2) > 0
