"""SEEDS superpixels through OpenCV-contrib (``cv2.ximgproc.createSuperpixelSEEDS``), as the original runs them.

Per image: optional uint8 inversion quirk, then RGB -> OpenCV 8-bit Lab, then SEEDS on the Lab image, then the
ids are closed up with ``relabel_dense`` (a no-op whenever every initial block survives, which is always the case
at the recipes' sizes: 196 ids at 224x224, 1024 at 512x512, 900 at 480x480, 64 at 128x128).

SEEDS is deterministic (no RNG). Its ids start as a grid of blocks numbered in raster order, and only the
boundaries move, so the number of ids is fixed by the image size and the requested count: ``seeds_grid``
reproduces OpenCV's arithmetic for it. That arithmetic also decides whether OpenCV survives the call: when
the grid degenerates (more segments than the image has room for, or a very thin image) OpenCV 5.0 segfaults or
loops forever instead of raising, so ``seeds_superpixels`` refuses those sizes with a ValueError first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

from cast_jax.superpixels.config import SuperpixelConfig
from cast_jax.superpixels.contract import as_rgb_uint8, relabel_dense, validate_superpixels


class SeedsGrid(NamedTuple):
  """The top-level block grid OpenCV's SEEDS starts from: ``rows * cols`` initial ids, row-major."""
  rows: int
  cols: int
  levels: int

  @property
  def count(self) -> int:
    return self.rows * self.cols


def seeds_grid(height: int, width: int, num_segments: int, num_levels: int = 1) -> SeedsGrid | None:
  """OpenCV's ``SuperpixelSEEDSImpl::initialize`` grid arithmetic (float32 where the C++ uses float).

  Returns None where OpenCV would crash or hang (fewer than two block levels, or an empty grid).
  """
  f32 = np.float32
  num_segments = max(num_segments, 10)  # OpenCV raises smaller requests to 10
  num_levels = max(num_levels, 2)  # ... and num_levels to 2
  rows = int(np.sqrt(f32(num_segments) * f32(height) / f32(width)))
  cols = rows * width // height
  if rows < 1 or cols < 1:
    return None
  levels = num_levels + 1
  while True:  # OpenCV drops levels until the finest blocks are at least one pixel wide
    levels -= 1
    if levels < 2:
      return None
    block_w = f32(width) / f32(cols) / f32(1 << (levels - 1))
    block_h = f32(height) / f32(rows) / f32(1 << (levels - 1))
    if block_w >= 1 and block_h >= 1:
      break
  grid_cols = width // math.ceil(block_w)
  grid_rows = height // math.ceil(block_h)
  for _ in range(levels - 1):  # each coarser level merges 2x2 blocks
    grid_cols //= 2
    grid_rows //= 2
  if grid_rows < 1 or grid_cols < 1:
    return None
  return SeedsGrid(grid_rows, grid_cols, levels)


def invert_uint8(image: np.ndarray) -> np.ndarray:
  """x -> (-x) mod 256: what ``(image * 255).astype(np.uint8)`` does to an image that is already uint8."""
  return (np.uint16(256) - image).astype(np.uint8)  # 0 -> 256 -> 0 after the cast


def seeds_superpixels(image, config: SuperpixelConfig, max_segments: int | None = None) -> np.ndarray:
  """SEEDS superpixels of one image.

  Args:
    image: uint8 (H, W, 3) RGB (see ``contract.as_rgb_uint8`` for what else is accepted).
    config: a SuperpixelConfig with method 'seeds'.
    max_segments: largest id count allowed; defaults to ``config.segments_for(H, W)``.

  Returns:
    int32 (H, W) ids, dense from 0.
  """
  image = as_rgb_uint8(image)
  height, width = image.shape[:2]
  requested = config.segments_for(height, width)
  max_segments = requested if max_segments is None else max_segments
  grid = seeds_grid(height, width, requested, config.num_levels)
  if grid is None:
    raise ValueError(f'SEEDS cannot make {requested} superpixels of a {height}x{width} image (OpenCV would crash): '
                     'request fewer segments or use a larger image')
  if grid.count > max_segments:
    raise ValueError(f'SEEDS makes {grid.count} superpixels of a {height}x{width} image for num_segments='
                     f'{requested} (OpenCV raises requests below 10 to 10), more than max_segments={max_segments}')
  if config.invert_uint8:
    image = invert_uint8(image)
  if config.lab:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
  seeds = cv2.ximgproc.createSuperpixelSEEDS(width, height, 3, num_superpixels=int(requested),
                                             num_levels=int(config.num_levels), prior=int(config.prior),
                                             histogram_bins=int(config.histogram_bins),
                                             double_step=bool(config.double_step))
  seeds.iterate(image, num_iterations=int(config.iterations))
  labels = relabel_dense(seeds.getLabels())
  validate_superpixels(labels, max_segments)
  return labels
