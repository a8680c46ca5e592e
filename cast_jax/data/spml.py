"""SPML's fine-tuning augmentation (``ListDataset._training_preprocess`` + ``SPixListDataset``) as a recipe.

In the original's order, on the image as float32 in [0, 1] (``_read_image`` divides by 255):

1. ``random_mirror``: flip left-right when ``rng.uniform(0, 1) >= 0.5``;
2. ``random_resize``: ratio ~ U(0.5, 1.5), new sides ``int(ratio * H)``, ``int(ratio * W)``; cv2 INTER_LINEAR
   for the (float) image, INTER_NEAREST for the label map;
3. ``random_crop_with_pad``: pad to at least crop x crop with the image at the *top-left* (padding at the bottom
   and right): the image with the ImageNet mean colour (0.485, 0.456, 0.406) in [0, 1] units, the labels with
   255; then a crop at ``floor(U(0, H - crop))``, ``floor(U(0, W - crop))`` (rows drawn first);
4. superpixels of the crop at half size (``spml_inputs.train_crop_superpixels``: uint8 truncation, cv2 linear
   resize, Lab, SEEDS with 5 bins and 15 iterations);
5. normalise: ``(x - mean) / std`` in float32, so padded pixels become exactly 0.

The labels are not remapped (the loss ignores ids >= n_cls like 255); with ``num_classes`` set, ids outside
[0, num_classes) other than 255 raise instead, naming the example. The recipe is a frozen dataclass of plain
fields, so it pickles into grain's worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import cv2
import numpy as np

from cast_jax.evaluate.spml_inputs import IMAGENET_MEAN, IMAGENET_STD, train_crop_superpixels

IGNORE_LABEL = 255


def random_mirror(image: np.ndarray, label: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
  """``transforms.random_mirror``: one U(0, 1) draw, flipped when it is >= 0.5."""
  if rng.uniform(0.0, 1.0) >= 0.5:
    return image[:, ::-1], label[:, ::-1]
  return image, label


def random_resize(image: np.ndarray, label: np.ndarray, rng, scale_range=(0.5, 1.5)):
  """``transforms.random_resize``: ratio ~ U(scale_range), sides ``int(ratio * side)`` (truncation)."""
  ratio = rng.uniform(scale_range[0], scale_range[1])
  height, width = image.shape[:2]
  new_h, new_w = int(ratio * height), int(ratio * width)
  if min(new_h, new_w) < 1:
    raise ValueError(f'a {height}x{width} image rescaled by {ratio:.3f} has no pixels left; use larger images or '
                     'a larger scale range')
  image = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
  label = cv2.resize(np.ascontiguousarray(label), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
  return image, label


def pad_top_left(array: np.ndarray, size: int, value) -> np.ndarray:
  """``resize_with_pad(pad_mode='left_top')``: the array at the top-left of a canvas at least size x size,
  filled with ``value`` (a scalar, or one value per channel)."""
  height, width = array.shape[:2]
  canvas = np.empty((max(height, size), max(width, size)) + array.shape[2:], array.dtype)
  canvas[...] = np.asarray(value, array.dtype)
  canvas[:height, :width] = array
  return canvas


def random_crop_with_pad(image: np.ndarray, label: np.ndarray, size: int, rng, image_pad=IMAGENET_MEAN,
                         label_pad: int = IGNORE_LABEL):
  """``transforms.random_crop_with_pad``: pad top-left, then a size x size crop at ``floor(U(0, H - size))``,
  ``floor(U(0, W - size))`` (0 where the padded side equals the crop)."""
  image, label = pad_top_left(image, size, image_pad), pad_top_left(label, size, label_pad)
  height, width = image.shape[:2]
  top = int(np.floor(rng.uniform(0.0, height - size)))
  left = int(np.floor(rng.uniform(0.0, width - size)))
  return image[top:top + size, left:left + size], label[top:top + size, left:left + size]


def augment_geometry(image01: np.ndarray, label: np.ndarray, rng, crop_size: int, scale_range=(0.5, 1.5),
                     mirror: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Steps 1-3: float32 (H, W, 3) image in [0, 1] and (H, W) labels -> the (crop, crop, 3) / (crop, crop) crop.
  Draws, in order: mirror (when ``mirror``), ratio, top, left."""
  if mirror:
    image01, label = random_mirror(image01, label, rng)
  image01, label = random_resize(image01, label, rng, scale_range)
  return random_crop_with_pad(image01, label, crop_size, rng)


@dataclasses.dataclass(frozen=True)
class SPMLTrain:
  """example {'image': uint8 (H, W, 3) RGB, 'label_map': (H, W) class ids} ->
  {'image': float32 (C, C, 3) normalised, 'label_map': int32 (C, C), 'superpixels': int32 (c, c)} with
  C = crop_size and c = int(C * superpixel_scale) (256 for the 512 crop).

  num_superpixels: SEEDS' request on the half-size crop (1024 for VOC). max_segments: the model's token slots
  (SEEDS returning more raises). num_classes > 0 checks the label ids (255 allowed).
  """

  crop_size: int = 512
  scale_range: tuple[float, float] = (0.5, 1.5)
  mirror: bool = True
  num_superpixels: int = 1024
  superpixel_scale: float = 0.5
  max_segments: Optional[int] = None
  num_classes: int = 0

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = np.asarray(example['image'])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'SPMLTrain expects an (H, W, 3) uint8 RGB image; got {image.dtype} {image.shape}')
    if 'label_map' not in example or example['label_map'] is None:
      raise ValueError('SPMLTrain needs a label map per image (the "label_map" of the source); got an image '
                       'without one. Fine-tuning reads (H, W) class ids, 255 = ignore.')
    label = np.asarray(example['label_map'])
    if label.ndim == 3 and label.shape[-1] == 1:
      label = label[..., 0]
    if label.shape != image.shape[:2]:
      raise ValueError(f'label map {label.shape} does not cover its image {image.shape[:2]} pixel for pixel')
    if self.num_classes:
      values = np.unique(label)
      bad = values[((values < 0) | (values >= self.num_classes)) & (values != IGNORE_LABEL)]
      if bad.size:
        raise ValueError(f'label ids {bad.tolist()[:10]} are outside [0, {self.num_classes}) and not the ignore id '
                         f'{IGNORE_LABEL}; convert palette PNGs to class indices (not convert("L")) or fix the '
                         'class count')
    label = label.astype(np.uint8 if label.min() >= 0 and label.max() <= 255 else np.int32)
    crop01, crop_label = augment_geometry(image.astype(np.float32) / np.float32(255), label, rng, self.crop_size,
                                          tuple(self.scale_range), self.mirror)
    superpixels = train_crop_superpixels(crop01, self.num_superpixels, self.superpixel_scale, self.max_segments)
    normalised = (crop01 - IMAGENET_MEAN) / IMAGENET_STD
    return {'image': np.ascontiguousarray(normalised, np.float32),
            'label_map': np.ascontiguousarray(crop_label, np.int32),
            'superpixels': np.asarray(superpixels, np.int32)}
