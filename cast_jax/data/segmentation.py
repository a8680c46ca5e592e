"""Segmenter's mmseg 0.14 recipes (ADE20K, Pascal Context) as per-example numpy callables.

Train (docs/original_behaviour.md#segmenter-data-pipeline), in mmseg's order:

    reduce_zero_label -> Resize(ratio_range, keep_ratio) -> RandomCrop(cat_max_ratio) -> RandomFlip
    -> PhotoMetricDistortion -> Normalize -> Pad(crop, 0 / ignore) -> superpixels of the padded crop

Eval (docs/original_behaviour.md#segmenter-inference; per image): Resize(keep_ratio) to ``img_scale`` -> Normalize,
then (as ``inference_with_superpixels`` does before its sliding window) a PyTorch-bilinear upsample when the short
side is below the window.

Pixel operations are the ones mmseg/mmcv call (cv2 resize, flip, HSV conversions, cv2 normalisation), so given
the same random numbers the outputs match mmseg bit for bit; the random numbers come from an explicit
``np.random.Generator`` instead of numpy's global state (same draws in the same order, different stream).

mmcv loads BGR images; here images stay RGB throughout. Every op is per-channel except the HSV conversion,
and cv2's RGB<->HSV on RGB equals its BGR<->HSV on BGR, so nothing changes; mmseg's ``to_rgb`` is then a no-op.

Superpixels: the original denormalises the final padded float crop, truncates to uint8 (the float round trip
turns a few values x into x - 1, and the zero padding into the mean colour (123, 116, 103)), and then multiplies
that uint8 array by 255, which wraps to ``(-x) mod 256`` (docs/original_behaviour.md#segmenter-seeds-wrap).
``superpixel_view`` reproduces both; ``invert_quirk=False`` skips the wrap. ``superpixel_fn`` (uint8 (H, W, 3) ->
int32 (H, W)) runs on that view.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import cv2
import numpy as np

SuperpixelFn = Callable[[np.ndarray], np.ndarray]

IGNORE_LABEL = 255

# segm/data/base.py: round(255 * DeiT stats, 2) -> mean (123.68, 116.28, 103.53), std (58.4, 57.12, 57.38).
# mmseg's Normalize stores them as float32; mmcv hands cv2 float64 copies of those float32 values.
MEAN_255 = np.round(255 * np.array([0.485, 0.456, 0.406]), 2).astype(np.float32)
STD_255 = np.round(255 * np.array([0.229, 0.224, 0.225]), 2).astype(np.float32)


def reduce_zero_label(label: np.ndarray, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
  """ADE20K's ``LoadAnnotations(reduce_zero_label=True)``: 0 ('other') -> ignore, k -> k - 1, ignore stays."""
  label = np.asarray(label)
  return np.where((label == 0) | (label == ignore_label), ignore_label, label.astype(np.int64) - 1).astype(label.dtype)


def sample_scale(img_scale: tuple[int, int], ratio_range: tuple[float, float],
                 rng: np.random.Generator) -> tuple[tuple[int, int], float]:
  """``Resize.random_sample_ratio``: r ~ U(ratio_range), target (int(long r), int(short r)). Returns (scale, r)."""
  ratio = rng.random() * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
  return (int(img_scale[0] * ratio), int(img_scale[1] * ratio)), ratio


def rescaled_hw(hw: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
  """``mmcv.rescale_size``: the largest keep-ratio size within (long, short) = (max(scale), min(scale)).

  hw: (height, width) -> (new_height, new_width), each ``int(x * factor + 0.5)``.
  """
  h, w = hw
  factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
  return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def rescale(image: np.ndarray, label: Optional[np.ndarray], scale: tuple[int, int]):
  """``Resize`` with keep_ratio: cv2 bilinear for the image (H, W, 3), cv2 nearest for the label (H, W)."""
  new_h, new_w = rescaled_hw(image.shape[:2], scale)
  image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
  if label is not None:
    label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
  return image, label


def crop_offset(hw: tuple[int, int], crop_size: int, rng: np.random.Generator) -> tuple[int, int]:
  """``RandomCrop.get_crop_bbox``: a uniform (top, left); 0 along a side shorter than the crop."""
  top = int(rng.integers(0, max(hw[0] - crop_size, 0) + 1))
  left = int(rng.integers(0, max(hw[1] - crop_size, 0) + 1))
  return top, left


def random_crop_offset(label: np.ndarray, crop_size: int, cat_max_ratio: float, ignore_label: int,
                       rng: np.random.Generator) -> tuple[int, int]:
  """``RandomCrop``'s box choice: (top, left) of a crop_size x crop_size window of ``label`` (H, W).

  With cat_max_ratio < 1 a box is accepted when its non-ignored pixels hold at least two classes and the
  largest has a share below cat_max_ratio. mmseg checks at most 10 boxes; after 10 rejections it keeps the
  11th draw unchecked.
  """
  box = crop_offset(label.shape, crop_size, rng)
  if cat_max_ratio < 1.0:
    for _ in range(10):
      window = label[box[0]:box[0] + crop_size, box[1]:box[1] + crop_size]
      classes, counts = np.unique(window, return_counts=True)
      counts = counts[classes != ignore_label]
      if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
        break
      box = crop_offset(label.shape, crop_size, rng)
  return box


def _scale_shift(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
  """``PhotoMetricDistortion.convert``: float32 ``x * alpha + beta``, clipped to [0, 255], truncated to uint8."""
  return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
  """mmseg's ``PhotoMetricDistortion`` on an RGB uint8 (H, W, 3) image; each op applies with p = 0.5.

  Order: brightness, [contrast if mode == 1], saturation, hue, [contrast if mode == 0], with mode a fair coin
  drawn after brightness (mmseg's comment has the two modes the other way round; this follows its code).
  The hue shift is numpy's ``randint(-18, 18)``, so it lies in [-18, 17] (H is 0..179 in cv2's uint8 HSV).
  """
  def contrast(img):
    if rng.integers(2):
      img = _scale_shift(img, alpha=rng.uniform(*contrast_range))
    return img

  if rng.integers(2):
    image = _scale_shift(image, beta=rng.uniform(-brightness_delta, brightness_delta))
  mode = rng.integers(2)
  if mode == 1:
    image = contrast(image)
  if rng.integers(2):
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = _scale_shift(hsv[..., 1], alpha=rng.uniform(*saturation_range))
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
  if rng.integers(2):
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-hue_delta, hue_delta)) % 180
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
  if mode == 0:
    image = contrast(image)
  return image


def normalize(image: np.ndarray) -> np.ndarray:
  """``mmcv.imnormalize`` with the 255-scale stats: uint8 RGB (H, W, 3) -> float32 (H, W, 3).

  The arithmetic of mmcv's ``cv2.subtract`` / ``cv2.multiply`` under OpenCV 4 (what the original ran), because the
  superpixel view truncates the round trip and so sees its rounding: each op in float64 (the Scalar's type),
  rounded to float32 after each. Written in numpy since OpenCV 5 does both ops in float32 (other last bits) and
  broadcasts a (1, 3) Scalar wrongly over images one pixel wide.
  """
  centred = (image.astype(np.float64) - MEAN_255.astype(np.float64)).astype(np.float32)
  return (centred.astype(np.float64) * (1.0 / STD_255.astype(np.float64))).astype(np.float32)


def pad_bottom_right(array: np.ndarray, size: int, value) -> np.ndarray:
  """``Pad(size=(size, size))``: pad rows at the bottom and columns at the right with ``value``."""
  pad = [(0, size - array.shape[0]), (0, size - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
  return np.pad(array, pad, constant_values=value)


def superpixel_view(normalized: np.ndarray, invert_quirk: bool = True) -> np.ndarray:
  """The uint8 image the original gives SEEDS: float32 (H, W, 3) normalized -> uint8 (H, W, 3) RGB.

  ``rgb_denormalize`` (float32 ``x * std + mean``) then ``.astype(np.uint8)`` (truncation), then the ``* 255``
  wrap of ``generate_superpixels`` when ``invert_quirk``.
  """
  denormalized = normalized.astype(np.float32) * STD_255 + MEAN_255
  view = np.clip(np.trunc(denormalized), 0, 255).astype(np.uint8)  # in-range values: same as a bare astype
  if invert_quirk:
    view = np.negative(view)  # uint8: (-x) mod 256 == (255 x) mod 256
  return view


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  """float32 ``a * b + c`` with one rounding (the float32 product is exact in float64)."""
  return (a.astype(np.float64) * b + c).astype(np.float32)


def _linear_taps(in_size: int, out_size: int):
  """Per output index along one axis: lower/upper source index and their float32 weights."""
  scale = np.float32(in_size) / np.float32(out_size)
  src = _fma32(np.arange(out_size, dtype=np.float32) + np.float32(0.5), scale, np.float32(-0.5))
  src = np.maximum(src, np.float32(0))  # negative source coordinates clamp to 0 in linear modes
  lo = np.minimum(src.astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  upper = np.clip(src - lo.astype(np.float32), 0, 1).astype(np.float32)
  return lo, hi, np.float32(1) - upper, upper


def torch_bilinear_resize(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """``F.interpolate(mode='bilinear', align_corners=False)`` of a float (H, W, C) image, in float32.

  Source coordinate (o + 0.5) * in / out - 0.5, clamped at 0; the upper tap is clamped to the last row/column.
  The rounding follows PyTorch's generic CPU kernel: fused multiply-adds, blending along W first, then H,
  as ``fma(a, w_lo, b * w_hi)``; checked bit for bit against PyTorch 2.x on CPU for outputs with H + W > 128
  (smaller outputs go to another kernel, with other roundings, differing by ~1 ulp). The original ran this
  resize on CUDA, not checked here. Rounding matters only through ``superpixel_view``'s uint8 truncation.
  """
  x = image.astype(np.float32)
  h_lo, h_hi, h_w0, h_w1 = _linear_taps(x.shape[0], out_hw[0])
  w_lo, w_hi, w_w0, w_w1 = _linear_taps(x.shape[1], out_hw[1])
  w_w0, w_w1 = w_w0[:, None], w_w1[:, None]

  def along_w(rows):
    return _fma32(rows[:, w_lo], w_w0, rows[:, w_hi] * w_w1)

  top, bottom = along_w(x[h_lo]), along_w(x[h_hi])
  return _fma32(top, h_w0[:, None, None], bottom * h_w1[:, None, None])


def upsample_to_window(image: np.ndarray, window: int) -> np.ndarray:
  """``segm.model.utils.resize``: when the short side is below ``window``, bilinearly upsample it to ``window``.

  The long side becomes ``int(long / short * window)``. image: float (H, W, C).
  """
  h, w = image.shape[:2]
  if min(h, w) >= window:
    return image
  if h < w:
    out_hw = (window, int(w / h * window))
  else:
    out_hw = (int(h / w * window), window)
  return torch_bilinear_resize(image, out_hw)


def example_name(example: dict[str, Any]) -> str:
  """What an error message calls an example: its file (folder sources) or record name, else 'an example'."""
  return str(example.get('file_name') or example.get('name') or 'an example (its source gives no file name)')


def check_label_ids(label: np.ndarray, num_classes: int, ignore_label: int, what: str,
                    reduced: bool = False) -> None:
  """Raises ValueError naming ``what`` when ``label`` holds an id outside [0, num_classes) other than the ignore
  label (such pixels would otherwise be silently dropped, or make the loss NaN under jit)."""
  values = np.unique(label)
  bad = [int(v) for v in values if v != ignore_label and not 0 <= v < num_classes]
  if bad:
    how = ' (after reduce_zero_label: raw id k became k - 1, raw 0 became 255)' if reduced else ''
    raise ValueError(f'{what}: label map holds class ids {bad[:10]}{how} outside [0, {num_classes}) that are not '
                     f'the ignore label {ignore_label}; expected the model\'s {num_classes} classes and '
                     f'{ignore_label} for unlabelled pixels (map other ids to {ignore_label}, or set '
                     'config.model.seg_classes / data.reduce_zero_label to match the dataset)')


def _label_map(example: dict[str, Any], reduce_zero: bool, ignore_label: int, num_classes: int = 0) -> np.ndarray:
  """The example's label map as (H, W) uint8 (int32 when it does not fit), zero label reduced if asked; checked
  against the image's size and, when ``num_classes`` > 0, against the class count (errors name the file)."""
  label = np.asarray(example['label_map'])
  if label.ndim == 3 and label.shape[-1] == 1:
    label = label[..., 0]
  if label.ndim != 2:
    raise ValueError(f'{example_name(example)}: the label map must be (H, W) class indices; got shape {label.shape} '
                     '(a colour-palette PNG converted to RGB? keep its indices)')
  image_hw = np.shape(example['image'])[:2]
  if label.shape != tuple(image_hw):
    raise ValueError(f'{example_name(example)}: image is {tuple(image_hw)} (H, W) but its label map is '
                     f'{label.shape}; every label map must cover its image pixel for pixel')
  label = label.astype(np.uint8 if label.min() >= 0 and label.max() <= 255 else np.int32)
  label = reduce_zero_label(label, ignore_label) if reduce_zero else label
  if num_classes > 0:
    check_label_ids(label, num_classes, ignore_label, example_name(example), reduced=reduce_zero)
  return label


@dataclasses.dataclass(frozen=True)
class SegmentationTrain:
  """example {'image': uint8 (H, W, 3) RGB, 'label_map': int (H, W)} ->
  {'image': float32 (C, C, 3) normalized, 'label_map': int32 (C, C), 'superpixels': int32 (C, C)}, C = crop_size.

  Pixels outside the resized image (bottom/right padding) are 0 in 'image' (the mean colour) and
  ``ignore_label`` in 'label_map'. ``flip_prob`` and ``photometric`` exist to switch those steps off in tests.
  num_classes > 0: a label id outside [0, num_classes) other than ``ignore_label`` raises, naming the file.

  ``superpixel_fn=None`` (on-device superpixels, ``train.device_superpixels``): no 'superpixels'; instead
  'superpixel_pixels' uint8 (C, C, 3), the array ``superpixel_fn`` would have been handed (``superpixel_view`` of
  the padded crop, x255-wrapped when ``invert_quirk``), which the jitted step segments with jax_slic. 'image'
  stays float32: its cv2 normalisation and zero padding are what the model sees.
  """

  superpixel_fn: Optional[SuperpixelFn]
  crop_size: int = 512
  img_scale: tuple[int, int] = (2048, 512)
  ratio_range: tuple[float, float] = (0.5, 2.0)
  cat_max_ratio: float = 0.75
  ignore_label: int = IGNORE_LABEL
  reduce_zero_label: bool = False
  flip_prob: float = 0.5
  photometric: bool = True
  invert_quirk: bool = True
  num_classes: int = 0

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = np.ascontiguousarray(example['image'], np.uint8)
    label = _label_map(example, self.reduce_zero_label, self.ignore_label, self.num_classes)
    scale, _ = sample_scale(self.img_scale, self.ratio_range, rng)
    image, label = rescale(image, label, scale)
    top, left = random_crop_offset(label, self.crop_size, self.cat_max_ratio, self.ignore_label, rng)
    image = image[top:top + self.crop_size, left:left + self.crop_size]
    label = label[top:top + self.crop_size, left:left + self.crop_size]
    if rng.random() < self.flip_prob:
      image, label = image[:, ::-1], label[:, ::-1]
    image = np.ascontiguousarray(image)  # cv2 needs positive strides
    if self.photometric:
      image = photometric_distortion(image, rng)
    normalized = pad_bottom_right(normalize(image), self.crop_size, 0.0)
    label = pad_bottom_right(label.astype(np.int32), self.crop_size, self.ignore_label)
    pixels = superpixel_view(normalized, self.invert_quirk)
    if self.superpixel_fn is None:  # on-device superpixels: the pixels SEEDS would have seen, no map
      return {'image': normalized, 'label_map': label, 'superpixel_pixels': pixels}
    superpixels = self.superpixel_fn(pixels)
    return {'image': normalized, 'label_map': label, 'superpixels': np.asarray(superpixels, np.int32)}


@dataclasses.dataclass(frozen=True)
class SegmentationEval:
  """Single-scale evaluation input: example {'image', optional 'label_map'} ->
  {'image': float32 (h, w, 3) normalized, 'ori_shape': int32 (2,), 'label_map': int32 (H, W) if given}.

  'image' is resized to fit (long, short) = img_scale (mmseg's MultiScaleFlipAug -> Resize(keep_ratio), no
  flip) and, with ``window_size``, upsampled so its short side is at least the window (as inference does).
  Its shape varies per image, as in the original (batch size 1); the sliding window and its superpixels
  (``superpixel_view`` of each window) are the inference code's job. 'label_map' stays at the original
  resolution, where mIoU is measured (docs/original_behaviour.md#segmenter-miou). num_classes > 0: label ids are
  checked as in ``SegmentationTrain``.
  """

  img_scale: tuple[int, int] = (2048, 512)
  window_size: Optional[int] = None
  ignore_label: int = IGNORE_LABEL
  reduce_zero_label: bool = False
  num_classes: int = 0

  def __call__(self, example: dict[str, Any], rng: Optional[np.random.Generator] = None) -> dict[str, np.ndarray]:
    del rng
    image = np.ascontiguousarray(example['image'], np.uint8)
    out = {'ori_shape': np.array(image.shape[:2], np.int32)}
    resized, _ = rescale(image, None, self.img_scale)
    normalized = normalize(resized)
    if self.window_size is not None:
      normalized = upsample_to_window(normalized, self.window_size)
    out['image'] = normalized
    if 'label_map' in example:
      out['label_map'] = _label_map(example, self.reduce_zero_label, self.ignore_label,
                                    self.num_classes).astype(np.int32)
    return out


# segm/config.yml + segm/data/config/*.py as BaseMMSeg rewrites them: img_scale = (max_ratio * im_size, im_size).
# window_stride is miou_cast's final-evaluation stride (crop - 32), for the sliding-window inference.
DATASETS = {
    'ade20k': dict(im_size=512, crop_size=512, max_ratio=4, reduce_zero_label=True, window_stride=480),
    'pascal_context': dict(im_size=520, crop_size=480, max_ratio=8, reduce_zero_label=False, window_stride=448),
}


def segmentation_recipes(dataset: str, superpixel_fn: SuperpixelFn,
                         invert_quirk: bool = True) -> tuple[SegmentationTrain, SegmentationEval]:
  """The (train, eval) recipes of ``dataset`` ('ade20k' or 'pascal_context'); eval windows are crop-sized."""
  cfg = DATASETS[dataset]
  img_scale = (cfg['max_ratio'] * cfg['im_size'], cfg['im_size'])
  train = SegmentationTrain(superpixel_fn, crop_size=cfg['crop_size'], img_scale=img_scale,
                            reduce_zero_label=cfg['reduce_zero_label'], invert_quirk=invert_quirk)
  evaluation = SegmentationEval(img_scale=img_scale, window_size=cfg['crop_size'],
                                reduce_zero_label=cfg['reduce_zero_label'])
  return train, evaluation
