"""PartWorld: a procedural part-whole image dataset that needs no download.

Every example shows one object of ``NUM_CLASSES`` classes, built from two to four parts in a fixed
arrangement (a house is walls + roof + door + window), on a textured background with distractor blobs.
Classes are told apart only by the shape and arrangement of their parts: part colours and textures (solid,
gradient, stripes, dots, checker, value noise) are drawn independently of the class, and position, scale,
aspect, a small rotation and a horizontal flip are random. The ground truth is exact, so the part-to-whole
hierarchy CAST produces can be scored against it (object mask = the whole, part mask = the parts).

Images are square, ``image_size`` from 64 to 224 px. The object's bounding box covers 25-65% of the image
(less when a rotated box must shrink to fit), its mask typically 10-45%; the smallest part (a fish's eye)
still has several pixels at 64 px. Generating one example takes a few milliseconds of numpy.

    from cast_jax.data.partworld import PartWholeDataset, CLASS_NAMES, PART_NAMES
    ds = PartWholeDataset(10_000, image_size=224, seed=0, split='train')
    ex = ds[3]   # {'image': (224, 224, 3) uint8, 'label': int, 'object_mask': (224, 224) bool,
                 #  'part_mask': (224, 224) int32 in [0, NUM_PARTS]}

``PartWholeDataset`` has ``__len__`` and ``__getitem__`` only and plain attributes, so it is a picklable grain
``RandomAccessDataSource``. Example ``i`` is a pure function of (seed, split, i, image_size): its numpy
Generator is seeded from those alone, so access order, workers and processes do not matter. Splits fold
into the seed, which makes train / validation / test independent streams.

Part ids (``part_mask`` values; 0 is background; ``PART_NAMES[id]``; ``PART_CLASS[id]`` is the class id):

  class 0 house:    1 walls   2 roof    3 door    4 window
  class 1 tree:     5 trunk   6 crown
  class 2 car:      7 body    8 windows 9 wheels
  class 3 snowman: 10 base   11 torso  12 head   13 hat
  class 4 lamp:    14 base   15 pole   16 shade
  class 5 flower:  17 leaf   18 stem   19 petals 20 center
  class 6 rocket:  21 fins   22 body   23 nose   24 window
  class 7 fish:    25 tail   26 fins   27 body   28 eye

Parts are painted in id order within a class, so a later part covers an earlier one (the door covers the
walls); a part's mask is what stays visible. No antialiasing: every object pixel takes its colour from the
part its ``part_mask`` names, and ``object_mask == (part_mask > 0)``.

Regenerate the README picture, or time generation:

    python -m cast_jax.data.partworld --out docs/partworld.png
    python -m cast_jax.data.partworld --benchmark
"""

from __future__ import annotations

import argparse
import bisect
import colorsys
import dataclasses
import json
import math
import operator
import pathlib
import time

import numpy as np

MIN_IMAGE_SIZE = 64
MAX_IMAGE_SIZE = 224
SPLITS = ('train', 'validation', 'test')

# Folded into every seed so these streams do not coincide with other users of the same (seed, index).
_STREAM_TAG = 0x70617274  # 'part'

# Fraction of the image area covered by the object's unrotated bounding box, before any shrinking to fit.
_OBJECT_AREA_RANGE = (0.25, 0.65)
_MAX_ROTATION = 0.2  # radians, about 11 degrees: enough variety, and "up" stays meaningful
_MAX_LOG_ASPECT = 0.12
# Minimum RGB distance between the base colours of the background and of each part of the object, so that
# parts stay visible as regions; colours are otherwise uniform in the RGB cube whatever the class.
_MIN_COLOUR_DISTANCE = 100.0


# ----------------------------------------------------------------------------------------------------------
# Shape primitives, in a local frame (x right, y up for objects; image pixels for distractors). ``bounds``
# is (x0, y0, x1, y1); ``contains(grid)`` is the (h, w) bool mask of the grid's pixel centres inside.


class _Grid:
  """Local coordinates of the pixel centres of an (h, w) image box, as affine functions of the pixel position.

  With local = inverse @ (pixel - offset), any affine combination a x + b y + c of the local coordinates is a
  row vector plus a column vector, so it costs a single full-size (broadcast) add: that makes rasterising a
  rotated polygon or ellipse a handful of array operations.
  """

  def __init__(self, inverse: np.ndarray, offset: np.ndarray, y0: int, x0: int, h: int, w: int):
    self._inv = tuple(tuple(float(v) for v in row) for row in inverse)
    self._px = (np.arange(x0, x0 + w) + (0.5 - offset[0])).astype(np.float32)[None, :]  # (1, w)
    self._py = (np.arange(y0, y0 + h) + (0.5 - offset[1])).astype(np.float32)[:, None]  # (h, 1)

  def affine(self, a: float, b: float, c: float) -> np.ndarray:
    """(h, w) float32 values of a x + b y + c, where (x, y) are local coordinates."""
    (i00, i01), (i10, i11) = self._inv
    kx, ky = float(a) * i00 + float(b) * i10, float(a) * i01 + float(b) * i11
    return (kx * self._px + float(c)) + ky * self._py


@dataclasses.dataclass(frozen=True)
class Rect:
  x0: float
  y0: float
  x1: float
  y1: float

  def bounds(self):
    return self.x0, self.y0, self.x1, self.y1

  def contains(self, grid: _Grid):
    x, y = grid.affine(1.0, 0.0, 0.0), grid.affine(0.0, 1.0, 0.0)
    return (x >= self.x0) & (x <= self.x1) & (y >= self.y0) & (y <= self.y1)


@dataclasses.dataclass(frozen=True)
class Ellipse:
  cx: float
  cy: float
  rx: float
  ry: float
  angle: float = 0.0  # radians, counter-clockwise in the local frame

  def bounds(self):
    c, s = math.cos(self.angle), math.sin(self.angle)
    hx = math.hypot(self.rx * c, self.ry * s)
    hy = math.hypot(self.rx * s, self.ry * c)
    return self.cx - hx, self.cy - hy, self.cx + hx, self.cy + hy

  def contains(self, grid: _Grid):
    # (u, v): coordinates along the ellipse's own axes, in units of its radii.
    c, s = math.cos(self.angle), math.sin(self.angle)
    u = grid.affine(c / self.rx, s / self.rx, -(self.cx * c + self.cy * s) / self.rx)
    v = grid.affine(-s / self.ry, c / self.ry, (self.cx * s - self.cy * c) / self.ry)
    return u * u + v * v <= 1.0


@dataclasses.dataclass(frozen=True)
class ConvexPolygon:
  vertices: tuple  # ((x, y), ...) in either winding order

  def __post_init__(self):
    # Each edge as a half-plane a x + b y + c >= 0 that holds the inside, whatever the winding.
    v = self.vertices
    twice_area = sum(v[i - 1][0] * v[i][1] - v[i][0] * v[i - 1][1] for i in range(len(v)))
    sign = 1.0 if twice_area > 0 else -1.0
    planes = tuple((-sign * (by - ay), sign * (bx - ax), sign * ((by - ay) * ax - (bx - ax) * ay))
                   for (ax, ay), (bx, by) in zip(v, v[1:] + v[:1]))
    object.__setattr__(self, '_planes', planes)

  def bounds(self):
    xs, ys = zip(*self.vertices)
    return min(xs), min(ys), max(xs), max(ys)

  def contains(self, grid: _Grid):
    (a, b, c), *rest = self._planes
    inside = grid.affine(a, b, c) >= 0.0
    for a, b, c in rest:
      inside &= grid.affine(a, b, c) >= 0.0
    return inside


def _polar(grid: _Grid, cx: float, cy: float):
  """(squared distance, angle) of the grid's points around (cx, cy)."""
  dx, dy = grid.affine(1.0, 0.0, -cx), grid.affine(0.0, 1.0, -cy)
  return dx * dx + dy * dy, np.arctan2(dy, dx)


@dataclasses.dataclass(frozen=True)
class Petals:
  """A flower head: radius R (inner + (1 - inner) |cos(count (phi - phase) / 2)|) has ``count`` petals."""
  cx: float
  cy: float
  radius: float
  count: int
  phase: float
  inner: float

  def bounds(self):
    return self.cx - self.radius, self.cy - self.radius, self.cx + self.radius, self.cy + self.radius

  def contains(self, grid: _Grid):
    r2, phi = _polar(grid, self.cx, self.cy)
    edge = self.radius * (self.inner + (1.0 - self.inner) * np.abs(np.cos(0.5 * self.count * (phi - self.phase))))
    return r2 <= edge * edge


@dataclasses.dataclass(frozen=True)
class Blob:
  """An irregular star-shaped blob, radius R (1 + sum_k a_k cos(k phi + p_k)) for k = 2, 3, ... (clutter)."""
  cx: float
  cy: float
  radius: float
  amplitudes: tuple
  phases: tuple

  def bounds(self):
    r = self.radius * (1.0 + sum(abs(a) for a in self.amplitudes))
    return self.cx - r, self.cy - r, self.cx + r, self.cy + r

  def contains(self, grid: _Grid):
    dx, dy = grid.affine(1.0, 0.0, -self.cx), grid.affine(0.0, 1.0, -self.cy)
    r2 = dx * dx + dy * dy
    inv_r = 1.0 / np.sqrt(np.maximum(r2, 1e-12))
    c1, s1 = dx * inv_r, dy * inv_r  # cos phi, sin phi
    ck, sk = c1, s1
    edge = 1.0
    # cos(k phi), sin(k phi) by angle addition: several times cheaper than arctan2 and cos per pixel.
    for a, p in zip(self.amplitudes, self.phases):
      ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
      edge = edge + (a * math.cos(p)) * ck - (a * math.sin(p)) * sk
    edge = edge * self.radius
    return r2 <= edge * edge


# ----------------------------------------------------------------------------------------------------------
# Class templates. Each returns one list of primitives per part, in paint order (= part id order), in a frame
# with x right and y up from the ground line; sizes are arbitrary since the object is rescaled to fit.


def _house(rng):
  wall_h = rng.uniform(0.65, 0.9)
  overhang, roof_h = rng.uniform(0.05, 0.12), rng.uniform(0.35, 0.6)
  side = rng.choice((-1.0, 1.0))  # door on one side of the centre, window on the other
  door_x, door_w, door_h = side * rng.uniform(0.1, 0.2), rng.uniform(0.2, 0.26), wall_h * rng.uniform(0.45, 0.6)
  win_x, win_y, win_s = -side * rng.uniform(0.2, 0.26), wall_h * rng.uniform(0.55, 0.68), rng.uniform(0.17, 0.22)
  walls = [Rect(-0.5, 0.0, 0.5, wall_h)]
  roof = [ConvexPolygon(((-0.5 - overhang, wall_h - 0.02), (0.5 + overhang, wall_h - 0.02), (0.0, wall_h + roof_h)))]
  door = [Rect(door_x - door_w / 2, 0.0, door_x + door_w / 2, door_h)]
  window = [Rect(win_x - win_s / 2, win_y - win_s / 2, win_x + win_s / 2, win_y + win_s / 2)]
  return [walls, roof, door, window]


def _tree(rng):
  trunk_w, trunk_h = rng.uniform(0.1, 0.16), rng.uniform(0.3, 0.5)
  crown_r = rng.uniform(0.3, 0.42)
  crown_y = trunk_h + crown_r * rng.uniform(0.8, 0.95)
  trunk = [Rect(-trunk_w / 2, 0.0, trunk_w / 2, trunk_h + 0.1)]
  crown = [Ellipse(0.0, crown_y, crown_r * rng.uniform(0.85, 1.15), crown_r)]
  return [trunk, crown]


def _car(rng):
  body_top, roof_y = rng.uniform(0.45, 0.52), rng.uniform(0.8, 0.9)
  rear, front = -rng.uniform(0.55, 0.65), rng.uniform(0.5, 0.6)  # cabin foot
  rear_top, front_top = rear + rng.uniform(0.15, 0.22), front - rng.uniform(0.22, 0.3)
  wheel_r, wheel_x = rng.uniform(0.17, 0.22), rng.uniform(0.55, 0.65)
  body = [ConvexPolygon(((-1.0, 0.14), (1.0, 0.14), (1.0, body_top - 0.1), (0.9, body_top), (-1.0, body_top))),
          ConvexPolygon(((rear, body_top - 0.02), (front, body_top - 0.02), (front_top, roof_y), (rear_top, roof_y)))]

  def inset(t):  # a point on the cabin's sloped sides, t from foot (0) to roof (1), moved inwards
    return rear + t * (rear_top - rear) + 0.09, front + t * (front_top - front) - 0.09

  lo, hi = body_top + 0.06, roof_y - 0.07
  t_lo, t_hi = (lo - body_top) / (roof_y - body_top), (hi - body_top) / (roof_y - body_top)
  (r_lo, f_lo), (r_hi, f_hi) = inset(t_lo), inset(t_hi)
  mid, gap = 0.5 * (r_lo + f_lo), 0.04
  windows = [ConvexPolygon(((r_lo, lo), (mid - gap, lo), (mid - gap, hi), (r_hi, hi))),
             ConvexPolygon(((mid + gap, lo), (f_lo, lo), (f_hi, hi), (mid + gap, hi)))]
  wheels = [Ellipse(-wheel_x, wheel_r, wheel_r, wheel_r), Ellipse(wheel_x, wheel_r, wheel_r, wheel_r)]
  return [body, windows, wheels]


def _snowman(rng):
  r0 = 0.5
  r1 = r0 * rng.uniform(0.65, 0.78)
  r2 = r1 * rng.uniform(0.62, 0.75)
  y1 = 2 * r0 + 0.75 * r1
  y2 = y1 + r1 + 0.75 * r2
  brim_y = y2 + 0.7 * r2
  hat_h = r2 * rng.uniform(0.7, 1.0)
  hat = [Rect(-1.15 * r2, brim_y, 1.15 * r2, brim_y + 0.22 * r2),
         Rect(-0.72 * r2, brim_y + 0.15 * r2, 0.72 * r2, brim_y + 0.15 * r2 + hat_h)]
  return [[Ellipse(0.0, r0, r0, r0)], [Ellipse(0.0, y1, r1, r1)], [Ellipse(0.0, y2, r2, r2)], hat]


def _lamp(rng):
  base_w, base_h = rng.uniform(0.3, 0.38), rng.uniform(0.08, 0.12)
  pole_w, pole_h = rng.uniform(0.07, 0.1), rng.uniform(0.6, 0.85)
  shade_lo, shade_hi = rng.uniform(0.34, 0.44), rng.uniform(0.14, 0.22)
  shade_h = rng.uniform(0.3, 0.42)
  base = [ConvexPolygon(((-base_w, 0.0), (base_w, 0.0), (0.7 * base_w, base_h), (-0.7 * base_w, base_h)))]
  pole = [Rect(-pole_w / 2, base_h - 0.02, pole_w / 2, pole_h + 0.05)]
  shade = [ConvexPolygon(((-shade_lo, pole_h), (shade_lo, pole_h), (shade_hi, pole_h + shade_h),
                          (-shade_hi, pole_h + shade_h)))]
  return [base, pole, shade]


def _flower(rng):
  stem_w, stem_h = rng.uniform(0.07, 0.09), rng.uniform(0.55, 0.75)
  head_r = rng.uniform(0.28, 0.36)
  side = rng.choice((-1.0, 1.0))
  leaf_y, leaf_tilt = stem_h * rng.uniform(0.3, 0.5), rng.uniform(0.45, 0.75)
  leaf_rx, leaf_ry = rng.uniform(0.15, 0.19), rng.uniform(0.06, 0.08)
  head_y = stem_h + head_r * 0.9
  stem = [Rect(-stem_w / 2, 0.0, stem_w / 2, head_y - 0.3 * head_r)]  # ends under the petals' inner disc
  # The leaf's inner tip lies just past the stem's centre line and behind the stem (painted first), so the
  # leaf meets the stem already thick and does not cut it in two. It points up and away from the stem.
  c, s = math.cos(leaf_tilt), math.sin(leaf_tilt)
  tip_x = -side * 0.25 * stem_w
  leaf = [Ellipse(tip_x + side * leaf_rx * c, leaf_y + leaf_rx * s, leaf_rx, leaf_ry, side * leaf_tilt)]
  petals = [Petals(0.0, head_y, head_r, int(rng.integers(5, 9)), rng.uniform(0, 2 * np.pi), rng.uniform(0.45, 0.6))]
  center_r = head_r * rng.uniform(0.3, 0.38)
  return [leaf, stem, petals, [Ellipse(0.0, head_y, center_r, center_r)]]


def _rocket(rng):
  half_w, body_h = rng.uniform(0.16, 0.2), rng.uniform(0.9, 1.1)
  nose_h, fin_w, fin_top = rng.uniform(0.3, 0.45), rng.uniform(0.16, 0.22), rng.uniform(0.4, 0.5)
  window_r = half_w * rng.uniform(0.5, 0.62)
  fins = [ConvexPolygon(((s * (half_w - 0.03), fin_top), (s * (half_w + fin_w), 0.12),
                         (s * (half_w + fin_w), -0.02), (s * (half_w - 0.03), 0.12))) for s in (-1.0, 1.0)]
  body = [Rect(-half_w, 0.08, half_w, body_h)]
  # The nose's base is a touch wider than the body and below its top, so no sliver of body shows beside it.
  nose = [ConvexPolygon(((-1.05 * half_w, body_h - 0.005), (1.05 * half_w, body_h - 0.005), (0.0, body_h + nose_h)))]
  window = [Ellipse(0.0, body_h * rng.uniform(0.6, 0.72), window_r, window_r)]
  return [fins, body, nose, window]


def _fish(rng):
  half_h = rng.uniform(0.28, 0.36)
  tail_h, tail_x = rng.uniform(0.22, 0.32), rng.uniform(0.9, 1.0)
  fin_h = rng.uniform(0.2, 0.28)
  eye_r = rng.uniform(0.065, 0.08)
  tail = [ConvexPolygon(((0.45, 0.0), (tail_x, tail_h), (tail_x, -tail_h)))]
  fins = [ConvexPolygon(((-0.25, 0.7 * half_h), (0.2, 0.7 * half_h), (0.25, half_h + fin_h))),  # dorsal
          ConvexPolygon(((-0.05, -0.7 * half_h), (0.22, -0.7 * half_h), (0.28, -half_h - 0.8 * fin_h)))]
  body = [Ellipse(0.0, 0.0, 0.6, half_h)]
  eye = [Ellipse(-0.36, 0.25 * half_h, eye_r, eye_r)]
  return [tail, fins, body, eye]


_CLASSES = (
    ('house', ('walls', 'roof', 'door', 'window'), _house),
    ('tree', ('trunk', 'crown'), _tree),
    ('car', ('body', 'windows', 'wheels'), _car),
    ('snowman', ('base', 'torso', 'head', 'hat'), _snowman),
    ('lamp', ('base', 'pole', 'shade'), _lamp),
    ('flower', ('leaf', 'stem', 'petals', 'center'), _flower),
    ('rocket', ('fins', 'body', 'nose', 'window'), _rocket),
    ('fish', ('tail', 'fins', 'body', 'eye'), _fish),
)

NUM_CLASSES = len(_CLASSES)
CLASS_NAMES = tuple(name for name, _, _ in _CLASSES)
# PART_NAMES[0] is 'background'; part id p > 0 is named 'class/part'.
PART_NAMES = ('background',) + tuple(f'{name}/{part}' for name, parts, _ in _CLASSES for part in parts)
NUM_PARTS = len(PART_NAMES) - 1
# CLASS_PARTS[c]: the part ids of class c, in paint order. PART_CLASS[p]: the class of part p (-1: background).
CLASS_PARTS = tuple(tuple(range(1 + sum(len(p) for _, p, _ in _CLASSES[:c]),
                                1 + sum(len(p) for _, p, _ in _CLASSES[:c + 1]))) for c in range(NUM_CLASSES))
PART_CLASS = np.array([-1] + [c for c, parts in enumerate(CLASS_PARTS) for _ in parts], np.int32)
PART_CLASS.flags.writeable = False


# ----------------------------------------------------------------------------------------------------------
# Colours are RGBA bytes viewed as one uint32 per pixel ("packed"), so painting moves one word per pixel and
# a texture can pick colours from a table with np.take. Byte views both ways keep this independent of the
# machine's byte order.


def _pack(rgb) -> np.ndarray:
  """(..., 3) float RGB in [0, 255] -> (...) packed uint32, rounded."""
  rgb = np.asarray(rgb)
  rgba = np.zeros(rgb.shape[:-1] + (4,), np.uint8)
  rgba[..., :3] = np.clip(rgb, 0.0, 255.0) + 0.5  # the cast truncates, so + 0.5 rounds
  return rgba.view(np.uint32)[..., 0]


def _unpack(canvas: np.ndarray) -> np.ndarray:
  """(H, W) packed uint32 -> (H, W, 3) uint8 RGB."""
  rgba = canvas.view(np.uint8).reshape(canvas.shape + (4,))
  return np.dstack([rgba[..., 0], rgba[..., 1], rgba[..., 2]])


# Textures: functions (py, px) -> packed colours, for pixel-centre rows py (h, 1) and columns px (1, w),
# float32, returning (h, w) uint32 or one colour. Each mixes a base colour c0 and a second colour c1 through a
# field in image coordinates (so the several primitives of one part share one continuous texture).

_TEXTURES = ('solid', 'gradient', 'stripes', 'dots', 'checker', 'noise')
_TEXTURE_CUMULATIVE = (0.2, 0.4, 0.55, 0.7, 0.8)  # probabilities 0.2, 0.2, 0.15, 0.15, 0.1, 0.2
_RAMP = (np.arange(256) / 255.0)[:, None]  # mixing weight of c1 for each entry of a 256-colour table


def _texture(rng, size: int, region: tuple[float, float, float], c0: np.ndarray, contrast: tuple[float, float]):
  """A random texture; c1 lies at a random RGB offset of norm in ``contrast`` from c0.

  region = (cy, cx, extent) of what is painted: gradients span it. Periods scale with the image size, so a
  64 px and a 224 px example look alike, but stay a few pixels wide.
  """
  offset = rng.normal(size=3)
  offset *= rng.uniform(*contrast) / max(math.sqrt(offset @ offset), 1e-6)
  kind = _TEXTURES[bisect.bisect(_TEXTURE_CUMULATIVE, rng.random())]  # cheaper than rng.choice(p=...)
  table = _pack(c0 + _RAMP * offset)
  p0, p1 = table[0], table[255]
  if kind == 'solid':
    return lambda py, px: p0
  angle = rng.uniform(0.0, 2 * np.pi)
  dx, dy = math.cos(angle), math.sin(angle)
  if kind == 'gradient':
    cy, cx, extent = region
    k = 255.0 / max(extent, 1.0)
    # Level 128 at the region's centre (127.5, plus 0.5 so that the uint8 cast rounds).
    return lambda py, px: np.take(
        table, np.clip(((px - cx) * (k * dx) + 128.0) + (py - cy) * (k * dy), 0.0, 255.0).astype(np.uint8))
  period = max(3.0, size * rng.uniform(0.035, 0.09))
  ph_u, ph_v = rng.uniform(0.0, 1.0, 2)

  def u(py, px):  # rotated coordinates, in periods
    return (px * (dx / period) + ph_u) + py * (dy / period)

  def v(py, px):
    return (py * (dx / period) + ph_v) - px * (dy / period)

  if kind == 'stripes':
    duty = rng.uniform(0.35, 0.65)
    return lambda py, px: np.where(np.mod(u(py, px), 1.0) < duty, p1, p0)
  if kind == 'dots':
    r2 = rng.uniform(0.2, 0.34) ** 2

    def dots(py, px):
      a, b = u(py, px), v(py, px)
      a, b = a - np.floor(a) - 0.5, b - np.floor(b) - 0.5
      return np.where(a * a + b * b < r2, p1, p0)
    return dots
  if kind == 'checker':
    return lambda py, px: np.where(np.mod(np.floor(u(py, px)) + np.floor(v(py, px)), 2.0) > 0.5, p1, p0)
  # Value noise: random levels on a coarse grid, bilinearly interpolated; cells from grainy to blotchy.
  # Interpolating along x on the coarse rows first, then along y, keeps it to two full-size gathers.
  cell = max(2.0, size * rng.uniform(0.02, 0.12))
  levels = rng.uniform(0.5, 255.5, (int(size / cell) + 2,) * 2).astype(np.float32)

  def noise(py, px):
    gx, gy = px[0] / np.float32(cell), py[:, 0] / np.float32(cell)
    ix, iy = gx.astype(np.int32), gy.astype(np.int32)  # coordinates are positive: truncation is floor
    fx, fy = (gx - ix)[None, :], (gy - iy)[:, None]
    rows = levels[:, ix] * (1 - fx) + levels[:, ix + 1] * fx  # (n, w)
    return np.take(table, (rows[iy] * (1 - fy) + rows[iy + 1] * fy).astype(np.uint8))
  return noise


# palette='class': each part's hue varies around its own typical hue (spread apart by the golden ratio, as in
# part_palette), like leaves that are mostly green; saturation and value stay random.
_PART_HUE_SPREAD = 0.04  # standard deviation of the hue, in turns
PALETTES = ('random', 'class')


def _uniform_colour(rng, part_id: int) -> np.ndarray:
  del part_id
  return rng.uniform(0.0, 255.0, 3)


def _typical_colour(rng, part_id: int) -> np.ndarray:
  hue = (part_id * 0.618034 + rng.normal(0.0, _PART_HUE_SPREAD)) % 1.0
  return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))) * 255.0


def _distinct_colour(rng, taken: list, min_distance: float, tries: int = 24, sample=_uniform_colour,
                     part_id: int = 0) -> np.ndarray:
  """A colour from ``sample(rng, part_id)`` (uniform RGB by default) at least min_distance from every colour
  in taken (else the farthest of tries)."""
  best, best_d = None, -1.0
  for _ in range(tries):
    c = sample(rng, part_id)
    d = min((math.dist(c, t) for t in taken), default=math.inf)
    if d >= min_distance:
      return c
    if d > best_d:
      best, best_d = c, d
  return best


# ----------------------------------------------------------------------------------------------------------
# Placement and painting.


@dataclasses.dataclass(frozen=True)
class _Affine:
  """image = matrix @ local + offset; ``inverse`` maps back for rasterising."""
  matrix: np.ndarray  # (2, 2)
  offset: np.ndarray  # (2,)
  inverse: np.ndarray  # (2, 2)

  @classmethod
  def make(cls, matrix, offset):
    return cls(np.asarray(matrix, float), np.asarray(offset, float), np.linalg.inv(matrix))

  def box(self, bounds) -> tuple[float, float, float, float]:
    """Image-space (x0, y0, x1, y1) around the local box ``bounds``."""
    x0, y0, x1, y1 = bounds
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) @ self.matrix.T + self.offset
    (lx, ly), (hx, hy) = corners.min(axis=0), corners.max(axis=0)
    return float(lx), float(ly), float(hx), float(hy)


_IDENTITY = _Affine.make(np.eye(2), np.zeros(2))


def _bounds(prims) -> tuple[float, float, float, float]:
  """Union of the primitives' bounds, (x0, y0, x1, y1)."""
  boxes = [p.bounds() for p in prims]
  return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
          max(b[3] for b in boxes))


def _place(rng, parts, size: int) -> _Affine:
  """Random scale, aspect, rotation, flip and position that keep the whole object inside the image."""
  x0, y0, x1, y1 = _bounds([p for prims in parts for p in prims])
  width, height = x1 - x0, y1 - y0
  scale = math.sqrt(rng.uniform(*_OBJECT_AREA_RANGE) * size * size / (width * height))
  aspect = math.exp(rng.uniform(-_MAX_LOG_ASPECT, _MAX_LOG_ASPECT))
  angle = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)
  flip = -1.0 if rng.random() < 0.5 else 1.0
  c, s = math.cos(angle), math.sin(angle)
  # Rotation times diag(flip * aspect, -1 / aspect): image y points down and local y up, hence the -1.
  m = np.array([[c * flip * aspect, s / aspect], [s * flip * aspect, -c / aspect]])
  half_w, half_h = 0.5 * np.abs(m) @ np.array([width, height])  # half extents of the turned box, scale 1
  scale = min(scale, 0.98 * size / (2 * max(half_w, half_h)))
  cx = rng.uniform(scale * half_w, size - scale * half_w)
  cy = rng.uniform(scale * half_h, size - scale * half_h)
  m *= scale
  return _Affine.make(m, np.array([cx, cy]) - m @ np.array([0.5 * (x0 + x1), 0.5 * (y0 + y1)]))


def _paint(canvas, part_mask, prims, transform: _Affine, texture, value: int) -> None:
  """Paints prims with texture into the packed canvas, and value into part_mask unless it is None."""
  size = canvas.shape[0]
  for prim in prims:
    x0, y0, x1, y1 = transform.box(prim.bounds())
    x0, y0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
    x1, y1 = min(int(math.ceil(x1)), size), min(int(math.ceil(y1)), size)
    if x1 <= x0 or y1 <= y0:
      continue  # off the image
    inside = prim.contains(_Grid(transform.inverse, transform.offset, y0, x0, y1 - y0, x1 - x0))
    # The texture covers the whole box (cheap broadcast arithmetic) and is copied where inside.
    py = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5)
    px = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5)
    np.copyto(canvas[y0:y1, x0:x1], texture(py, px), where=inside)
    if part_mask is not None:
      np.copyto(part_mask[y0:y1, x0:x1], value, where=inside)


def _check_config(image_size: int, seed: int, split: str) -> None:
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
    raise ValueError(f'image_size must be an integer number of pixels; got {image_size!r}')
  if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
    raise ValueError(f'image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels; got '
                     f'{image_size}. Resize the examples afterwards for other sizes.')
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative integer; got {seed!r}')
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}; got {split!r}')


def make_example(index: int, *, image_size: int = 224, seed: int = 0, split: str = 'train',
                 appearance: int = 0, palette: str = 'random', keep_object_colours: bool = False) -> dict:
  """Example ``index`` of the (seed, split) stream, a pure function of its arguments.

  Returns a dict: 'image' (S, S, 3) uint8, 'label' int in [0, NUM_CLASSES), 'object_mask' (S, S) bool,
  'part_mask' (S, S) int32 with 0 = background and the other values from CLASS_PARTS[label].

  ``appearance`` > 0 re-renders the same object (class, part geometry, pose, so the same masks) with its own
  background, clutter, part colours and textures; 0 is the stream's own rendering. ``keep_object_colours``
  (with ``appearance`` > 0): the parts keep the base colours of rendering 0, only their textures, the
  background and the clutter are new (a photo of the same object somewhere else).

  ``palette``: 'random' (the default) draws part colours uniformly whatever the class, so appearance carries no
  class information; 'class' draws each part's hue around a typical hue of its own (saturation, value,
  textures, background and clutter stay random), so appearance correlates with the class as in natural images.
  """
  return _render(index, image_size=image_size, seed=seed, split=split, appearance=appearance, palette=palette,
                 keep_object_colours=keep_object_colours)[0]


def _render(index: int, *, image_size: int, seed: int, split: str, appearance: int, palette: str,
            keep_object_colours: bool = False, part_colours: list | None = None) -> tuple[dict, list]:
  """``make_example`` and the base colours its parts were painted with. ``part_colours``: those of rendering
  0 when the caller already has them (``keep_object_colours``), so it is not rendered twice."""
  if palette not in PALETTES:
    raise ValueError(f'palette must be one of {PALETTES}; got {palette!r}')
  _check_config(image_size, seed, split)
  index = operator.index(index)
  if index < 0:
    raise IndexError(f'example index must be non-negative; got {index}')
  appearance = operator.index(appearance)
  if appearance < 0:
    raise ValueError(f'appearance must be non-negative; got {appearance}')
  if keep_object_colours and appearance and part_colours is None:
    part_colours = _render(index, image_size=image_size, seed=seed, split=split, appearance=0,
                           palette=palette)[1]
  if not (keep_object_colours and appearance):
    part_colours = None
  stream = [_STREAM_TAG, int(seed), SPLITS.index(split), index]
  rng = np.random.default_rng(stream)
  size = int(image_size)

  label = int(rng.integers(NUM_CLASSES))
  parts = _CLASSES[label][2](rng)
  transform = _place(rng, parts, size)
  if appearance:  # everything below is appearance: draw it from a stream of its own
    rng = np.random.default_rng(stream + [appearance])

  # Background: a low-contrast texture over the whole image (apart from kept part colours, as they are
  # from each other).
  if part_colours is None:
    bg_colour = rng.uniform(0.0, 255.0, 3)
  else:
    bg_colour = _distinct_colour(rng, list(part_colours), _MIN_COLOUR_DISTANCE)
  texture = _texture(rng, size, (size / 2, size / 2, size), bg_colour, (20.0, 80.0))
  centres = np.arange(size, dtype=np.float32) + np.float32(0.5)
  canvas = np.empty((size, size), np.uint32)
  canvas[:] = texture(centres[:, None], centres[None, :])

  # Clutter behind the object: irregular blobs of any colour, a shape no class is made of.
  for _ in range(int(rng.integers(2, 7))):
    r = size * rng.uniform(0.04, 0.13)
    blob = Blob(rng.uniform(0, size), rng.uniform(0, size), r, tuple(rng.uniform(-0.25, 0.25, 3)),
                tuple(rng.uniform(0, 2 * np.pi, 3)))
    texture = _texture(rng, size, (blob.cy, blob.cx, 2 * r), rng.uniform(0.0, 255.0, 3), (30.0, 110.0))
    _paint(canvas, None, [blob], _IDENTITY, texture, 0)

  # The object, part by part, with base colours apart from the background's and from each other.
  part_mask = np.zeros((size, size), np.int32)
  taken = [bg_colour]
  for i, (part_id, prims) in enumerate(zip(CLASS_PARTS[label], parts)):
    if part_colours is None:
      colour = _distinct_colour(rng, taken, _MIN_COLOUR_DISTANCE, part_id=part_id,
                                sample=_typical_colour if palette == 'class' else _uniform_colour)
    else:
      colour = part_colours[i]
    taken.append(colour)
    x0, y0, x1, y1 = transform.box(_bounds(prims))
    region = (0.5 * (y0 + y1), 0.5 * (x0 + x1), max(x1 - x0, y1 - y0))
    _paint(canvas, part_mask, prims, transform, _texture(rng, size, region, colour, (30.0, 90.0)), part_id)

  example = {'image': _unpack(canvas), 'label': label, 'object_mask': part_mask > 0, 'part_mask': part_mask}
  return example, taken[1:]


class PartWholeDataset:
  """``num_examples`` PartWorld examples of one (seed, split) stream; a grain RandomAccessDataSource.

  ``ds[i]`` is ``make_example(i, image_size=..., seed=..., split=...)``: generated on access, deterministic,
  independent of access order. Only plain attributes are stored, so the dataset pickles to a few bytes.
  """

  def __init__(self, num_examples: int, image_size: int = 224, seed: int = 0, split: str = 'train',
               second_rendering: bool = False, palette: str = 'random', keep_object_colours: bool = False):
    _check_config(image_size, seed, split)
    if palette not in PALETTES:
      raise ValueError(f'palette must be one of {PALETTES}; got {palette!r}')
    self.palette = palette
    num_examples = operator.index(num_examples)
    if num_examples < 0:
      raise ValueError(f'num_examples must be non-negative; got {num_examples}')
    self.num_examples = num_examples
    self.image_size = int(image_size)
    self.seed = int(seed)
    self.split = split
    # With second_rendering, examples also hold 'image2': the same object re-rendered with another background,
    # clutter and part colours (make_example's appearance=1). The MoCo demo takes its second view from it.
    self.second_rendering = bool(second_rendering)
    # ... and with keep_object_colours, 'image2' keeps the object's part colours (make_example's
    # keep_object_colours): only the textures, the background and the clutter are new.
    self.keep_object_colours = bool(keep_object_colours)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index) -> dict:
    index = operator.index(index)  # numpy integers too; slices are not supported
    if index < 0:
      index += self.num_examples
    if not 0 <= index < self.num_examples:
      raise IndexError(f'index {index} out of range for {self.num_examples} examples')
    where = dict(image_size=self.image_size, seed=self.seed, split=self.split, palette=self.palette)
    example, colours = _render(index, appearance=0, **where)
    if self.second_rendering:
      example['image2'] = _render(index, appearance=1, keep_object_colours=self.keep_object_colours,
                                  part_colours=colours, **where)[0]['image']
    return example

  def __repr__(self) -> str:
    return (f'PartWholeDataset(num_examples={self.num_examples}, image_size={self.image_size}, '
            f'seed={self.seed}, split={self.split!r}, second_rendering={self.second_rendering}, '
            f'palette={self.palette!r}, keep_object_colours={self.keep_object_colours})')


# ----------------------------------------------------------------------------------------------------------
# Command line: the README picture and a generation benchmark.


def part_palette() -> np.ndarray:
  """(NUM_PARTS + 1, 3) uint8 colours for drawing part masks; background is dark grey.

  Hues step by the golden ratio along the part ids, so the parts of one class (consecutive ids) contrast.
  """
  colours = [(40, 40, 40)]
  for p in range(1, NUM_PARTS + 1):
    r, g, b = colorsys.hsv_to_rgb((p * 0.618034) % 1.0, 0.7, 0.95)
    colours.append((int(255 * r), int(255 * g), int(255 * b)))
  return np.array(colours, np.uint8)


def figure(image_size: int = 96, rows: int = 4, seed: int = 0, split: str = 'validation') -> np.ndarray:
  """(H, W, 3) uint8 grid: one column per class, ``rows`` examples each as an image row over a part-mask row.

  Examples are the first of each class in the stream, so the picture is reproducible.
  """
  from PIL import Image, ImageDraw  # only the picture needs Pillow

  picked = {c: [] for c in range(NUM_CLASSES)}
  index = 0
  while min(len(v) for v in picked.values()) < rows:
    ex = make_example(index, image_size=image_size, seed=seed, split=split)
    if len(picked[ex['label']]) < rows:
      picked[ex['label']].append(ex)
    index += 1
  palette = part_palette()
  gap, header = 4, 16
  cell = image_size + gap
  canvas = np.full((header + 2 * rows * cell, NUM_CLASSES * cell, 3), 255, np.uint8)
  for c in range(NUM_CLASSES):
    for r, ex in enumerate(picked[c]):
      x, y = c * cell, header + 2 * r * cell
      canvas[y:y + image_size, x:x + image_size] = ex['image']
      canvas[y + cell:y + cell + image_size, x:x + image_size] = palette[ex['part_mask']]
  picture = Image.fromarray(canvas)
  draw = ImageDraw.Draw(picture)
  for c, name in enumerate(CLASS_NAMES):
    draw.text((c * cell + 2, 2), name, fill=(0, 0, 0))
  return np.asarray(picture)


def benchmark(sizes=(64, 128, 224), count: int = 200) -> list[dict]:
  """Per-example generation time at each image size, one process: wall-clock median and mean, and mean CPU
  time (on a shared machine the CPU time is the steadier number: it leaves out time spent descheduled)."""
  results = []
  for size in sizes:
    make_example(0, image_size=size)  # warm-up (imports, caches)
    wall, cpu = [], time.process_time()
    for i in range(count):
      start = time.perf_counter()
      make_example(i, image_size=size)
      wall.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu
    results.append({'image_size': size, 'examples': count, 'median_ms': round(1e3 * float(np.median(wall)), 3),
                    'mean_ms': round(1e3 * float(np.mean(wall)), 3), 'cpu_mean_ms': round(1e3 * cpu / count, 3)})
  return results


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='docs/partworld.png', help='where to write the example grid (PNG)')
  parser.add_argument('--image-size', type=int, default=96)
  parser.add_argument('--rows', type=int, default=4, help='examples per class')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--benchmark', action='store_true', help='print generation times instead of a picture')
  args = parser.parse_args(argv)
  if args.benchmark:
    for result in benchmark():
      print(json.dumps(result))
    return
  from PIL import Image
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(figure(args.image_size, args.rows, args.seed)).save(args.out, optimize=True)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
