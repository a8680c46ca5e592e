"""SLIC superpixels through scikit-image, the alternative to SEEDS selected by ``method='slic'``.

As in the original's (unused) ``datasets_slic.py``: ``slic(image, n_segments, compactness, convert2lab=True,
start_label=0)`` on the RGB image scaled to [0, 1], with the compactness tripled while fewer than half the
requested segments come out (bounded here by ``config.max_retries``; a noise image stays at one segment until the
compactness reaches about 100).

Unlike SEEDS, SLIC's count is not fixed: it can come out *above* the request (1369 for 1366 requested at
512x683), so while it exceeds ``max_segments`` the request is lowered in proportion and SLIC rerun. Ids are then
closed up with ``relabel_dense`` (sorted order; SLIC's own ids are already dense from 0 when connectivity is
enforced, the default).
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import slic

from cast_jax.superpixels.config import SuperpixelConfig
from cast_jax.superpixels.contract import as_rgb_uint8, relabel_dense, validate_superpixels


def _slic(image: np.ndarray, num_segments: int, compactness: float, sigma: float) -> np.ndarray:
  return slic(image, n_segments=num_segments, compactness=compactness, sigma=sigma, convert2lab=True,
              start_label=0, channel_axis=-1)


def slic_superpixels(image, config: SuperpixelConfig, max_segments: int | None = None) -> np.ndarray:
  """SLIC superpixels of one image.

  Args:
    image: uint8 (H, W, 3) RGB (see ``contract.as_rgb_uint8`` for what else is accepted).
    config: a SuperpixelConfig with method 'slic'.
    max_segments: largest id count allowed; defaults to ``config.segments_for(H, W)``.

  Returns:
    int32 (H, W) ids, dense from 0.
  """
  image = as_rgb_uint8(image)
  requested = config.segments_for(*image.shape[:2])
  max_segments = requested if max_segments is None else max_segments
  if max_segments < 1:
    raise ValueError(f'max_segments must be >= 1, got {max_segments}')
  # Same scaling as the original, which passed ToTensor's [0, 1] floats (k/255 exactly).
  scaled = image.astype(np.float32) / np.float32(255)

  compactness = config.compactness
  labels = _slic(scaled, requested, compactness, config.sigma)
  for _ in range(config.max_retries):
    if labels.max() + 1 >= config.min_fraction * requested:
      break
    compactness *= 3  # more weight on space: closer to a grid, fewer merged segments
    labels = _slic(scaled, requested, compactness, config.sigma)

  count = int(labels.max()) + 1
  target = requested
  while count > max_segments:
    # Strictly decreasing request, so this ends (one requested segment gives one segment).
    target = max(1, min(target - 1, target * max_segments // count))
    labels = _slic(scaled, target, compactness, config.sigma)
    count = int(labels.max()) + 1

  labels = relabel_dense(labels)
  validate_superpixels(labels, max_segments)
  return labels
