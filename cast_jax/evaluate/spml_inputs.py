"""SPML's test-time inputs (``SPixListDataset`` + ``inference_suppix.py``), one image at a time, on the host.

1. SEEDS at the original resolution on the OpenCV Lab image: ``num_superpixels`` (1024 for VOC), 5 histogram
   bins, 15 iterations, prior 2, one level, and *no* uint8 wrap (unlike the Segmenter) -- the ``deit`` preset's
   settings with another count, so no new preset is needed;
2. the image scaled to [0, 1] and normalised with the ImageNet mean/std in float32;
3. ``resize_with_interpolation``: ratio = min(size / H, size / W), new sides ``int(ratio * H)``,
   ``int(ratio * W)`` (truncation; images smaller than ``size`` are enlarged), cv2 INTER_LINEAR for the image,
   INTER_NEAREST for labels and superpixels;
4. after the model, the per-pixel prediction goes back to the original size with INTER_NEAREST.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from cast_jax.superpixels import preset
from cast_jax.superpixels.seeds import seeds_superpixels

IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)


def spml_seeds_config(num_superpixels: int = 1024):
  """SPML's SEEDS: Lab, 5 bins, 15 iterations, no wrap (``preset('deit')`` with another count)."""
  return preset('deit', num_segments=num_superpixels)


def normalise(image_uint8) -> np.ndarray:
  """(H, W, 3) uint8 RGB -> float32 (x / 255 - mean) / std."""
  image = np.asarray(image_uint8)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected an (H, W, 3) uint8 RGB image; got {image.dtype} {image.shape}')
  return (image.astype(np.float32) / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD


def resized_size(height: int, width: int, larger_size: int) -> tuple[int, int]:
  """``resize_with_interpolation``'s output size: the larger side becomes ``larger_size``, int() truncation."""
  ratio = np.minimum(float(larger_size) / height, float(larger_size) / width)
  return int(ratio * height), int(ratio * width)


def resize(array: np.ndarray, out_hw: tuple[int, int], nearest: bool) -> np.ndarray:
  """cv2.resize to (H, W) (cv2 takes (width, height)); INTER_NEAREST for id maps, INTER_LINEAR otherwise."""
  if tuple(array.shape[:2]) == tuple(out_hw):
    return array
  inter = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
  return cv2.resize(array, (int(out_hw[1]), int(out_hw[0])), interpolation=inter)


def prepare_test_image(image_uint8, labels: Optional[np.ndarray] = None, test_image_size: int = 512,
                       num_superpixels: int = 1024, max_segments: Optional[int] = None) -> dict[str, np.ndarray]:
  """One test image as SPML feeds it to the model.

  Returns 'image' (h, w, 3) float32, 'superpixels' (h, w) int32 and, with labels, 'labels' (h, w) at the model
  size; 'superpixels_orig' (H, W) and 'labels_orig' (H, W) at the original size. test_image_size <= 0 keeps
  the original size (the original's switch).
  """
  image = np.asarray(image_uint8)
  superpixels = seeds_superpixels(image, spml_seeds_config(num_superpixels), max_segments=max_segments)
  height, width = image.shape[:2]
  if labels is not None and np.shape(labels) != (height, width):
    raise ValueError(f'label map {np.shape(labels)} does not match its image {(height, width)}')
  out_hw = resized_size(height, width, test_image_size) if test_image_size > 0 else (height, width)
  result = {'image': resize(normalise(image), out_hw, nearest=False),
            'superpixels': resize(superpixels.astype(np.int32), out_hw, nearest=True),
            'superpixels_orig': superpixels.astype(np.int32)}
  if labels is not None:
    result['labels_orig'] = np.asarray(labels)
    result['labels'] = resize(np.asarray(labels), out_hw, nearest=True)
  return result


def restore_prediction(prediction: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
  """The per-pixel prediction at the model size -> the original size (INTER_NEAREST, as the original)."""
  return resize(np.asarray(prediction, np.uint8), original_hw, nearest=True)


def train_crop_superpixels(crop, num_superpixels: int = 1024, scale: float = 0.5,
                           max_segments: Optional[int] = None) -> np.ndarray:
  """SPML's training superpixels (``SPixListDataset._generate_superpixels``, slic_scale_factor 0.5).

  crop: the (H, W, 3) crop as uint8 RGB, or as float in [0, 1] (what the augmentation produces: the rescaled,
  mean-padded crop before normalisation). The [0, 1] crop goes back to uint8 with ``astype`` (truncation), is
  resized with INTER_LINEAR and ``dsize=(int(H * scale), int(W * scale))`` -- OpenCV reads dsize as (width,
  height), so the map is (int(W * scale), int(H * scale)): transposed in shape for a non-square crop, which the
  model then simply uses -- and SEEDS runs on its Lab image (5 bins, 15 iterations, no wrap). Returns int32 ids.
  """
  crop = np.asarray(crop)
  if crop.ndim != 3 or crop.shape[-1] != 3 or not (crop.dtype == np.uint8 or np.issubdtype(crop.dtype, np.floating)):
    raise ValueError(f'expected an (H, W, 3) crop, uint8 or float in [0, 1]; got {crop.dtype} {crop.shape}')
  height, width = crop.shape[:2]
  as_float = crop.astype(np.float32) / np.float32(255) if crop.dtype == np.uint8 else crop.astype(np.float32)
  image = (as_float * 255).astype(np.uint8)
  small = cv2.resize(image, (int(height * scale), int(width * scale)), interpolation=cv2.INTER_LINEAR)
  return seeds_superpixels(small, spml_seeds_config(num_superpixels), max_segments=max_segments).astype(np.int32)
