"""PartWorld, the built-in procedural part-whole dataset: determinism, splits, masks, balance, colour blindness."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from cast_jax.data import partworld
from cast_jax.data.partworld import (CLASS_NAMES, CLASS_PARTS, NUM_CLASSES, NUM_PARTS, PART_CLASS, PART_NAMES,
                                     PartWholeDataset, make_example)

SAMPLE = 400  # examples in the shared 64 px sample below


@pytest.fixture(scope='module')
def sample():
  """The first SAMPLE validation examples at 64 px (generated once: about a second)."""
  ds = PartWholeDataset(SAMPLE, image_size=64, seed=0, split='validation')
  return [ds[i] for i in range(len(ds))]


def _same(a: dict, b: dict) -> bool:
  return (a['label'] == b['label'] and a['image'].tobytes() == b['image'].tobytes()
          and a['part_mask'].tobytes() == b['part_mask'].tobytes()
          and a['object_mask'].tobytes() == b['object_mask'].tobytes())


def test_tables_are_consistent():
  assert NUM_CLASSES == len(CLASS_NAMES) == len(CLASS_PARTS) == 8
  assert len(set(CLASS_NAMES)) == NUM_CLASSES and len(set(PART_NAMES)) == NUM_PARTS + 1
  assert PART_NAMES[0] == 'background' and PART_CLASS[0] == -1
  assert sorted(p for parts in CLASS_PARTS for p in parts) == list(range(1, NUM_PARTS + 1))
  for c, parts in enumerate(CLASS_PARTS):
    assert 2 <= len(parts) <= 4
    for p in parts:
      assert PART_CLASS[p] == c and PART_NAMES[p].startswith(CLASS_NAMES[c] + '/')
  # The part-id table in the module docstring matches the constants.
  for c, parts in enumerate(CLASS_PARTS):
    line = re.search(rf'class {c} {CLASS_NAMES[c]}:(.*)', partworld.__doc__).group(1)
    assert line.split() == [w for p in parts for w in (str(p), PART_NAMES[p].split('/')[1])]


def test_deterministic_and_independent_of_access_order():
  ds = PartWholeDataset(12, image_size=64, seed=7, split='train')
  forward = [ds[i] for i in range(len(ds))]
  backward = [ds[i] for i in reversed(range(len(ds)))][::-1]
  fresh = PartWholeDataset(12, image_size=64, seed=7, split='train')
  unpickled = pickle.loads(pickle.dumps(ds))
  for i in range(len(ds)):
    assert _same(forward[i], backward[i])
    assert _same(forward[i], fresh[i]) and _same(forward[i], unpickled[i])
    assert _same(forward[i], make_example(i, image_size=64, seed=7, split='train'))
  # Examples of one stream differ from each other.
  assert len({ex['image'].tobytes() for ex in forward}) == len(forward)


def test_splits_and_seeds_are_disjoint_streams():
  streams = [PartWholeDataset(10, image_size=64, seed=seed, split=split)
             for seed in (0, 1) for split in ('train', 'validation', 'test')]
  images = [ds[i]['image'].tobytes() for ds in streams for i in range(len(ds))]
  assert len(set(images)) == len(images)


@pytest.mark.parametrize('size', [64, 97, 224])
def test_shapes_and_dtypes(size):
  ex = PartWholeDataset(3, image_size=size)[2]
  assert set(ex) == {'image', 'label', 'object_mask', 'part_mask'}
  assert ex['image'].shape == (size, size, 3) and ex['image'].dtype == np.uint8
  assert ex['object_mask'].shape == (size, size) and ex['object_mask'].dtype == np.bool_
  assert ex['part_mask'].shape == (size, size) and ex['part_mask'].dtype == np.int32
  assert isinstance(ex['label'], int) and 0 <= ex['label'] < NUM_CLASSES
  assert 0 <= ex['part_mask'].min() and ex['part_mask'].max() <= NUM_PARTS


def test_masks_are_consistent(sample):
  for ex in sample:
    part_mask, label = ex['part_mask'], ex['label']
    np.testing.assert_array_equal(ex['object_mask'], part_mask > 0)  # parts exactly tile the object
    present = set(np.unique(part_mask).tolist()) - {0}
    assert present == set(CLASS_PARTS[label]), (label, present)  # every part visible, no foreign part
    assert np.all(PART_CLASS[part_mask[part_mask > 0]] == label)


def test_parts_are_a_few_pixels_even_at_64px(sample):
  for ex in sample:
    counts = np.bincount(ex['part_mask'].ravel(), minlength=NUM_PARTS + 1)
    assert counts[list(CLASS_PARTS[ex['label']])].min() >= 5


def test_object_fills_a_reasonable_fraction(sample):
  area = 64 * 64
  for ex in sample:
    ys, xs = np.nonzero(ex['object_mask'])
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) / area
    assert 0.15 <= box <= 0.8, box
    assert 0.04 <= ex['object_mask'].mean() <= 0.6


def test_masks_match_the_painted_pixels(monkeypatch):
  """With every texture replaced by its own flat colour, each part's colour lies exactly on its mask."""
  flat = []

  def numbered_texture(rng, size, region, c0, contrast):
    colour = np.array([len(flat) * 20 + 5, 255 - len(flat) * 20, 128])
    flat.append(colour)
    packed = partworld._pack(colour)
    return lambda py, px: packed

  monkeypatch.setattr(partworld, '_texture', numbered_texture)
  for index in range(24):
    flat.clear()
    ex = make_example(index, image_size=80)
    parts = CLASS_PARTS[ex['label']]
    part_colours = flat[-len(parts):]  # textures are made background, clutter, then the parts in order
    for p, colour in zip(parts, part_colours):
      inside = ex['part_mask'] == p
      assert np.all(ex['image'][inside] == colour), (index, PART_NAMES[p])
      assert not np.any(np.all(ex['image'][~inside] == colour, axis=-1)), (index, PART_NAMES[p])


def test_classes_are_balanced(sample):
  counts = np.bincount([ex['label'] for ex in sample], minlength=NUM_CLASSES) / len(sample)
  assert counts.min() >= 0.05 and counts.max() <= 0.20, counts


def _mean_object_colour(examples):
  return np.stack([ex['image'][ex['object_mask']].mean(axis=0) for ex in examples])


def _nearest_class_mean_accuracy(train_x, train_y, test_x, test_y) -> float:
  means = np.stack([train_x[train_y == c].mean(axis=0) for c in range(NUM_CLASSES)])
  predicted = ((test_x[:, None] - means[None]) ** 2).sum(-1).argmin(axis=1)
  return float((predicted == test_y).mean())


def test_colour_does_not_give_the_class_away(sample):
  train = PartWholeDataset(SAMPLE, image_size=64, seed=0, split='train')
  train = [train[i] for i in range(len(train))]
  x_train, y_train = _mean_object_colour(train), np.array([ex['label'] for ex in train])
  x_test, y_test = _mean_object_colour(sample), np.array([ex['label'] for ex in sample])
  # Chance is 1 / 8 = 0.125; 400 test examples put the standard error near 0.017.
  accuracy = _nearest_class_mean_accuracy(x_train, y_train, x_test, y_test)
  print(f'nearest-mean classifier on object colour: {accuracy:.1%}')  # the README quotes this (pytest -s)
  assert accuracy < 0.22
  # Each class's mean colour sits near mid-grey, while single objects range widely.
  class_means = np.stack([x_test[y_test == c].mean(axis=0) for c in range(NUM_CLASSES)])
  assert np.abs(class_means - 127.5).max() < 25 and x_test.std(axis=0).min() > 35


def _shape_feature(ex) -> np.ndarray:
  """The object mask cropped to its box and sampled on a 16 x 16 grid."""
  m = ex['object_mask']
  ys, xs = np.nonzero(m)
  crop = m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
  rows = ((np.arange(16) + 0.5) * crop.shape[0] / 16).astype(int)
  cols = ((np.arange(16) + 0.5) * crop.shape[1] / 16).astype(int)
  return crop[rows][:, cols].ravel().astype(np.float32)


def test_shape_does_give_the_class_away(sample):
  """The counterpart: silhouettes alone separate the classes (so the task is learnable, and by shape)."""
  half = len(sample) // 2
  x = np.stack([_shape_feature(ex) for ex in sample])
  y = np.array([ex['label'] for ex in sample])
  assert _nearest_class_mean_accuracy(x[:half], y[:half], x[half:], y[half:]) > 0.8


@pytest.mark.parametrize('size', [63, 225, 0, 128.0, '128', True])
def test_bad_image_size_is_a_value_error(size):
  with pytest.raises(ValueError, match='image_size'):
    PartWholeDataset(10, image_size=size)
  with pytest.raises(ValueError, match='image_size'):
    make_example(0, image_size=size)


def test_bad_split_seed_and_index():
  with pytest.raises(ValueError, match='split'):
    PartWholeDataset(10, split='val')
  with pytest.raises(ValueError, match='seed'):
    PartWholeDataset(10, seed=-1)
  ds = PartWholeDataset(4, image_size=64)
  with pytest.raises(IndexError):
    ds[4]
  assert _same(ds[-1], ds[3]) and _same(ds[np.int64(2)], ds[2])
  assert len(ds) == 4 and len(PartWholeDataset(0)) == 0


def test_figure_and_command_line(tmp_path):
  grid = partworld.figure(image_size=64, rows=1)
  assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[1] == NUM_CLASSES * (64 + 4)
  out = tmp_path / 'sub' / 'partworld.png'
  partworld.main(['--out', str(out), '--image-size', '64', '--rows', '1'])
  assert out.stat().st_size > 0


def test_a_second_rendering_keeps_the_object_and_changes_its_appearance():
  """appearance=1 re-draws the same object (class, parts, pose) with new colours, background and clutter, so two
  views of one example share only the object's shape; the default rendering is unchanged by the option."""
  plain = PartWholeDataset(8, image_size=64, split='train')
  paired = PartWholeDataset(8, image_size=64, split='train', second_rendering=True)
  object_change, background_change = [], []
  for i in range(8):
    a, b = plain[i], paired[i]
    assert _same(a, b), 'the first rendering must not depend on second_rendering'
    again = make_example(i, image_size=64, split='train', appearance=1)
    np.testing.assert_array_equal(b['image2'], again['image'])
    assert again['label'] == a['label']
    np.testing.assert_array_equal(again['part_mask'], a['part_mask'])
    inside = a['object_mask']
    change = np.abs(a['image'].astype(int) - b['image2'])
    object_change.append(change[inside].mean())
    background_change.append(change[~inside].mean())
  # Colours are redrawn uniformly, so the mean change is large (one object may by chance keep similar colours).
  assert np.mean(object_change) > 50 and np.mean(background_change) > 50
  assert min(background_change) > 30
  with pytest.raises(ValueError, match='appearance must be non-negative'):
    make_example(0, image_size=64, appearance=-1)


def test_class_palette_makes_a_parts_hue_typical_and_the_random_palette_does_not():
  """palette='class': a part's hue sits near its own typical hue (circular spread well under a uniform hue's);
  the default palette's hues are spread over the whole circle. Same geometry either way."""
  import colorsys

  def hue_spread(palette):
    hues = {}
    for index in range(48):
      example = partworld.make_example(index, image_size=64, split='train', palette=palette)
      for part in np.unique(example['part_mask'])[1:]:
        # The median colour of the part (textures vary around its base colour).
        rgb = np.median(example['image'][example['part_mask'] == part], axis=0) / 255.0
        hues.setdefault(int(part), []).append(colorsys.rgb_to_hsv(*rgb)[0] * 2 * np.pi)
    # Circular spread: 1 - |mean of unit vectors| (0: one hue, ~1: uniform), averaged over parts seen 3+ times.
    return np.mean([1 - abs(np.mean(np.exp(1j * np.array(h)))) for h in hues.values() if len(h) >= 3])

  assert hue_spread('class') < 0.15 < 0.5 < hue_spread('random')
  a = partworld.make_example(3, image_size=64, palette='class')
  b = partworld.make_example(3, image_size=64)
  assert a['label'] == b['label'] and np.array_equal(a['part_mask'], b['part_mask'])
  with pytest.raises(ValueError, match='palette must be one of'):
    partworld.make_example(0, image_size=64, palette='natural')
  with pytest.raises(ValueError, match='palette must be one of'):
    partworld.PartWholeDataset(4, image_size=64, palette='natural')


def test_keep_object_colours_redraws_the_surroundings_and_keeps_each_parts_colour():
  """keep_object_colours: the second rendering's parts keep rendering 0's base colours (their mean colours
  stay closer than without the option; textures are redrawn around the base colour, so not equal) while the background changes as much as without the option;
  the dataset's 'image2' equals make_example's, and the first rendering does not depend on the option."""
  plain = PartWholeDataset(8, image_size=64, split='train', second_rendering=True, palette='class')
  kept = PartWholeDataset(8, image_size=64, split='train', second_rendering=True, palette='class',
                          keep_object_colours=True)
  kept_part_change, new_part_change, background_change = [], [], []
  for i in range(8):
    a, b = plain[i], kept[i]
    assert _same(a, b)
    again = make_example(i, image_size=64, split='train', appearance=1, palette='class', keep_object_colours=True)
    np.testing.assert_array_equal(b['image2'], again['image'])
    np.testing.assert_array_equal(again['part_mask'], a['part_mask'])
    for part in np.unique(a['part_mask'])[1:]:
      inside = a['part_mask'] == part
      mean = lambda image: image[inside].astype(float).mean(axis=0)
      kept_part_change.append(np.abs(mean(a['image']) - mean(b['image2'])).mean())
      new_part_change.append(np.abs(mean(a['image']) - mean(a['image2'])).mean())
    outside = ~a['object_mask']
    background_change.append(np.abs(a['image'][outside].astype(int) - b['image2'][outside]).mean())
  # Measured over 32 examples: median 15 kept, 47 redrawn.
  assert np.median(kept_part_change) < 22 < 35 < np.median(new_part_change)
  assert np.mean(background_change) > 50
  assert 'keep_object_colours=True' in repr(kept)
