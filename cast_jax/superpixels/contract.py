"""The contract every superpixel method meets, and the checks and conversions at its two ends.

Input: an RGB image, uint8 (H, W, 3). ``as_rgb_uint8`` applies these rules to anything else:

* (H, W) or (H, W, 1) uint8 grayscale: the value is repeated into R, G and B.
* (H, W, 4) uint8 RGBA: the alpha channel is dropped (not composited).
  Both are what ``PIL.Image.convert('RGB')`` does, and the original pipelines ran every image through it.
* Any other dtype (float, int32, bool, ...), a channels-first (3, H, W) array, or any other shape: ValueError.
  Floats are refused because [0, 1] and [0, 255] images look alike; convert them with ``float_to_uint8``.

Output: int32 (H, W) ids, dense from 0 (every id in 0..max occurs), at most ``max_segments`` of them.
``relabel_dense`` closes gaps keeping the *sorted* order of the method's ids, so an output that is already
dense (SEEDS at the recipes' sizes, SLIC with connectivity enforced) is returned unchanged.
"""

from __future__ import annotations

import numpy as np


def as_rgb_uint8(image) -> np.ndarray:
  """A C-contiguous uint8 (H, W, 3) RGB view or copy of ``image``, by the rules in the module docstring."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    if image.dtype.kind == 'f':
      hint = ('a float image is ambiguous ([0, 1] or [0, 255]); convert it explicitly, e.g. '
              'float_to_uint8(image) for [0, 1] data, which truncates image*255 as the original does')
    else:
      hint = 'cast it yourself, e.g. np.clip(image, 0, 255).astype(np.uint8), if it holds 0..255 values'
    raise ValueError(f'superpixels need a uint8 RGB image, got dtype {image.dtype}: {hint}')
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  elif image.ndim == 3 and image.shape[-1] == 4:
    image = image[..., :3]
  elif image.ndim != 3 or image.shape[-1] != 3:
    hint = ''
    if image.ndim == 3 and image.shape[0] in (1, 3, 4):
      hint = ' (channels-first? transpose with image.transpose(1, 2, 0))'
    elif image.ndim == 4:
      hint = ' (a batch? call compute_superpixels_batch, or pass one image)'
    raise ValueError(f'superpixels need one (H, W, 3) RGB image (or (H, W) gray, (H, W, 4) RGBA), got shape '
                     f'{image.shape}{hint}')
  if image.shape[0] < 1 or image.shape[1] < 1:
    raise ValueError(f'empty image of shape {image.shape}')
  return np.ascontiguousarray(image)


def float_to_uint8(image, wrap: bool = True) -> np.ndarray:
  """The original pipelines' ``(x * 255).astype(np.uint8)`` for float images in [0, 1], made well defined.

  ``x * 255`` is computed in the input's own precision (float32 k/255 * 255 gives back exactly k; in float64 it
  can land just below k and truncate to k-1) and truncated toward zero. Values outside 0..255 (e.g. the DeiT
  recipe's random-erased pixels, which are never clipped) wrap modulo 256 when ``wrap`` (the C cast on x86 that
  the original relied on: -76.5 -> 180, 306 -> 50), or are clipped to 0..255 otherwise.

  Args:
    image: float (H, W, C) array, nominally in [0, 1].
  Returns:
    uint8 array of the same shape.
  """
  image = np.asarray(image)
  if image.dtype.kind != 'f':
    raise ValueError(f'float_to_uint8 takes a float image, got dtype {image.dtype}')
  if not np.all(np.isfinite(image)):
    raise ValueError('float_to_uint8: the image holds NaN or infinite values')
  scaled = np.trunc(image * image.dtype.type(255)).astype(np.int64)
  if wrap:
    return (scaled % 256).astype(np.uint8)
  return np.clip(scaled, 0, 255).astype(np.uint8)


def relabel_dense(labels: np.ndarray) -> np.ndarray:
  """int32 ids 0..K-1 for the K distinct non-negative ids of ``labels``, in their sorted order.

  Returns ``labels`` itself (as int32) when it is already dense, which is the usual case.
  """
  labels = np.asarray(labels)
  counts = np.bincount(labels.ravel())
  present = counts > 0
  if present.all():
    return labels.astype(np.int32, copy=False)
  new_id = np.cumsum(present, dtype=np.int64) - 1  # old id -> rank among the ids present
  return new_id[labels].astype(np.int32)


def validate_superpixels(labels, max_segments: int) -> None:
  """Raise ValueError, saying how to fix it, unless ``labels`` meets the contract in the module docstring.

  Args:
    labels: the (H, W) superpixel map to check.
    max_segments: the number of token slots the model was built with.
  """
  labels = np.asarray(labels)
  if labels.dtype != np.int32:
    raise ValueError(f'superpixel ids must be int32, got {labels.dtype}: use labels.astype(np.int32) after '
                     'checking the values fit')
  if labels.ndim != 2:
    raise ValueError(f'a superpixel map is one (H, W) array, got shape {labels.shape}; validate batch '
                     'members one at a time')
  if labels.size == 0:
    raise ValueError('the superpixel map is empty')
  low = int(labels.min())
  if low < 0:
    raise ValueError(f'superpixel ids must be >= 0, found {low}: relabel with relabel_dense(labels - '
                     'labels.min())')
  present = np.bincount(labels.ravel()) > 0
  if not present.all():
    missing = np.flatnonzero(~present)
    raise ValueError(f'superpixel ids must be dense from 0, but {missing.size} of 0..{present.size - 1} are '
                     f'missing (first: {missing[:5].tolist()}): relabel with relabel_dense(labels)')
  if present.size > max_segments:
    raise ValueError(f'{present.size} superpixels exceed max_segments={max_segments}: request fewer segments '
                     'from the method, or build the model with max_segments >= the count')
