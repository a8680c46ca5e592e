"""Turning whatever a dataset holds into an (H, W, 3) uint8 RGB array, or a reason why not.

Real image collections contain grayscale, CMYK, palette, RGBA and 16-bit files, and the odd truncated or
corrupt one. A training run must not stop for them: convertible images are converted (16-bit scaled to 8-bit,
CMYK, palettes and alpha through PIL), and the rest yield ``None`` plus a reason, which the pipeline counts and
reports instead of raising.

Transparency follows the original, whose loader is torchvision's ``pil_loader``: ``Image.convert('RGB')``
drops the alpha channel and keeps the colour stored under it (a half-transparent red pixel stays red; a fully
transparent one shows whatever colour the file stores there). Compositing onto a background would feed the
model different pixels from the ones the published checkpoints were trained and evaluated on.
"""

from __future__ import annotations

import io
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[bytes, np.ndarray, Image.Image]


def _to_rgb(img: Image.Image) -> Image.Image:
  if img.mode == 'RGB':
    return img
  if img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    # 16/32-bit integer grayscale: PIL's convert('L') clips instead of scaling, so scale by the bit depth.
    values = np.asarray(img, np.float64)
    top = 65535.0 if img.mode.startswith('I;16') or values.max() > 255 else 255.0
    gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, 'L').convert('RGB')
  return img.convert('RGB')  # L, 1, P, CMYK, YCbCr, F; RGBA, LA, PA drop alpha (module docstring)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise ValueError(f'image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {array.shape}')
  if array.dtype == np.uint16:
    array = np.round(array.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)
  elif array.dtype != np.uint8:
    raise ValueError(f'image arrays must be uint8 or uint16; got {array.dtype}')
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  elif array.shape[-1] == 4:
    array = array[..., :3]  # alpha dropped, as PIL's convert('RGB') does (module docstring)
  return np.ascontiguousarray(array)


def decode_image(data: ImageLike, exif_transpose: bool = False) -> tuple[Optional[np.ndarray], Optional[str]]:
  """(rgb uint8 (H, W, 3), None) on success, (None, reason) for unusable input. Never raises on bad bytes.

  exif_transpose: turn the pixels upright as the EXIF orientation says (a phone photo otherwise comes out
  sideways). Off for training data, because the original's PIL loader ignores the tag.
  """
  try:
    if isinstance(data, np.ndarray):
      return _array_to_rgb(data), None
    if isinstance(data, Image.Image):
      img = data
    else:
      img = Image.open(io.BytesIO(bytes(data)))
    img.load()  # decode now: truncated files fail here, not later inside an augmentation
    if exif_transpose:
      img = ImageOps.exif_transpose(img)
    return np.asarray(_to_rgb(img), np.uint8).copy(), None
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    return None, f'{type(e).__name__}: {e}'
