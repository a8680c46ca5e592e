"""RandAugment as timm 0.4.x builds it for DeiT: ``rand-m9-mstd0.5-inc1``.

The original's recipe: docs/original_behaviour.md#deit-augmentation.

What that string and DeiT's ``create_transform`` arguments select (timm 0.4.12 ``auto_augment.py`` and
``transforms_factory.transforms_imagenet_train``):

* ``inc1``: the 15 "increasing" ops below (severity grows with magnitude for every op).
* ``m9`` / ``mstd0.5``: each *applied* op draws its own magnitude ~ N(9, 0.5), clipped to [0, 10].
* two ops per image, chosen uniformly *with replacement*; each then runs with probability 0.5.
* geometric ops fill with the ImageNet mean in uint8, ``round(255 * mean)`` = (124, 116, 104), and resample
  bicubically: DeiT passes ``interpolation='bicubic'``, which timm forwards to RandAugment (only
  ``'random'`` would pick bilinear/bicubic per call).

The pixel operations are the same PIL calls as timm's; random numbers come from a numpy ``Generator``
(timm draws from Python's ``random`` and ``np.random``), so the distributions match, not the streams.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0

# timm's _RAND_INCREASING_TRANSFORMS, in its order (Cutout is left out there too: random erasing replaces it).
RAND_INCREASING_OPS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing', 'SolarizeAdd',
    'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
    'TranslateXRel', 'TranslateYRel',
)

# timm: tuple(min(255, round(255 * m)) for m in IMAGENET_DEFAULT_MEAN).
IMAGENET_MEAN_FILL = (124, 116, 104)


# ----------------------------------------------------------------------------------------------------------
# Pixel operations (PIL RGB image in, PIL RGB image out).


def auto_contrast(img: Image.Image) -> Image.Image:
  return ImageOps.autocontrast(img)


def equalize(img: Image.Image) -> Image.Image:
  return ImageOps.equalize(img)


def invert(img: Image.Image) -> Image.Image:
  return ImageOps.invert(img)


def posterize(img: Image.Image, bits: int) -> Image.Image:
  """Keep the ``bits`` most significant bits of each channel (0 bits: black, 8 or more: unchanged).

  Magnitude 10 asks for 0 bits. The Pillow of the original run masked with ``~(2**8 - 1)`` and returned a
  black image; current Pillow's ``ImageOps.posterize`` rejects 0, so the same mask is applied here directly.
  """
  if bits >= 8:
    return img
  mask = (0xFF << (8 - bits)) & 0xFF
  return img.point([v & mask for v in range(256)] * len(img.getbands()))


def solarize(img: Image.Image, threshold: int) -> Image.Image:
  """Invert every channel value >= ``threshold`` (256: no change)."""
  return ImageOps.solarize(img, threshold)


def solarize_add(img: Image.Image, add: int, threshold: int = 128) -> Image.Image:
  """Add ``add`` (saturating at 255) to every channel value below ``threshold``; leave the rest."""
  lut = [min(255, v + add) if v < threshold else v for v in range(256)]
  return img.point(lut * len(img.getbands()))


def enhance(img: Image.Image, kind: str, factor: float) -> Image.Image:
  """PIL ``ImageEnhance`` blend: factor 1 is the identity, 0 the degenerate image (grey, flat, blurred...)."""
  enhancer = {'Color': ImageEnhance.Color, 'Contrast': ImageEnhance.Contrast,
              'Brightness': ImageEnhance.Brightness, 'Sharpness': ImageEnhance.Sharpness}[kind]
  return enhancer(img).enhance(factor)


def affine(img: Image.Image, coeffs: tuple, fill, resample) -> Image.Image:
  """PIL affine warp: output pixel (x, y) samples the input at (a x + b y + c, d x + e y + f)."""
  return img.transform(img.size, Image.AFFINE, coeffs, resample=resample, fillcolor=fill)


def shear_x(img, factor: float, fill=IMAGENET_MEAN_FILL, resample=Image.BICUBIC):
  return affine(img, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(img, factor: float, fill=IMAGENET_MEAN_FILL, resample=Image.BICUBIC):
  return affine(img, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x_rel(img, fraction: float, fill=IMAGENET_MEAN_FILL, resample=Image.BICUBIC):
  """Shift the content left by ``fraction * width`` pixels (right when negative); uncovered pixels get ``fill``."""
  return affine(img, (1, 0, fraction * img.width, 0, 1, 0), fill, resample)


def translate_y_rel(img, fraction: float, fill=IMAGENET_MEAN_FILL, resample=Image.BICUBIC):
  """Shift the content up by ``fraction * height`` pixels (down when negative)."""
  return affine(img, (1, 0, 0, 0, 1, fraction * img.height), fill, resample)


def rotate(img, degrees: float, fill=IMAGENET_MEAN_FILL, resample=Image.BICUBIC):
  """Counter-clockwise about the image centre, same canvas size; uncovered corners get ``fill``."""
  return img.rotate(degrees, resample=resample, fillcolor=fill)


# ----------------------------------------------------------------------------------------------------------
# Magnitude (level in [0, 10]) -> op arguments: timm's *_level_to_arg functions for the increasing ops.


def _random_sign(value: float, rng: np.random.Generator) -> float:
  # timm: negate when random() > 0.5, i.e. each sign with probability 1/2.
  return -value if rng.random() > 0.5 else value


def level_to_arg(name: str, level: float, rng: np.random.Generator, translate_pct: float = 0.45):
  """The argument ``name`` takes at magnitude ``level``; ``None`` for the ops that take none.

  Rotate +-3 deg per level; Shear +-0.03; TranslateRel +-0.045 of the size; Enhance 1 +- 0.09 per level;
  Posterize keeps 4 - int(0.4 level) bits; Solarize threshold 256 - int(25.6 level); SolarizeAdd int(11 level).
  The ``int`` truncations are timm's (they make the argument a step function of the level).
  """
  fraction = level / MAX_LEVEL
  if name in ('AutoContrast', 'Equalize', 'Invert'):
    return None
  if name == 'Rotate':
    return _random_sign(fraction * 30.0, rng)
  if name == 'PosterizeIncreasing':
    return 4 - int(fraction * 4)
  if name == 'SolarizeIncreasing':
    return 256 - int(fraction * 256)
  if name == 'SolarizeAdd':
    return int(fraction * 110)
  if name.endswith('Increasing'):  # Color / Contrast / Brightness / Sharpness
    return 1.0 + _random_sign(fraction * 0.9, rng)
  if name in ('ShearX', 'ShearY'):
    return _random_sign(fraction * 0.3, rng)
  if name in ('TranslateXRel', 'TranslateYRel'):
    return _random_sign(fraction * translate_pct, rng)
  raise ValueError(f'unknown RandAugment op {name!r}')


def apply_op(img: Image.Image, name: str, arg, fill=IMAGENET_MEAN_FILL, resample=Image.BICUBIC) -> Image.Image:
  """Runs op ``name`` with the argument ``level_to_arg`` produced."""
  if name == 'AutoContrast':
    return auto_contrast(img)
  if name == 'Equalize':
    return equalize(img)
  if name == 'Invert':
    return invert(img)
  if name == 'Rotate':
    return rotate(img, arg, fill, resample)
  if name == 'PosterizeIncreasing':
    return posterize(img, arg)
  if name == 'SolarizeIncreasing':
    return solarize(img, arg)
  if name == 'SolarizeAdd':
    return solarize_add(img, arg)
  if name.endswith('Increasing'):
    return enhance(img, name[:-len('Increasing')], arg)
  geometric = {'ShearX': shear_x, 'ShearY': shear_y, 'TranslateXRel': translate_x_rel,
               'TranslateYRel': translate_y_rel}
  if name in geometric:
    return geometric[name](img, arg, fill, resample)
  raise ValueError(f'unknown RandAugment op {name!r}')


def sample_magnitude(rng: np.random.Generator, magnitude: float = 9.0, magnitude_std: float = 0.5) -> float:
  """timm ``AugmentOp``: N(magnitude, std) per application (std 0: fixed), clipped to [0, MAX_LEVEL]."""
  if magnitude_std > 0:
    magnitude = rng.normal(magnitude, magnitude_std)
  return float(min(MAX_LEVEL, max(0.0, magnitude)))


@dataclasses.dataclass(frozen=True)
class RandAugment:
  """``img = RandAugment()(img, rng)``: timm's ``rand-m9-mstd0.5-inc1`` with DeiT's fill and interpolation."""

  num_layers: int = 2
  magnitude: float = 9.0
  magnitude_std: float = 0.5
  prob: float = 0.5
  ops: tuple[str, ...] = RAND_INCREASING_OPS
  fill: tuple[int, int, int] = IMAGENET_MEAN_FILL
  resample: int = Image.BICUBIC
  translate_pct: float = 0.45

  def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    # Chosen up front, with replacement (timm: np.random.choice(ops, num_layers, replace=True)).
    chosen = rng.integers(0, len(self.ops), size=self.num_layers)
    for index in chosen:
      # timm skips when random() > prob; the magnitude is only drawn for ops that run.
      if rng.random() > self.prob:
        continue
      name = self.ops[index]
      level = sample_magnitude(rng, self.magnitude, self.magnitude_std)
      arg = level_to_arg(name, level, rng, self.translate_pct)
      img = apply_op(img, name, arg, self.fill, self.resample)
    return img
