"""How many images per second one process turns into superpixels: the number the data pipeline has to beat."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from cast_jax.superpixels.compute import compute_superpixels
from cast_jax.superpixels.config import SuperpixelConfig, preset

# Method name -> the preset it is measured with (SEEDS: the pretraining recipe, the most common call).
_DEFAULT_PRESET = {'seeds': 'moco', 'slic': 'slic'}


def sample_images(image_size: int, num_images: int, seed: int = 0) -> np.ndarray:
  """(num_images, image_size, image_size, 3) uint8 random square crops of scikit-image's bundled photos.

  Natural images, because SEEDS and SLIC run longer on some content than on others; no download needed.
  """
  from skimage import data

  photos = [data.astronaut(), data.chelsea(), data.coffee()]
  rng = np.random.default_rng(seed)
  out = np.empty((num_images, image_size, image_size, 3), np.uint8)
  for i in range(num_images):
    photo = photos[i % len(photos)]
    side = int(rng.integers(min(photo.shape[:2]) // 2, min(photo.shape[:2]) + 1))
    top = int(rng.integers(0, photo.shape[0] - side + 1))
    left = int(rng.integers(0, photo.shape[1] - side + 1))
    crop = Image.fromarray(photo[top:top + side, left:left + side])
    out[i] = np.asarray(crop.resize((image_size, image_size), Image.BICUBIC))
  return out


def superpixel_throughput(method: str | SuperpixelConfig = 'seeds', image_size: int = 224, num_images: int = 32,
                          seed: int = 0) -> float:
  """Images per second of ``compute_superpixels`` in this process (one thread of Python; OpenCV's own
  threading left as configured).

  Args:
    method: 'seeds' (measured with the 'moco' preset), 'slic', any preset name, or a SuperpixelConfig.
    image_size: side of the square images.
    num_images: images timed, after one untimed warm-up call.
    seed: picks the crops (see ``sample_images``).
  """
  if isinstance(method, SuperpixelConfig):
    config = method
  else:
    config = preset(_DEFAULT_PRESET.get(method, method))
  images = sample_images(image_size, num_images, seed)
  compute_superpixels(images[0], config)  # warm-up: imports, OpenCV's first-call setup
  start = time.perf_counter()
  for image in images:
    compute_superpixels(image, config)
  return num_images / (time.perf_counter() - start)
