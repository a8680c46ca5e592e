"""Pictures of segmentations: colourised id maps, boundaries, mean colours, and hierarchy panels.

    panel = hierarchy_panel(image, superpixels, hierarchy)    # uint8 (2H + GAP, (L+2)W + (L+1)GAP, 3)
    save_png(panel, 'panel.png')

Every function takes numpy (or JAX) arrays: images uint8 (H, W, 3), id maps integer (H, W), and returns uint8
numpy. Only numpy and PIL are used, so this works wherever the data pipeline does.
"""

from __future__ import annotations

import colorsys
import os
import pathlib
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# White pixels between the tiles of a panel, and between the panels of a batch.
GAP = 2
# Height of the band above the top row that holds the column titles (PIL's default font is ~11 px tall).
TITLE_HEIGHT = 14
# Inverse of the golden ratio: hues i * PHI_INV (mod 1) never repeat, and consecutive ids land ~0.38 of the
# colour wheel apart (three-distance theorem: every prefix of the sequence spreads evenly over the wheel).
_PHI_INV = (5 ** 0.5 - 1) / 2


def _make_palette() -> np.ndarray:
  """(256, 3) uint8: golden-ratio hues; saturation cycles over 6 levels in [0.55, 1], brightness over 7 in
  [0.65, 1].

  Hue alone nearly repeats after Fibonacci steps (144 * PHI_INV is 0.003 from an integer), so the two
  cycles (coprime lengths, so they repeat together only every 42 ids, and none of the Fibonacci steps
  21 ... 233 is a multiple of 42) separate those ids. Result: all 256 colours distinct and >= 22 apart in
  RGB, consecutive ids >= 139 apart; brightness >= 0.65 keeps every entry far from black, the colour of
  negative ids.
  """
  saturations = np.linspace(0.55, 1.0, 6)
  values = np.linspace(0.65, 1.0, 7)
  rows = [colorsys.hsv_to_rgb((i * _PHI_INV) % 1.0, saturations[i % 6], values[i % 7]) for i in range(256)]
  return np.round(np.array(rows) * 255).astype(np.uint8)


PALETTE = _make_palette()


def _describe(x: np.ndarray) -> str:
  return f'{x.dtype} {tuple(x.shape)}'


def check_image(image, name: str = 'image') -> np.ndarray:
  """``image`` as a uint8 (H, W, 3) array, or a ValueError saying what it is instead."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'{name} must be uint8 (H, W, 3); got {_describe(image)}')
  return image


def _check_ids(ids, name: str = 'ids', shape: Optional[tuple] = None, layout: str = '(H, W)') -> np.ndarray:
  """``ids`` as an integer array of ``len(layout)`` dims, whose trailing (H, W) equals ``shape`` if given."""
  ids = np.asarray(ids)
  ndim = layout.count(',') + 1
  if ids.dtype.kind not in 'iu' or ids.ndim != ndim:
    raise ValueError(f'{name} must be an integer array {layout}; got {_describe(ids)}')
  if shape is not None and ids.shape[-2:] != tuple(shape):
    raise ValueError(f"{name} {tuple(ids.shape)} must match the image's (H, W) = {tuple(shape)}")
  return ids


def colorize(ids) -> np.ndarray:
  """(H, W) integer ids -> (H, W, 3) uint8: id i gets PALETTE[i % 256]; negative ids are black."""
  ids = _check_ids(ids)
  rgb = PALETTE[np.mod(ids, 256)]
  rgb[ids < 0] = 0
  return rgb


def boundaries(ids) -> np.ndarray:
  """(H, W) ids -> (H, W) bool, True where the right or the bottom neighbour has another id.

  One pixel marks each edge between two segments (the one left of / above it), so drawn boundaries are
  one pixel thick. The last column and row have no right / bottom neighbour beyond the image edge.
  """
  ids = _check_ids(ids)
  edge = np.zeros(ids.shape, bool)
  edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
  edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
  return edge


def overlay_boundaries(image, ids, color: Sequence[int] = (255, 255, 0)) -> np.ndarray:
  """A copy of ``image`` (uint8 (H, W, 3)) with the ``boundaries`` of ``ids`` (H, W) painted ``color``."""
  image = check_image(image)
  ids = _check_ids(ids, shape=image.shape[:2])
  color = np.asarray(color)
  if color.shape != (3,) or np.any(color < 0) or np.any(color > 255):
    raise ValueError(f'color must be 3 values in [0, 255]; got {color.tolist()}')
  out = image.copy()
  out[boundaries(ids)] = color.astype(np.uint8)
  return out


def mean_colour(image, ids) -> np.ndarray:
  """Every segment of ``ids`` (H, W) filled with its mean colour in ``image`` (uint8 (H, W, 3)), rounded."""
  image = check_image(image)
  ids = _check_ids(ids, shape=image.shape[:2])
  # Dense segment indices first: ids may be negative or sparse (e.g. one id in the millions).
  _, dense = np.unique(ids, return_inverse=True)
  dense = dense.reshape(-1)
  counts = np.bincount(dense)
  pixels = image.reshape(-1, 3).astype(np.float64)
  sums = np.stack([np.bincount(dense, weights=pixels[:, c], minlength=counts.size) for c in range(3)], -1)
  means = np.round(sums / counts[:, None]).astype(np.uint8)  # (segments, 3)
  return means[dense].reshape(image.shape)


def _legend_tile(height: int, width: int, superpixels: np.ndarray, hierarchy: np.ndarray) -> np.ndarray:
  """A white (H, W, 3) tile listing how many segments the superpixels and each level have (clipped if small)."""
  lines = [f'sp: {np.unique(superpixels).size}']
  lines += [f'L{level + 1}: {np.unique(ids).size}' for level, ids in enumerate(hierarchy)]
  tile = Image.new('RGB', (width, height), (255, 255, 255))
  ImageDraw.Draw(tile).multiline_text((2, 1), '\n'.join(lines), fill=(0, 0, 0), font=ImageFont.load_default(),
                                      spacing=1)
  return np.asarray(tile)


def _title_band(titles: Sequence[str], tile_width: int) -> np.ndarray:
  """(TITLE_HEIGHT, W', 3) white band with each title above its column, clipped to the column."""
  columns = []
  for title in titles:
    cell = Image.new('RGB', (tile_width, TITLE_HEIGHT), (255, 255, 255))
    ImageDraw.Draw(cell).text((1, 0), str(title), fill=(0, 0, 0), font=ImageFont.load_default())
    columns.append(np.asarray(cell))
  return _join(columns, axis=1)


def _join(tiles: Sequence[np.ndarray], axis: int) -> np.ndarray:
  """Concatenate uint8 tiles along ``axis`` (0: rows, 1: columns) with GAP white pixels between them."""
  shape = list(tiles[0].shape)
  shape[axis] = GAP
  gap = np.full(shape, 255, np.uint8)
  parts = [tiles[0]]
  for tile in tiles[1:]:
    parts += [gap, tile]
  return np.concatenate(parts, axis=axis)


def hierarchy_panel(image, superpixels, hierarchy, titles: Optional[Sequence[str]] = None) -> np.ndarray:
  """One picture of an image's superpixels and segmentation hierarchy.

  Columns, left to right (L + 2 of them, each H x W):
    top row:    image | superpixel mean colours + boundaries | level 1 boundaries over the image | ...
    bottom row: legend (segment counts) | colourised superpixels | colourised level 1 | ...

  Args:
    image: uint8 (H, W, 3).
    superpixels: integer (H, W) ids.
    hierarchy: integer (L, H, W) pixel ids of each level, L >= 0, e.g. ``models.pixel_hierarchy``'s output.
    titles: None, or L + 2 strings drawn above the columns.

  Returns:
    uint8 (H', W', 3), tiles separated by GAP white pixels:
      H' = 2 H + GAP (+ TITLE_HEIGHT with titles), W' = (L + 2) W + (L + 1) GAP.
  """
  image = check_image(image)
  height, width = image.shape[:2]
  superpixels = _check_ids(superpixels, 'superpixels', image.shape[:2])
  hierarchy = _check_ids(hierarchy, 'hierarchy', image.shape[:2], layout='(L, H, W)')
  if titles is not None and len(titles) != hierarchy.shape[0] + 2:
    raise ValueError(f'titles must hold L + 2 = {hierarchy.shape[0] + 2} strings; got {len(titles)}')

  top = [image, overlay_boundaries(mean_colour(image, superpixels), superpixels)]
  top += [overlay_boundaries(image, level) for level in hierarchy]
  bottom = [_legend_tile(height, width, superpixels, hierarchy), colorize(superpixels)]
  bottom += [colorize(level) for level in hierarchy]
  panel = _join([_join(top, axis=1), _join(bottom, axis=1)], axis=0)
  if titles is not None:
    panel = np.concatenate([_title_band(titles, width), panel], axis=0)
  return panel


def batch_panel(images, superpixels, hierarchies, max_images: int = 4) -> np.ndarray:
  """``hierarchy_panel`` of the first ``max_images`` images of a batch, stacked top to bottom.

  Args:
    images: uint8 (B, H, W, 3).
    superpixels: integer (B, H, W).
    hierarchies: integer (B, L, H, W).
    max_images: at most this many panels, n = min(B, max_images) >= 1.

  Returns:
    uint8 (n (2 H + GAP) + (n - 1) GAP, (L + 2) W + (L + 1) GAP, 3).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must be uint8 (B, H, W, 3); got {_describe(images)}')
  superpixels = _check_ids(superpixels, 'superpixels', images.shape[1:3], layout='(B, H, W)')
  hierarchies = _check_ids(hierarchies, 'hierarchies', images.shape[1:3], layout='(B, L, H, W)')
  batch = images.shape[0]
  if superpixels.shape[0] != batch or hierarchies.shape[0] != batch:
    raise ValueError(f'batch sizes differ: images {batch}, superpixels {superpixels.shape[0]}, '
                     f'hierarchies {hierarchies.shape[0]}')
  if batch == 0 or max_images < 1:
    raise ValueError(f'need at least one image to draw; got B = {batch}, max_images = {max_images}')
  count = min(batch, max_images)
  return _join([hierarchy_panel(images[i], superpixels[i], hierarchies[i]) for i in range(count)], axis=0)


def save_png(array, path: str | os.PathLike) -> pathlib.Path:
  """Write uint8 (H, W, 3) RGB or (H, W) grey ``array`` to ``path`` as PNG (parent folders created)."""
  array = np.asarray(array)
  if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
    raise ValueError(f'array must be uint8 (H, W, 3) or (H, W); got {_describe(array)}')
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, format='PNG')
  return path


def tile_grid(rows: Sequence[Sequence[np.ndarray]], titles: Optional[Sequence[str]] = None) -> np.ndarray:
  """uint8 (H, W, 3) tiles, all of one size, laid out as ``rows`` (a list of equally long lists of tiles), with
  GAP white pixels between them and, optionally, one title per column above the grid."""
  if not rows or not rows[0]:
    raise ValueError('tile_grid needs at least one row with one tile')
  if any(len(row) != len(rows[0]) for row in rows):
    raise ValueError(f'every row must hold {len(rows[0])} tiles; got {[len(row) for row in rows]}')
  tiles = [[check_image(tile, 'tile') for tile in row] for row in rows]
  if len({tile.shape for row in tiles for tile in row}) != 1:
    raise ValueError('all tiles must have one shape')
  grid = _join([_join(row, axis=1) for row in tiles], axis=0)
  if titles is not None:
    if len(titles) != len(rows[0]):
      raise ValueError(f'titles must hold one string per column ({len(rows[0])}); got {len(titles)}')
    grid = np.concatenate([_title_band(titles, tiles[0][0].shape[1]), grid], axis=0)
  return grid
