"""Image augmentations with torchvision's PIL-backend semantics, driven by a numpy Generator.

The original recipes are torchvision transforms on PIL images
(docs/original_behaviour.md#moco-views-and-augmentation-order). Each op here reproduces its parameter sampling
(ranges, fallbacks, order) and its pixel operation (the same PIL calls), but draws random numbers from an explicit
``np.random.Generator`` so a grain pipeline is deterministic per example.
The random *streams* differ from torch's, so individual crops differ; their distributions do not.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision ``RandomResizedCrop.get_params``: (top, left, crop_height, crop_width).

  Ten tries at a random area fraction and log-uniform aspect ratio; then a centre crop clamped to ``ratio``.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator, scale=(0.08, 1.0)) -> Image.Image:
  top, left, h, w = random_resized_crop_box(img.width, img.height, rng, scale)
  return img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
  """torchvision's PIL hue shift: rotate the HSV hue channel by ``hue_factor * 255`` with uint8 wrap-around."""
  h, s, v = img.convert('HSV').split()
  shift = int(hue_factor * 255) % 256  # np.uint8(hue_factor * 255) in torchvision: truncate, then wrap
  shifted = (np.asarray(h, np.uint8).astype(np.int16) + shift) % 256
  return Image.merge('HSV', (Image.fromarray(shifted.astype(np.uint8), 'L'), s, v)).convert('RGB')


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness=0.4, contrast=0.4, saturation=0.2,
                 hue=0.1) -> Image.Image:
  """torchvision ``ColorJitter``: the four adjustments in a random order, factors drawn up front. A strength of
  0 skips its adjustment (as torchvision does); the draws are made regardless, so the other adjustments'
  factors do not depend on it."""
  factors = [rng.uniform(1 - brightness, 1 + brightness), rng.uniform(1 - contrast, 1 + contrast),
             rng.uniform(1 - saturation, 1 + saturation), rng.uniform(-hue, hue)]
  strengths = (brightness, contrast, saturation, hue)
  for op in rng.permutation(4):
    if strengths[op] == 0:
      continue
    if op == 0:
      img = ImageEnhance.Brightness(img).enhance(factors[0])
    elif op == 1:
      img = ImageEnhance.Contrast(img).enhance(factors[1])
    elif op == 2:
      img = ImageEnhance.Color(img).enhance(factors[2])
    else:
      img = adjust_hue(img, factors[3])
  return img


def grayscale(img: Image.Image) -> Image.Image:
  """``RandomGrayscale``'s op: luma, replicated to three channels."""
  return img.convert('L').convert('RGB')


def gaussian_blur(img: Image.Image, rng: np.random.Generator, sigma=(0.1, 2.0)) -> Image.Image:
  """MoCo-v3's ``GaussianBlur``: PIL's blur with radius ~ U(sigma)."""
  return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(sigma[0], sigma[1])))


def solarize(img: Image.Image) -> Image.Image:
  """``PIL.ImageOps.solarize`` at the default threshold 128."""
  return ImageOps.solarize(img)


def hflip(img: Image.Image) -> Image.Image:
  return img.transpose(Image.FLIP_LEFT_RIGHT)


def normalize(image_uint8: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 -> float32 ImageNet-normalized (``ToTensor`` then ``Normalize``), channels last."""
  return (image_uint8.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def resize_shorter(img: Image.Image, size: int, resample=Image.BILINEAR) -> Image.Image:
  """torchvision ``Resize(int)``: the shorter side to ``size``, keeping the aspect ratio."""
  w, h = img.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
  """torchvision ``CenterCrop`` (rounding the offsets as it does)."""
  w, h = img.size
  top = int(round((h - size) / 2.0))
  left = int(round((w - size) / 2.0))
  return img.crop((left, top, left + size, top + size))


def seeds_input(image: np.ndarray) -> np.ndarray:
  """The uint8 image the original hands to SEEDS, from the normalized float32 (H, W, 3) image.

  ``datasets_seeds.py`` does ``((t * std + mean) * 255).astype(np.uint8)`` with no rounding and no clipping:
  * float32 ``t`` times the float64 mean/std tuples computes in float64;
  * the cast truncates toward zero, so a pixel whose round trip lands at 254.9999 becomes 254, not 255;
  * values outside [0, 256) wrap modulo 256 (C's float -> int -> uint8 on x86). They only occur in randomly
    erased boxes, whose N(0, 1) noise leaves [0, 1] after de-normalization: -0.3 -> -76.5 -> 180 and
    1.2 -> 306 -> 50. The erased box therefore looks to SEEDS like a noisy patch with colours wrapped
    around, not like a clipped one; the wrap is written out here so it does not depend on the platform.
  Returns (H, W, 3) uint8.
  """
  # timm's constants as Python floats (float64): widening augment's float32 copies would give other numbers.
  std = np.array([0.229, 0.224, 0.225], np.float64)
  mean = np.array([0.485, 0.456, 0.406], np.float64)
  scaled = (image.astype(np.float64) * std + mean) * 255.0
  return np.mod(np.trunc(scaled).astype(np.int64), 256).astype(np.uint8)
