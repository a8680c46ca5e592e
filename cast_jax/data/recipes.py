"""The original's augmentation recipes, each a picklable callable ``(example, rng) -> arrays``.

Every recipe computes superpixels on its *final* augmented view (as the original does), then normalizes.
``superpixel_fn`` maps an (S, S, 3) uint8 view to an (S, S) int32 map (see ``cast_jax.superpixels``).

Here: the MoCo-v3 two views (docs/original_behaviour.md#moco-views-and-augmentation-order), the linear probe's
train view and the centre-crop evaluation shared by the linear probe and DeiT (docs/original_behaviour.md#linear-probe,
docs/original_behaviour.md#deit-evaluation). The supervised DeiT recipe (RandAugment, erasing, Mixup/CutMix, repeated
augmentation) lives in ``cast_jax.data.supervised``, the Segmenter's mmseg recipe in ``cast_jax.data.segmentation``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image

from cast_jax.data import augment

# None: on-device superpixels (``cast_jax.train.device_superpixels``), the recipe emits pixels, no maps.
SuperpixelFn = Optional[Callable[[np.ndarray], np.ndarray]]


@dataclasses.dataclass(frozen=True)
class ViewAugmentation:
  """One BYOL-style view: crop, jitter (p), grayscale (p), blur (p), solarize (p), flip, in that order."""

  size: int = 224
  crop_scale: tuple[float, float] = (0.08, 1.0)
  jitter_prob: float = 0.8
  # ColorJitter's brightness, contrast, saturation and hue strengths (the original's 0.4, 0.4, 0.2, 0.1).
  jitter_strength: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
  grayscale_prob: float = 0.2
  blur_prob: float = 1.0
  solarize_prob: float = 0.0
  # PIL blur radius range in pixels of the output view. The original's (0.1, 2.0) is for 224 px views; a
  # smaller view keeps the same relative strength with the range scaled by size / 224 (tried on the demo:
  # README "How reliable the demo is").
  blur_sigma: tuple[float, float] = (0.1, 2.0)

  def __call__(self, img: Image.Image, rng: np.random.Generator, geometry: tuple | None = None) -> np.ndarray:
    """geometry: an optional ((top, left, h, w), flip) drawn by ``draw_geometry`` and used instead of this
    view's own crop box and flip (the rng draws for them are then skipped)."""
    if geometry is None:
      img = augment.random_resized_crop(img, self.size, rng, self.crop_scale)
    else:
      top, left, h, w = geometry[0]
      img = img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < self.jitter_prob:
      img = augment.color_jitter(img, rng, *self.jitter_strength)
    if rng.random() < self.grayscale_prob:
      img = augment.grayscale(img)
    if rng.random() < self.blur_prob:
      img = augment.gaussian_blur(img, rng, self.blur_sigma)
    if rng.random() < self.solarize_prob:
      img = augment.solarize(img)
    flip = rng.random() < 0.5 if geometry is None else geometry[1]
    if flip:
      img = augment.hflip(img)
    return np.asarray(img, np.uint8)

  def draw_geometry(self, width: int, height: int, rng: np.random.Generator) -> tuple:
    """One crop box and flip, for views that share their geometry (``MoCoTwoViews.shared_geometry``)."""
    return augment.random_resized_crop_box(width, height, rng, self.crop_scale), bool(rng.random() < 0.5)


# The two views of MoCo-v3 (and BYOL): view 1 always blurred; view 2 rarely blurred, sometimes solarized.
MOCO_VIEW1 = ViewAugmentation(blur_prob=1.0, solarize_prob=0.0)
MOCO_VIEW2 = ViewAugmentation(blur_prob=0.1, solarize_prob=0.2)


@dataclasses.dataclass(frozen=True)
class MoCoTwoViews:
  """example {'image': uint8 (H, W, 3), ...} -> 'view1', 'view2' float32 (S, S, 3) normalized,
  'superpixels1', 'superpixels2' int32 (S, S), 'label' int32.

  Both views are crops of 'image', as in the original, unless the example carries an 'image2' (another
  rendering of the same scene, e.g. PartWorld's ``second_rendering``): then view 2 is cropped from that.

  ``shared_geometry`` (not in the original) crops both views with one box and one flip, so they differ only in
  appearance: with two renderings of one scene, what the views share is then exactly the scene's geometry.

  ``superpixel_fn=None`` (on-device superpixels, ``train.device_superpixels``): 'view1', 'view2' are the uint8
  (S, S, 3) pixels and no maps are emitted.
  """

  superpixel_fn: SuperpixelFn
  view1: ViewAugmentation = MOCO_VIEW1
  view2: ViewAugmentation = MOCO_VIEW2
  shared_geometry: bool = False

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    images = {'1': example['image'], '2': example.get('image2', example['image'])}
    out = {'label': np.int32(example.get('label', -1))}
    geometry = None
    if self.shared_geometry:
      height, width = images['1'].shape[:2]
      geometry = self.view1.draw_geometry(width, height, rng)
    for name, view in (('1', self.view1), ('2', self.view2)):
      pixels = view(Image.fromarray(images[name]), rng, geometry)
      if self.superpixel_fn is None:  # on-device superpixels: the step normalises and segments the pixels
        out['view' + name] = pixels
        continue
      out['superpixels' + name] = self.superpixel_fn(pixels)
      out['view' + name] = augment.normalize(pixels)
    return out


@dataclasses.dataclass(frozen=True)
class LinearProbeTrain:
  """``RandomResizedCrop(224)`` + flip (main_lincls): 'image' float32, 'superpixels' int32, 'label'
  (``superpixel_fn=None``: 'image' uint8 pixels and no map, for on-device superpixels)."""

  superpixel_fn: SuperpixelFn
  size: int = 224

  def __call__(self, example, rng):
    img = augment.random_resized_crop(Image.fromarray(example['image']), self.size, rng)
    if rng.random() < 0.5:
      img = augment.hflip(img)
    pixels = np.asarray(img, np.uint8)
    if self.superpixel_fn is None:  # on-device superpixels: uint8 'image', no map
      return {'image': pixels, 'label': np.int32(example.get('label', -1))}
    return {'image': augment.normalize(pixels), 'superpixels': self.superpixel_fn(pixels),
            'label': np.int32(example.get('label', -1))}


@dataclasses.dataclass(frozen=True)
class CenterCropEval:
  """Evaluation: resize the shorter side to ``resize`` then centre-crop ``size`` (256 / 224).

  ``superpixel_fn=None`` (on-device superpixels): 'image' is the uint8 crop, plus 'superpixel_pixels' (uint8)
  when the map is made from ``seeds_input`` of the normalised crop."""

  superpixel_fn: SuperpixelFn
  size: int = 224
  resize: int = 256
  resample: int = Image.BILINEAR  # the supervised recipe evaluates with bicubic
  # The DeiT code computes SEEDS on the de-normalized, truncated tensor (augment.seeds_input), the MoCo
  # code on the crop's own pixels (identical there, since its tensor is exactly k / 255).
  superpixels_from_normalized: bool = False

  def __call__(self, example, rng=None):
    del rng
    img = augment.center_crop(augment.resize_shorter(Image.fromarray(example['image']), self.resize, self.resample),
                              self.size)
    pixels = np.asarray(img, np.uint8)
    image = augment.normalize(pixels)
    seeds_pixels = augment.seeds_input(image) if self.superpixels_from_normalized else pixels
    if self.superpixel_fn is None:  # on-device superpixels: uint8 'image', and the map's pixels if they differ
      out = {'image': pixels, 'label': np.int32(example.get('label', -1))}
      if self.superpixels_from_normalized:
        out['superpixel_pixels'] = seeds_pixels
      return out
    return {'image': image, 'superpixels': self.superpixel_fn(seeds_pixels),
            'label': np.int32(example.get('label', -1))}
