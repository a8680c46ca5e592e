"""One entry point for every method: ``compute_superpixels(image, config)`` and its batch form."""

from __future__ import annotations

import numpy as np

from cast_jax.superpixels.config import SuperpixelConfig, preset
from cast_jax.superpixels.contract import as_rgb_uint8
from cast_jax.superpixels.seeds import invert_uint8, seeds_superpixels
from cast_jax.superpixels.slic import slic_superpixels


def _jax_slic(image, config: SuperpixelConfig, max_segments: int | None = None) -> np.ndarray:
  # Imported on first use: the SEEDS and SLIC paths (and the data workers that run them) need no jax.
  from cast_jax.superpixels.jax_slic import jax_slic_superpixels  # pylint: disable=import-outside-toplevel

  return jax_slic_superpixels(image, config, max_segments)


_METHODS = {'seeds': seeds_superpixels, 'slic': slic_superpixels, 'jax_slic': _jax_slic}


def _wrapped(image, config: SuperpixelConfig):
  """``config.invert_uint8`` (the Segmenter's x255 wrap) for the methods that do not apply it themselves: SEEDS
  wraps inside ``seeds_superpixels``; SLIC and jax_slic would otherwise ignore the flag, so that the sliding window
  (which leaves the wrap to the superpixel function) would segment unwrapped windows where the train recipe
  (which wraps first) segments wrapped crops."""
  if config.invert_uint8 and config.method != 'seeds':
    return invert_uint8(as_rgb_uint8(image))
  return image


def resolve_config(config: SuperpixelConfig | str) -> SuperpixelConfig:
  """A SuperpixelConfig, given one or a preset name ('moco', 'deit', 'segmentation', 'slic', ...)."""
  return preset(config) if isinstance(config, str) else config


def compute_superpixels(image, config: SuperpixelConfig | str = 'moco',
                        max_segments: int | None = None) -> np.ndarray:
  """Superpixels of one image.

  Args:
    image: uint8 (H, W, 3) RGB; (H, W) gray and (H, W, 4) RGBA are converted, anything else is refused (see
      ``contract``).
    config: a SuperpixelConfig or a preset name.
    max_segments: largest id count allowed (the model's token slots); defaults to the requested count,
      ``config.segments_for(H, W)``.

  Returns:
    int32 (H, W) ids, dense from 0, at most ``max_segments`` of them.
  """
  config = resolve_config(config)
  return _METHODS[config.method](_wrapped(image, config), config, max_segments)


def compute_superpixels_batch(images, config: SuperpixelConfig | str = 'moco',
                              max_segments: int | None = None) -> np.ndarray:
  """``compute_superpixels`` of each of (B, H, W, 3) uint8 ``images``, stacked to int32 (B, H, W)."""
  config = resolve_config(config)
  if config.method == 'jax_slic':  # one jitted call for the whole batch
    from cast_jax.superpixels.jax_slic import jax_slic_superpixels_batch  # pylint: disable=import-outside-toplevel

    images = np.asarray(images)
    if config.invert_uint8 and images.dtype == np.uint8:  # other dtypes: the batch function says what is wrong
      images = invert_uint8(images)
    return jax_slic_superpixels_batch(images, config, max_segments)
  return np.stack([compute_superpixels(image, config, max_segments) for image in images])
