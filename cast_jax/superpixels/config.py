"""Which superpixel algorithm to run, with which settings: a dataclass a training config can hold, and presets.

The presets carry the settings of the original CAST code paths (github.com/twke18/CAST):

* ``moco`` / ``linear_probe``: ``moco-v3/suppix_utils/datasets_seeds.py``. SEEDS on the OpenCV 8-bit Lab
  image, 196 segments, 15 histogram bins, 20 iterations.
* ``deit``: ``deit/datasets_seeds.py``. SEEDS on Lab, 196 segments, 5 bins, 15 iterations.
* ``segmentation``: ``segmenter/segm/data/utils.generate_superpixels``. SEEDS with one segment per 16x16
  pixels (``int(H*W / 256)``), 5 bins, 15 iterations, and the uint8 inversion quirk *on*: that code multiplies
  an image that is already uint8 0..255 by 255, which wraps every value x to (-x) mod 256, and only then
  converts to Lab. The published Segmenter checkpoints saw superpixels of this inverted image, in training and
  evaluation alike.
* ``slic``: scikit-image SLIC, the alternative (``moco-v3/suppix_utils/datasets_slic.py``, unused by any script
  of the original), 196 segments, compactness 10.
* ``jax_slic``: SLIC k-means in JAX (``jax_slic``), jitted and batched, 196 segments, compactness 10, 10
  iterations (``iterations`` is the k-means count for this method), connectivity not enforced. Not a setting
  of the original: the on-device alternative of issue 18. On the host it runs through ``compute_superpixels``
  like the others; inside a train step call ``jax_slic.slic_from_normalized`` on the normalised views.

SEEDS always runs with ``num_levels=1, prior=2, double_step=False`` in the original; they are fields here only
so that the mirror of OpenCV's grid arithmetic (``seeds.seeds_grid``) sees every input.
"""

from __future__ import annotations

import dataclasses

METHODS = ('seeds', 'slic', 'jax_slic')


@dataclasses.dataclass(frozen=True)
class SuperpixelConfig:
  """Settings of one superpixel method.

  The requested number of segments is ``num_segments`` when set, else ``int(H * W / pixels_per_segment)``
  (the segmentation rule, ``pixels_per_segment=256``). Exactly one of the two must be set.

  Attributes:
    method: 'seeds' (OpenCV-contrib ``cv2.ximgproc``), 'slic' (scikit-image) or 'jax_slic' (JAX, any device).
    num_segments: fixed requested number of segments.
    pixels_per_segment: requested number of segments = int(H * W / pixels_per_segment).
    histogram_bins: SEEDS histogram bins per channel.
    iterations: SEEDS pixel-update iterations; k-means iterations for 'jax_slic'.
    prior: SEEDS boundary-smoothness prior (OpenCV caps it at 5).
    num_levels: SEEDS block levels (OpenCV raises values below 2 to 2).
    double_step: SEEDS double-step block updates.
    lab: convert RGB to OpenCV 8-bit Lab (L*255/100, a+128, b+128) before SEEDS, as every recipe does.
    invert_uint8: apply the segmentation code's ``uint8 * 255`` wrap, x -> (-x) mod 256, before Lab (every method
      run through ``compute_superpixels``: SEEDS wraps itself, SLIC and jax_slic are handed the wrapped image).
    compactness: SLIC (and jax_slic) colour/space trade-off on the Lab image (scikit-image's default, and the
      original's).
    sigma: SLIC Gaussian pre-smoothing width in pixels (0: none, as in the original).
    min_fraction: SLIC triples the compactness (at most ``max_retries`` times) while it returns fewer than
      ``min_fraction * requested`` segments, as the original's SLIC dataset does (without a bound).
    max_retries: bound on those retries.
    enforce_connectivity: jax_slic only: absorb each id's smaller pieces into touching superpixels (scikit-image
      SLIC here always enforces connectivity, SEEDS's ids are connected by construction).
  """
  method: str = 'seeds'
  num_segments: int | None = 196
  pixels_per_segment: int | None = None
  histogram_bins: int = 15
  iterations: int = 20
  prior: int = 2
  num_levels: int = 1
  double_step: bool = False
  lab: bool = True
  invert_uint8: bool = False
  compactness: float = 10.0
  sigma: float = 0.0
  min_fraction: float = 0.5
  max_retries: int = 6
  enforce_connectivity: bool = True

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'superpixel method {self.method!r} is not one of {METHODS}')
    if (self.num_segments is None) == (self.pixels_per_segment is None):
      raise ValueError('set exactly one of num_segments (a fixed count, e.g. 196) and pixels_per_segment '
                       f'(count = H*W // it, e.g. 256); got num_segments={self.num_segments}, '
                       f'pixels_per_segment={self.pixels_per_segment}')
    for name in ('num_segments', 'pixels_per_segment'):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise ValueError(f'{name} must be >= 1, got {value}')
    if self.histogram_bins < 1 or self.iterations < 0:
      raise ValueError(f'SEEDS needs histogram_bins >= 1 and iterations >= 0, got {self.histogram_bins} and '
                       f'{self.iterations}')
    if self.compactness <= 0:
      raise ValueError(f'SLIC compactness must be > 0, got {self.compactness}')

  def segments_for(self, height: int, width: int) -> int:
    """Requested number of segments for an image of this size; the default ``max_segments`` of the output."""
    if self.num_segments is not None:
      return self.num_segments
    # int() of the true quotient, written as the original's int(H * W / 16**2).
    return max(1, int(height * width / self.pixels_per_segment))


PRESETS: dict[str, SuperpixelConfig] = {
    'moco': SuperpixelConfig(num_segments=196, histogram_bins=15, iterations=20),
    'linear_probe': SuperpixelConfig(num_segments=196, histogram_bins=15, iterations=20),
    'deit': SuperpixelConfig(num_segments=196, histogram_bins=5, iterations=15),
    'segmentation': SuperpixelConfig(num_segments=None, pixels_per_segment=256, histogram_bins=5, iterations=15,
                                     invert_uint8=True),
    'slic': SuperpixelConfig(method='slic', num_segments=196, compactness=10.0),
    'jax_slic': SuperpixelConfig(method='jax_slic', num_segments=196, compactness=10.0, iterations=10),
}


def preset(name: str, **overrides) -> SuperpixelConfig:
  """The named preset (see the module docstring), with any fields replaced, e.g.
  ``preset('segmentation', invert_uint8=False)``."""
  if name not in PRESETS:
    raise ValueError(f'unknown superpixel preset {name!r}; choose one of {sorted(PRESETS)}')
  return dataclasses.replace(PRESETS[name], **overrides)
