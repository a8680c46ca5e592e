"""SLIC superpixels in JAX: jitted, batched, static shapes, deterministic, on CPU, GPU or TPU.

    from cast_jax.superpixels.jax_slic import slic_batch, slic_from_normalized
    labels = slic_batch(images_uint8, num_segments=196)          # (B, H, W, 3) -> int32 (B, H, W)
    labels = slic_from_normalized(view, num_segments=196)        # inside a train step: ImageNet-normalised views

The algorithm is SLIC's k-means in (L*, a*, b*, y, x) (Achanta et al. 2012) organised as gSLICr does it on a GPU:

1. RGB -> CIE Lab (sRGB, D65, 2 degree observer: the conversion ``skimage.color.rgb2lab`` makes).
2. ``rows x cols`` centres start at the centres of a regular grid of cells (``block_grid``; rows * cols never
   exceeds the requested count, so never ``max_segments``).
3. A fixed number of iterations of: every pixel joins the nearest of the 3x3 centres of the cells around *its
   own* grid cell, by ``|dLab|^2 + (compactness / S)^2 |dxy|^2`` (S the cell side); every centre moves to the
   mean of its pixels (an emptied centre stays where it was). Each pixel looks at 9 centres, so an iteration
   costs O(H W), not O(H W K).
4. A final assignment, the connectivity pass below, then the ids still present are closed up to 0..n-1 in grid
   (raster) order, the order ``contract.relabel_dense`` keeps.

Determinism: no scatter-adds of floats (their order is not fixed on GPUs). The image is laid out as blocks, one
per grid cell, so the per-centre sums of step 3 are plain reductions over each block's pixels (once per offset
of the 3x3 neighbourhood), and the 9 candidate centres of a pixel are slices of the padded centre array; the
only scatters are integer ones (add, max, min: the connectivity pass and the marking of present ids), whose
results do not depend on order.

Connectivity (``connectivity=True``, the default): a k-means cluster may come out as more than one connected
piece (a thin stripe cut off by a neighbour, a few pixels of one colour inside another). ``enforce_connectivity``
keeps each id's largest piece and lets the others join touching superpixels, in a fixed number of rounds (static
shapes); unlike scikit-image's pass it does not also merge pieces below a minimum size. Ids meet the contract
(int32, dense from 0, at most ``max_segments``) either way; a disconnected id is one token pooled from two
places. ``quality`` measures both against PartWorld's parts.

Two ways to use it:

* On the host, like SEEDS: ``data.superpixels='jax_slic'`` (preset ``jax_slic``; ``superpixel_overrides`` as for
  the others) makes ``compute_superpixels`` call the jitted function on each view, in the recipe's process.
* On the device, inside the jitted train step and evaluation forward: ``data.superpixels_on_device = True`` with
  ``data.superpixels = 'jax_slic'`` (``cast_jax.train.device_superpixels``: the recipes then only decode and
  augment, shipping uint8 pixels, and ``slic_batch`` runs on them in the step). ``device_superpixel_fn`` does the
  same from normalised views.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# sRGB (linear) -> XYZ for D65, and the D65 white point with the 2 degree observer (skimage's defaults).
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], np.float32)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

DEFAULT_ITERATIONS = 10  # scikit-image's max_num_iter
DEFAULT_COMPACTNESS = 10.0  # scikit-image's default, and the original's SLIC setting


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
  """CIE Lab of RGB in [0, 1], (..., 3) float -> (..., 3) float32 (L* in 0..100, a*, b* about -128..127)."""
  rgb = jnp.asarray(rgb, jnp.float32)
  linear = jnp.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
  xyz = jnp.einsum('...c,xc->...x', linear, jnp.asarray(_RGB_TO_XYZ), precision=jax.lax.Precision.HIGHEST)
  xyz = xyz / jnp.asarray(_D65_WHITE)
  f = jnp.where(xyz > 0.008856, jnp.cbrt(jnp.maximum(xyz, 0.008856)), 7.787 * xyz + 16.0 / 116.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def block_grid(height: int, width: int, num_segments: int) -> tuple[int, int, int, int]:
  """(rows, cols, cell_h, cell_w) of the initial centre grid: about ``num_segments`` square-ish cells of
  ``cell_h x cell_w`` pixels (the last row / column of cells may be cut short by the image's edge), and
  rows * cols <= num_segments.

  196 at 224x224 -> (14, 14, 16, 16); 64 at 64x64 -> (8, 8, 8, 8); 1 -> (1, 1, H, W).
  """
  if num_segments < 1 or height < 1 or width < 1:
    raise ValueError(f'jax_slic needs num_segments >= 1 and a non-empty image, got {num_segments} segments for '
                     f'{height}x{width}')
  rows = int(min(height, num_segments, max(1, round(math.sqrt(num_segments * height / width)))))
  cols = int(min(width, max(1, num_segments // rows)))
  # Equal cells of ceil(side / count) pixels; the count is then recomputed so that no cell is empty.
  cell_h, cell_w = -(-height // rows), -(-width // cols)
  return -(-height // cell_h), -(-width // cell_w), cell_h, cell_w


def _to_unit_rgb(images: jax.Array) -> jax.Array:
  """uint8 0..255 or float [0, 1] (B, H, W, 3) -> float32 [0, 1]."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'jax_slic takes uint8 (0..255) or float ([0, 1]) images, got dtype {images.dtype}: cast '
                     'integer images to uint8 first')
  return jnp.clip(images.astype(jnp.float32), 0.0, 1.0)


_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


@functools.partial(jax.jit, static_argnames=('num_segments', 'iterations', 'compactness', 'connectivity'))
def slic_batch(images: jax.Array, num_segments: int = 196, iterations: int = DEFAULT_ITERATIONS,
               compactness: float = DEFAULT_COMPACTNESS, connectivity: bool = True) -> jax.Array:
  """SLIC superpixels of a batch (see the module docstring).

  Args:
    images: (B, H, W, 3) RGB, uint8 0..255 or float in [0, 1] (clipped).
    num_segments: requested count; the result has at most ``rows * cols <= num_segments`` ids per image.
    iterations: k-means iterations (fixed: the cost does not depend on the image).
    compactness: colour/space trade-off, as scikit-image's (Lab units per cell side).
    connectivity: absorb each id's pieces other than its largest into touching superpixels
      (``enforce_connectivity``).

  Returns:
    int32 (B, H, W): per image, ids dense from 0 in raster order of their starting cells.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'jax_slic takes a (B, H, W, 3) RGB batch, got shape {images.shape}: add a batch axis with '
                     'images[None] for one image')
  batch, height, width, _ = images.shape
  rows, cols, cell_h, cell_w = block_grid(height, width, num_segments)
  lab = rgb_to_lab(_to_unit_rgb(images))  # (B, H, W, 3)

  # Block layout, channels first (B, C, rows, cell_h, cols, cell_w): a pixel's own grid cell is its block, so
  # the 3x3 neighbouring centres are slices of a padded centre array (no gathers), per-cell sums are reductions
  # over axes 3 and 5 (fixed order: deterministic), and every elementwise step runs along cell_w in memory (a
  # channels-last layout, 5 or 6 wide innermost, ran several times slower on CPU). Padding pixels (bottom /
  # right) carry weight 0 in every channel, so they add nothing to the centres' sums.
  pad_h, pad_w = rows * cell_h - height, cols * cell_w - width
  ys = jnp.arange(rows * cell_h, dtype=jnp.float32)
  xs = jnp.arange(cols * cell_w, dtype=jnp.float32)
  weight = ((ys < height)[:, None] & (xs < width)[None, :]).astype(jnp.float32)
  plane = (batch, 1, rows * cell_h, cols * cell_w)
  features = jnp.concatenate([
      jnp.pad(jnp.moveaxis(lab, -1, 1), ((0, 0), (0, 0), (0, pad_h), (0, pad_w))),
      jnp.broadcast_to(ys[:, None], plane), jnp.broadcast_to(xs[None, :], plane), jnp.broadcast_to(weight, plane)],
      axis=1) * weight
  features = features.reshape(batch, 6, rows, cell_h, cols, cell_w)

  step = math.sqrt(height * width / (rows * cols))
  scale = np.array([1.0, 1.0, 1.0, compactness / step, compactness / step], np.float32)
  scaled = features[:, :5] * jnp.asarray(scale)[None, :, None, None, None, None]

  # Starting centres: each cell's mean (its middle, its mean colour), (B, 5, rows, cols).
  sums = features.sum(axis=(3, 5))  # (B, 6, rows, cols)
  centres = sums[:, :5] / jnp.maximum(sums[:, 5:], 1.0)

  def assign(centres):
    """Index 0..8 into _OFFSETS of each pixel's nearest neighbouring centre: (B, rows, cell_h, cols, cell_w)."""
    padded = jnp.pad(centres * jnp.asarray(scale)[None, :, None, None], ((0, 0), (0, 0), (1, 1), (1, 1)),
                     constant_values=jnp.inf)
    best = jnp.full(scaled.shape[:1] + scaled.shape[2:], jnp.inf, jnp.float32)
    choice = jnp.zeros(best.shape, jnp.int32)
    for index, (dy, dx) in enumerate(_OFFSETS):
      centre = padded[:, :, 1 + dy:1 + dy + rows, 1 + dx:1 + dx + cols][:, :, :, None, :, None]
      dist = sum((scaled[:, c] - centre[:, c]) ** 2 for c in range(5))  # inf outside the grid
      better = dist < best  # strict: ties keep the earlier offset, a fixed rule
      best = jnp.where(better, dist, best)
      choice = jnp.where(better, index, choice)
    return choice

  def update(centres, _):
    choice = assign(centres)
    sums = jnp.zeros((batch, 6, rows, cols), jnp.float32)
    for index, (dy, dx) in enumerate(_OFFSETS):
      # Pixels of cell (i, j) that chose offset (dy, dx) belong to centre (i + dy, j + dx): sum them per
      # cell, then shift the cell sums onto their centres (pad, then slice).
      part = jnp.where((choice == index)[:, None], features, 0.0).sum(axis=(3, 5))
      padded = jnp.pad(part, ((0, 0), (0, 0), (1, 1), (1, 1)))
      sums = sums + padded[:, :, 1 - dy:1 - dy + rows, 1 - dx:1 - dx + cols]
    count = sums[:, 5:]
    # An emptied centre stays where it was.
    return jnp.where(count > 0, sums[:, :5] / jnp.maximum(count, 1.0), centres), None

  centres, _ = jax.lax.scan(update, centres, None, length=iterations)
  choice = assign(centres)
  offsets = jnp.asarray(_OFFSETS, jnp.int32)  # (9, 2)
  label_y = jnp.arange(rows, dtype=jnp.int32)[None, :, None, None, None] + offsets[choice, 0]
  label_x = jnp.arange(cols, dtype=jnp.int32)[None, None, None, :, None] + offsets[choice, 1]
  labels = (label_y * cols + label_x).reshape(batch, rows * cell_h, cols * cell_w)[:, :height, :width]
  if connectivity:
    # A superpixel's pixels lie in the 3x3 cells around its centre, so its pieces are a few cell sides long; with
    # a pointer jump per round, one cell side per axis was enough on photos (8 rounds at 224 px left ~0.5% extra
    # pieces, 16 none).
    reach = cell_h + cell_w
    # A pixel of a cut-off piece joins the kept neighbour nearest to it in Lab, so that a piece cut off along a
    # colour edge joins the side of the edge it resembles (neighbours' own colours: no gathers, which are slow on
    # CPU).
    labels = enforce_connectivity(labels, rows * cols, label_iterations=reach, absorb_iterations=reach,
                                  pixel_features=lab)
  return relabel_present(labels, rows * cols)


def _neighbours(values: jax.Array, fill) -> list[jax.Array]:
  """The up, left, down and right 4-neighbour of every pixel of (B, H, W, ...) ``values`` (``fill`` off the
  image)."""
  padded = jnp.pad(values, ((0, 0), (1, 1), (1, 1)) + ((0, 0),) * (values.ndim - 3), constant_values=fill)
  height, width = values.shape[1:3]
  return [padded[:, :height, 1:width + 1], padded[:, 1:height + 1, :width],
          padded[:, 2:, 1:width + 1], padded[:, 1:height + 1, 2:]]


def enforce_connectivity(labels: jax.Array, num_ids: int, label_iterations: int, absorb_iterations: int,
                         pixel_features: jax.Array | None = None) -> jax.Array:
  """Each id keeps its largest 4-connected piece; its other pieces join touching superpixels (jittable).

  1. Connected pieces: every pixel points at the smallest pixel index it has reached through same-id
     neighbours (min-propagation, then a pointer jump per round, ``label_iterations`` rounds).
  2. Piece sizes by an integer scatter-add; each id keeps its largest piece (ties: smallest root).
  3. ``absorb_iterations`` rounds in which a pixel of a dropped piece takes the id of a kept 4-neighbour and
     becomes kept: the id of the kept neighbour whose ``pixel_features`` are nearest the pixel's when given, else
     of the first kept one of up, left, down, right (ties go the same way). A pixel joins its new id through a
     kept neighbour of that id, so kept regions stay connected.

  Integer scatters only (add, max, min), so the result does not depend on their order. Pieces that a bounded
  number of rounds cannot finish (far longer than a superpixel) keep their id: connectivity is then not
  complete, and ``quality.fragments`` shows what is left.

  Args:
    labels: (B, H, W) int32 ids in 0..num_ids-1.
    pixel_features: optional (B, H, W, C) float features of each pixel (jax_slic: Lab).
  Returns:
    (B, H, W) int32 ids in 0..num_ids-1 (not closed up: ``relabel_present`` does that).
  """
  batch, height, width = labels.shape
  count = height * width
  index = jnp.broadcast_to(jnp.arange(count, dtype=jnp.int32).reshape(1, height, width), labels.shape)
  label_nbs = _neighbours(labels, -1)

  def propagate(root, _):
    for label_nb, root_nb in zip(label_nbs, _neighbours(root, count)):
      root = jnp.where(label_nb == labels, jnp.minimum(root, root_nb), root)
    flat = root.reshape(batch, count)
    return jnp.take_along_axis(flat, flat, axis=1).reshape(root.shape), None  # pointer jump

  root, _ = jax.lax.scan(propagate, index, None, length=label_iterations)
  offset = (jnp.arange(batch, dtype=jnp.int32) * count)[:, None, None]
  root_flat = (root + offset).ravel()
  size = jnp.zeros(batch * count, jnp.int32).at[root_flat].add(1)[root_flat]
  label_flat = (labels + (jnp.arange(batch, dtype=jnp.int32) * num_ids)[:, None, None]).ravel()
  largest = jnp.zeros(batch * num_ids, jnp.int32).at[label_flat].max(size)[label_flat]
  candidate = jnp.where(size == largest, root.ravel(), count)
  keep_root = jnp.full(batch * num_ids, count, jnp.int32).at[label_flat].min(candidate)[label_flat]
  kept = (root.ravel() == keep_root).reshape(labels.shape)

  if pixel_features is None:
    costs = [jnp.zeros(labels.shape, jnp.float32)] * 4
  else:  # fixed over the rounds: a pixel's colour distance to each of its neighbours
    costs = [jnp.sum((pixel_features - nb) ** 2, -1) for nb in _neighbours(pixel_features, 0.0)]

  def absorb(state, _):
    labels, kept = state
    best = jnp.full(labels.shape, jnp.inf, jnp.float32)
    new_labels = labels
    for label_nb, kept_nb, cost in zip(_neighbours(labels, 0), _neighbours(kept, False), costs):
      take = ~kept & kept_nb & (cost < best)  # strict: ties keep the earlier neighbour
      new_labels = jnp.where(take, label_nb, new_labels)
      best = jnp.where(take, cost, best)
    return (new_labels, kept | jnp.isfinite(best)), None

  (labels, _), _ = jax.lax.scan(absorb, (labels, kept), None, length=absorb_iterations)
  return labels


def relabel_present(labels: jax.Array, num_ids: int) -> jax.Array:
  """(B, H, W) ids in 0..num_ids-1 -> int32 ids dense from 0, keeping their sorted order (jittable).

  The present ids are marked by an integer scatter-max (order-independent), then an id's new value is the
  number of present ids below it.
  """
  batch = labels.shape[0]
  flat = labels.reshape(batch, -1)
  present = jnp.zeros((batch, num_ids), jnp.int32).at[jnp.arange(batch)[:, None], flat].max(1)
  new_id = jnp.cumsum(present, axis=1) - 1
  return jnp.take_along_axis(new_id, flat, axis=1).reshape(labels.shape).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('num_segments', 'iterations', 'compactness', 'connectivity'))
def slic_from_normalized(images: jax.Array, num_segments: int = 196, iterations: int = DEFAULT_ITERATIONS,
                         compactness: float = DEFAULT_COMPACTNESS, connectivity: bool = True) -> jax.Array:
  """``slic_batch`` of ImageNet-normalised views (the recipes' ``augment.normalize`` output), for use inside a
  jitted train step: the host then only decodes and augments, and ships no superpixel maps.

  Args:
    images: float (B, H, W, 3), ``(rgb / 255 - mean) / std``.

  Returns:
    int32 (B, H, W) superpixel ids (see ``slic_batch``).
  """
  rgb = images.astype(jnp.float32) * jnp.asarray(_IMAGENET_STD) + jnp.asarray(_IMAGENET_MEAN)
  return slic_batch(rgb, num_segments=num_segments, iterations=iterations, compactness=compactness,
                    connectivity=connectivity)


def _checked_request(height: int, width: int, config, max_segments: int | None) -> int:
  requested = config.segments_for(height, width)
  max_segments = requested if max_segments is None else max_segments
  if max_segments < 1:
    raise ValueError(f'max_segments must be >= 1, got {max_segments}')
  # Never more ids than grid cells, and never more cells than asked for: min() keeps the contract.
  return min(requested, max_segments)


def jax_slic_superpixels(image, config, max_segments: int | None = None) -> np.ndarray:
  """``compute_superpixels``' entry for method 'jax_slic': uint8 (H, W, 3) -> int32 (H, W) on the host.

  Runs the jitted ``slic_batch`` on a batch of one (compiled once per image size and settings).
  """
  # Imported here: contract imports nothing of jax, and this module stays importable on its own.
  from cast_jax.superpixels import contract  # pylint: disable=import-outside-toplevel

  image = contract.as_rgb_uint8(image)
  count = _checked_request(*image.shape[:2], config, max_segments)
  labels = np.asarray(slic_batch(image[None], num_segments=count, iterations=config.iterations,
                                 compactness=float(config.compactness),
                                 connectivity=bool(config.enforce_connectivity)))[0]
  contract.validate_superpixels(labels, count)
  return labels


def jax_slic_superpixels_batch(images, config, max_segments: int | None = None) -> np.ndarray:
  """(B, H, W, 3) uint8 -> int32 (B, H, W), one jitted call for the batch."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'a superpixel batch is uint8 (B, H, W, 3), got {images.dtype} {images.shape}')
  count = _checked_request(*images.shape[1:3], config, max_segments)
  # Every static argument passed by keyword, always: jit caches per call signature, so a call that leaves one to
  # its default would compile again.
  return np.asarray(slic_batch(images, num_segments=count, iterations=config.iterations,
                               compactness=float(config.compactness), connectivity=bool(config.enforce_connectivity)))


def device_superpixel_fn(config, max_segments: int | None = None):
  """The train step's superpixel function: normalised views (B, H, W, 3) float -> int32 (B, H, W), jittable.

  Args:
    config: a SuperpixelConfig with method 'jax_slic', or a preset name (e.g. 'jax_slic').
    max_segments: the model's token slots; the request is capped at it (as on the host).
  """
  from cast_jax.superpixels.config import preset  # pylint: disable=import-outside-toplevel

  config = preset(config) if isinstance(config, str) else config
  if config.method != 'jax_slic':
    raise ValueError(f'only method jax_slic runs on the device, got {config.method!r}: set data.superpixels to '
                     "'jax_slic' (or compute SEEDS / SLIC maps on the host)")

  def superpixels(images: jax.Array) -> jax.Array:
    count = _checked_request(images.shape[1], images.shape[2], config, max_segments)
    return slic_from_normalized(images, num_segments=count, iterations=config.iterations,
                                compactness=float(config.compactness),
                                connectivity=bool(config.enforce_connectivity))

  return superpixels
