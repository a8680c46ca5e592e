"""The MoCo-v3 and linear-probe recipes with real SEEDS superpixels."""

from __future__ import annotations

import functools
import dataclasses

import numpy as np
from PIL import Image
from skimage import data as skdata

from cast_jax import superpixels
from cast_jax.data import augment, recipes
from cast_jax.data.partworld import PartWholeDataset
from cast_jax.data.pipeline import PipelineConfig, make_dataset

MOCO_SEEDS = functools.partial(superpixels.compute_superpixels, config=superpixels.preset('moco'))


def test_moco_recipe_gives_two_different_224px_views_with_ids_0_to_195():
  recipe = recipes.MoCoTwoViews(MOCO_SEEDS)
  example = {'image': skdata.astronaut(), 'label': 3}  # 512 x 512 RGB
  out = recipe(example, np.random.default_rng(0))
  for view in ('1', '2'):
    image, ids = out['view' + view], out['superpixels' + view]
    assert image.shape == (224, 224, 3) and image.dtype == np.float32
    assert ids.shape == (224, 224) and ids.dtype == np.int32
    np.testing.assert_array_equal(np.unique(ids), np.arange(196))
    # Normalized with ImageNet statistics: values span roughly [-2.1, 2.6].
    assert -2.2 < image.min() < 0 < image.max() < 2.7
  assert np.abs(out['view1'] - out['view2']).mean() > 0.1, 'the two views must be augmented differently'
  assert not np.array_equal(out['superpixels1'], out['superpixels2'])
  # The superpixels belong to each view's own pixels: recomputing them from the de-normalized view agrees.
  pixels = np.round((out['view1'] * augment.IMAGENET_STD + augment.IMAGENET_MEAN) * 255).astype(np.uint8)
  np.testing.assert_array_equal(MOCO_SEEDS(pixels), out['superpixels1'])


def test_moco_views_are_deterministic_per_seed_through_the_pipeline():
  source = PartWholeDataset(16, image_size=96)
  config = PipelineConfig(batch_size=4, seed=7)
  first = next(iter(make_dataset(source, recipes.MoCoTwoViews(MOCO_SEEDS), config)))
  again = next(iter(make_dataset(source, recipes.MoCoTwoViews(MOCO_SEEDS), config)))
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert first['view1'].shape == (4, 224, 224, 3) and first['superpixels2'].shape == (4, 224, 224)
  assert first['superpixels1'].max() == 195


def test_center_crop_eval_resizes_then_crops():
  recipe = recipes.CenterCropEval(MOCO_SEEDS)
  out = recipe({'image': skdata.chelsea(), 'label': 1})  # 300 x 451
  assert out['image'].shape == (224, 224, 3) and out['superpixels'].max() == 195
  expected = augment.center_crop(augment.resize_shorter(Image.fromarray(skdata.chelsea()), 256), 224)
  np.testing.assert_allclose(out['image'], augment.normalize(np.asarray(expected)), atol=1e-6)


def test_images_smaller_than_the_crop_are_upsampled_not_dropped():
  tiny = {'image': np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8), 'label': 0}
  rng = np.random.default_rng(1)
  views = recipes.MoCoTwoViews(MOCO_SEEDS)(tiny, rng)
  probe = recipes.LinearProbeTrain(MOCO_SEEDS)(tiny, rng)
  evaluation = recipes.CenterCropEval(MOCO_SEEDS)(tiny)
  for image, ids in ((views['view1'], views['superpixels1']), (probe['image'], probe['superpixels']),
                     (evaluation['image'], evaluation['superpixels'])):
    assert image.shape == (224, 224, 3) and ids.max() == 195


def test_moco_takes_the_second_view_from_a_second_rendering_when_the_example_has_one():
  source = PartWholeDataset(4, image_size=96, second_rendering=True)
  example = source[1]
  recipe = recipes.MoCoTwoViews(MOCO_SEEDS, view1=recipes.ViewAugmentation(size=96, crop_scale=(1.0, 1.0),
                                                                          jitter_prob=0, grayscale_prob=0,
                                                                          blur_prob=0),
                                view2=recipes.ViewAugmentation(size=96, crop_scale=(1.0, 1.0), jitter_prob=0,
                                                               grayscale_prob=0, blur_prob=0))
  out = recipe(example, np.random.default_rng(0))
  for name, key in (('1', 'image'), ('2', 'image2')):
    pixels = np.round((out['view' + name] * augment.IMAGENET_STD + augment.IMAGENET_MEAN) * 255).astype(np.uint8)
    # Full-image crops with no colour change: each view is its rendering, possibly flipped.
    assert np.array_equal(pixels, example[key]) or np.array_equal(pixels, example[key][:, ::-1])


def test_shared_geometry_crops_and_flips_both_renderings_alike():
  """With shared_geometry the two views of a second rendering differ only in appearance: the object masks of
  both renderings, pushed through the recipe's geometry, are identical (and differ from a crop of another box)."""
  source = PartWholeDataset(2, image_size=96, second_rendering=True)
  example = dict(source[0])
  mask = (example['object_mask'] > 0).astype(np.uint8) * 255
  # Give each rendering its object mask as the image, so the recipe's output shows where its geometry went.
  example['image'] = example['image2'] = np.repeat(mask[..., None], 3, axis=2)
  plain = dict(size=64, crop_scale=(0.25, 1.0), jitter_prob=0, grayscale_prob=0, blur_prob=0)
  shared = recipes.MoCoTwoViews(MOCO_SEEDS, view1=recipes.ViewAugmentation(**plain),
                                view2=recipes.ViewAugmentation(**plain), shared_geometry=True)
  independent = dataclasses.replace(shared, shared_geometry=False)
  same = [np.array_equal((o := shared(example, np.random.default_rng(seed)))['view1'], o['view2'])
          for seed in range(8)]
  different = [np.array_equal((o := independent(example, np.random.default_rng(seed)))['view1'], o['view2'])
               for seed in range(8)]
  assert all(same) and not any(different)


def test_blur_sigma_sets_the_radius_range_and_reaches_the_moco_iterator(monkeypatch):
  """``blur_sigma`` is the PIL radius range in pixels of the view: a tiny range leaves a 64 px view almost as
  the crop made it, the original's (0.1, 2.0) smooths it much more (what a 224 px recipe does to a 64 px
  demo), and the config field reaches the views of ``moco_train_iterator``."""
  img = Image.fromarray(skdata.astronaut()).resize((64, 64), Image.BILINEAR)
  rng = lambda: np.random.default_rng(0)
  plain = dict(size=64, crop_scale=(1.0, 1.0), jitter_prob=0, grayscale_prob=0, blur_prob=1.0)
  def sharpness(sigma):  # mean absolute horizontal gradient of the (unflipped or flipped) view
    view = recipes.ViewAugmentation(**plain, blur_sigma=sigma)(img, rng()).astype(np.float32)
    return np.abs(np.diff(view, axis=1)).mean()
  unblurred = np.abs(np.diff(np.asarray(img, np.float32), axis=1)).mean()
  assert abs(sharpness((0.01, 0.01)) - unblurred) < 1e-6 * unblurred + 1e-3
  assert sharpness((0.0286, 0.571)) > 0.75 * unblurred  # at most 0.57 px: light
  assert sharpness((2.0, 2.0)) < 0.5 * unblurred  # 2 px on a 64 px image: heavy

  import ml_collections
  from cast_jax.train import inputs
  captured = {}
  monkeypatch.setattr(inputs, 'train_iterator', lambda data, recipe, *a, **k: captured.setdefault('recipe', recipe))
  data = ml_collections.ConfigDict(dict(image_size=64, crop_scale=(0.25, 1.0), blur_sigma=(0.03, 0.5),
                                        superpixels='moco', superpixel_overrides={}))
  inputs.moco_train_iterator(data, 8, 0, 0, 1)
  assert captured['recipe'].view1.blur_sigma == (0.03, 0.5) == captured['recipe'].view2.blur_sigma


def test_jitter_strength_zero_skips_that_adjustment_and_reaches_the_moco_iterator(monkeypatch):
  """A strength of 0 leaves its property alone: with hue 0 a pure hue shift never happens, so a saturated
  colour keeps its hue under every draw, while the original's 0.1 moves it; all four 0 return the image
  unchanged. ``data.jitter_strength`` reaches both views of ``moco_train_iterator``."""
  red = Image.new('RGB', (8, 8), (220, 30, 30))
  hue_of = lambda img: np.asarray(img.convert('HSV'), np.int32)[..., 0].mean()
  moved = [abs(hue_of(augment.color_jitter(red, np.random.default_rng(s))) - hue_of(red)) for s in range(20)]
  kept = [abs(hue_of(augment.color_jitter(red, np.random.default_rng(s), 0.4, 0.4, 0.2, 0.0)) - hue_of(red))
          for s in range(20)]
  assert max(moved) > 5  # the original's hue jitter shifts by up to 0.1 x 255
  assert max(kept) <= 1  # brightness / contrast / saturation only round the hue
  img = Image.fromarray(skdata.astronaut()).resize((32, 32))
  same = augment.color_jitter(img, np.random.default_rng(0), 0.0, 0.0, 0.0, 0.0)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(img))

  import ml_collections
  from cast_jax.train import inputs
  captured = {}
  monkeypatch.setattr(inputs, 'train_iterator', lambda data, recipe, *a, **k: captured.setdefault('recipe', recipe))
  data = ml_collections.ConfigDict(dict(image_size=64, crop_scale=(0.25, 1.0), jitter_strength=(0.4, 0.4, 0.2, 0.0),
                                        superpixels='moco', superpixel_overrides={}))
  inputs.moco_train_iterator(data, 8, 0, 0, 1)
  assert captured['recipe'].view1.jitter_strength == (0.4, 0.4, 0.2, 0.0) == captured['recipe'].view2.jitter_strength
