"""Sliding-window Segmenter inference, exactly as ``segmenter/segm/model/utils.inference_with_superpixels``.

Per image: when the short side is below the window, bilinearly upsample (align_corners=False, no antialias) so the
short side equals the window; cut windows at the anchors ``[a for a in range(0, L, stride) if a < L - window] +
[L - window]`` per axis (rows outer); compute SEEDS per window on the de-normalised window (float32 ``x * std +
mean``, truncated to uint8, then the segmentation preset's x255 uint8 wrap); run the model on groups of
``window_batch`` windows (the original's token count is the max over each group, which the model's validity mask
reproduces); sum the window logits, divide by the cover count, bilinearly resize to the original size, softmax over
classes, argmax. The original size is the image's before any resize (``ori_shape``: the eval recipe's keep-ratio
resize and the short-side upsampling here both happen before the windows), so ``out_size`` takes it: the window
grid's merged logits are resized once, straight to it, as ``merge_windows`` does.

Static shapes: every group is ``(window_batch, window, window)`` (the last one padded with copies of its own last
window, which change neither the group's token count nor, in eval mode, any other window), so the model compiles
once for every image size. The merge runs in numpy float32.

On-device superpixels (``pixels_in``, ``data.superpixels_on_device``): the host hands each group's uint8
``window_pixels`` instead of maps, and the jitted forward segments them (jax_slic) before the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from cast_jax import xla_cpu
from cast_jax.models.resize import interpolation_matrix
from cast_jax.superpixels import SuperpixelConfig, compute_superpixels, invert_uint8, preset

# The Segmenter's normalisation: the ImageNet statistics x 255, rounded to 2 decimals (BaseMMSeg).
SEGMENTER_MEAN = (123.68, 116.28, 103.53)
SEGMENTER_STD = (58.4, 57.12, 57.38)


def window_anchors(length: int, window: int, stride: int) -> list[int]:
  """``sliding_window``'s anchors along one axis (``length >= window``)."""
  if length < window:
    raise ValueError(f'a side of {length} px is shorter than the {window} px window; resize the image first '
                     '(resize_short_side)')
  if stride < 1:
    raise ValueError(f'window stride must be >= 1; got {stride}')
  return [a for a in range(0, length, stride) if a < length - window] + [length - window]


def bilinear_resize(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """(H, W, C) float32 -> out_hw, as ``F.interpolate(mode='bilinear', align_corners=False)`` (no antialias).

  Two matrix products, rows then columns. (A single three-operand ``np.einsum`` does not pick that order: it
  loops over every (H, h, w, C, W) at once, hours for a 512 x 683 x 150 window grid.)"""
  rh = interpolation_matrix(image.shape[0], out_hw[0], 'bilinear').astype(np.float32)  # (H, h)
  rw = interpolation_matrix(image.shape[1], out_hw[1], 'bilinear').astype(np.float32)  # (W, w)
  rows = np.tensordot(rh, image.astype(np.float32), axes=(1, 0))  # (H, w, C)
  return np.matmul(rw[None], rows)  # (H, W, C)


def resize_short_side(image: np.ndarray, window: int) -> np.ndarray:
  """``segm.model.utils.resize``: upsample so the short side is ``window`` when it is shorter, else unchanged."""
  h, w = image.shape[:2]
  if min(h, w) >= window:
    return image
  if h < w:
    size = (window, int(w / h * window))
  else:
    size = (int(h / w * window), window)
  return bilinear_resize(image, size)


def normalize(image_uint8: np.ndarray, mean: Sequence[float] = SEGMENTER_MEAN,
              std: Sequence[float] = SEGMENTER_STD) -> np.ndarray:
  """mmseg ``Normalize`` as the Segmenter applies it: float32 ``(x - mean) * (1 / std)`` on (..., 3) RGB."""
  x = np.asarray(image_uint8).astype(np.float32)
  return (x - np.asarray(mean, np.float32)) * (np.float32(1.0) / np.asarray(std, np.float32))


def denormalize_to_uint8(window: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """The window SEEDS starts from: float32 ``x * std + mean`` truncated to uint8 (numpy's cast, as the
  original's ``.numpy().astype(np.uint8)``)."""
  x = window.astype(np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  return x.astype(np.uint8)


def window_pixels(window: np.ndarray, settings: 'SlidingWindow') -> np.ndarray:
  """What the superpixel method segments for a window (float (..., w, w, 3), normalised): ``denormalize_to_uint8``
  then, when ``settings.superpixels.invert_uint8``, the x255 wrap that ``compute_superpixels`` would apply. uint8
  (..., w, w, 3): the input of on-device superpixels (``pixels_in``), whose function applies no wrap itself."""
  pixels = denormalize_to_uint8(np.asarray(window), settings.mean, settings.std)
  return invert_uint8(pixels) if settings.superpixels.invert_uint8 else pixels


@dataclasses.dataclass(frozen=True)
class SlidingWindow:
  """Settings of ``inference_with_superpixels``: window and stride in pixels (ADE20K 512/480, Pascal Context
  480/448), windows per model call, the normalisation the images carry, and the superpixel settings."""

  window: int = 512
  stride: int = 480
  window_batch: int = 2
  mean: Sequence[float] = SEGMENTER_MEAN
  std: Sequence[float] = SEGMENTER_STD
  superpixels: SuperpixelConfig = dataclasses.field(default_factory=lambda: preset('segmentation'))

  def __post_init__(self):
    if self.window % 8:
      raise ValueError(f'the window must be a multiple of the encoder stride 8; got {self.window}')
    if not 0 < self.stride <= self.window:
      raise ValueError(f'the stride must be in (0, window]; got {self.stride} for a {self.window} window')
    if self.window_batch < 1:
      raise ValueError(f'window_batch must be >= 1; got {self.window_batch}')


def segmenter_window_fn(model, variables) -> Callable[[Any, Any], Any]:
  """A jitted eval-mode ``(images (N, w, w, 3), superpixels (N, w, w)) -> masks (N, w, w, C)``."""
  forward = xla_cpu.jit(lambda v, x, s: model.apply(v, x, s, train=False)['masks'])
  return lambda images, superpixels: forward(variables, images, superpixels)


def sliding_window_inference(apply_fn, image: np.ndarray, settings: SlidingWindow, max_segments: int | None = None,
                             flipped: bool = False, out_size: tuple[int, int] | None = None,
                             pixels_in: bool = False) -> dict[str, np.ndarray]:
  """Class probabilities of one image.

  Args:
    apply_fn: (images (window_batch, w, w, 3), superpixels (window_batch, w, w) int32) -> (window_batch, w, w, C)
      logits, e.g. ``segmenter_window_fn(model, variables)``.
    image: (H, W, 3) float image normalised with ``settings.mean``/``std``.
    settings: window, stride, batch, normalisation, superpixels.
    max_segments: the model's token slots (bounds each window's SEEDS ids); default the requested count.
    flipped: the image was flipped left-right by the caller (the original's ``flip`` meta): the merged logits
      are flipped back before the softmax.
    out_size: (H, W) the merged logits are resized to: the image's size before the caller's own resize (the
      original's ``ori_shape``); default the given image's size. One bilinear resize (align_corners=False, no
      antialias) from the window grid to it, never through the given image's size.
    pixels_in: on-device superpixels: no maps on the host; ``apply_fn`` takes (images, ``window_pixels`` uint8
      (window_batch, w, w, 3)) and returns (logits, the maps it made of those pixels, (window_batch, w, w)).

  Returns a dict: 'probs' (H, W, C) float32, 'prediction' (H, W) int32, 'merged_logits' (H, W, C), and what the
  windows were: 'anchors' (nW, 2) (top, left), 'window_superpixels' (nW, w, w), 'window_masks' (nW, w, w, C),
  'count' (H2, W2) windows covering each pixel of the (possibly upsampled) grid.
  """
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'image must be (H, W, 3) channels-last and normalised; got shape {image.shape}')
  ws = settings.window
  height, width = image.shape[:2] if out_size is None else (int(out_size[0]), int(out_size[1]))
  if height < 1 or width < 1:
    raise ValueError(f'out_size must be a positive (height, width), the original image size; got {out_size}')
  grid = resize_short_side(image, ws)
  anchors = [(top, left) for top in window_anchors(grid.shape[0], ws, settings.stride)
             for left in window_anchors(grid.shape[1], ws, settings.stride)]
  crops = np.stack([grid[t:t + ws, l:l + ws] for t, l in anchors])
  if pixels_in:
    sources = window_pixels(crops, settings)
  else:
    sources = np.stack([compute_superpixels(denormalize_to_uint8(c, settings.mean, settings.std),
                                            settings.superpixels, max_segments) for c in crops]).astype(np.int32)
  masks, maps = [], []
  wb = settings.window_batch
  for start in range(0, len(crops), wb):
    idx = list(range(start, min(start + wb, len(crops))))
    idx += [idx[-1]] * (wb - len(idx))  # pad with the group's own last window: same token count
    out = apply_fn(crops[idx], sources[idx])
    keep = min(wb, len(crops) - start)
    if pixels_in:
      out, made = out
      maps.append(np.asarray(made, np.int32)[:keep])
    masks.append(np.asarray(out, np.float32)[:keep])
  masks = np.concatenate(masks)
  superpixels = np.concatenate(maps) if pixels_in else sources
  n_cls = masks.shape[-1]
  logits = np.zeros(grid.shape[:2] + (n_cls,), np.float32)
  count = np.zeros(grid.shape[:2], np.int32)
  for (t, l), m in zip(anchors, masks):
    logits[t:t + ws, l:l + ws] += m
    count[t:t + ws, l:l + ws] += 1
  merged = bilinear_resize(logits / count[..., None].astype(np.float32), (height, width))
  if flipped:
    merged = merged[:, ::-1]
  shifted = merged - merged.max(axis=-1, keepdims=True)
  probs = np.exp(shifted)
  probs /= probs.sum(axis=-1, keepdims=True)
  return {'probs': probs, 'prediction': probs.argmax(-1).astype(np.int32), 'merged_logits': merged,
          'anchors': np.asarray(anchors, np.int32), 'window_superpixels': superpixels, 'window_masks': masks,
          'count': count}
