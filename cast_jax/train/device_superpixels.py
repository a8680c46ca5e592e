"""Superpixels computed inside the jitted train step and evaluation forward (issue 18, part 2).

    config.data.superpixels = 'jax_slic'          # the only method that runs on a device
    config.data.superpixels_on_device = True

The host pipeline then only decodes and augments: the recipes (``recipes``, ``data.supervised``,
``data.segmentation``) are given ``superpixel_fn=None`` and emit no superpixel maps. What they emit instead, per
map the model needs:

  MoCo            'view1', 'view2' uint8 (B, S, S, 3): the views' pixels, normalised on the device; the maps
                  'superpixels1' / 'superpixels2' are jax_slic of these pixels (the host path computes its maps
                  from the same pixels).
  linear probe,   'image' uint8 (B, S, S, 3), likewise.
  MoCo eval
  DeiT train      'image' float32 normalised (random erasing and Mixup / CutMix act on the normalised tensor, so
                  it stays float) and 'superpixel_pixels' uint8 = ``augment.seeds_input`` of the erased, unmixed
                  image: what the host path hands SEEDS (the original keeps the first image's superpixels under
                  a mix). float64 with uint8 wrap-around, so it stays on the host.
  DeiT eval       'image' uint8 and 'superpixel_pixels' uint8 (``seeds_input`` of the normalised crop).
  Segmenter       'image' float32 (mmseg's cv2 normalisation, zero-padded: what the model sees, so it stays float),
  train           'label_map', and 'superpixel_pixels' uint8 = ``segmentation.superpixel_view`` of the padded crop
                  (the x255 wrap applied when ``data.invert_quirk``): the array the host path hands the superpixel
                  function (``SegmentationTrain``).
  Segmenter       (``evaluators.miou``, whole images and sliding windows) each window's float image and
  mIoU eval       ``sliding_window.window_pixels`` (denormalised, truncated, x255-wrapped when ``invert_quirk``);
                  the windows' jitted forward makes the maps. The windows themselves are still cut on the host.

``prepare`` turns such a batch into the model's usual one on the device (maps first, from the uint8 pixels;
then every uint8 image normalised as ``augment.normalize`` does). Shapes are static (the maps have the views'
shape; at most ``min(requested, max_segments)`` ids) and jax_slic is deterministic (no float scatters), so a
step's result does not depend on the run. It can depend on XLA's code generation: k-means assignments sit on
float roundings, and XLA CPU's cheap ``fast_compile`` code moved 13 of 16,384 pixels of four 64 px images against
its default code, so maps made on an accelerator may differ from the host path's at a few pixels. The host
ships 3 bytes per pixel and view instead of 16 (float32 image + int32 map); where the image stays float (DeiT
train, the Segmenter) 15 instead of 16, and the gain is only the superpixel computation moved off the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from cast_jax.data.augment import IMAGENET_MEAN, IMAGENET_STD
from cast_jax.superpixels import jax_slic
from cast_jax.superpixels.config import preset
from cast_jax.train.state import GradientStep

PIXELS_KEY = 'superpixel_pixels'
IMAGE_KEYS = ('view1', 'view2', 'image')
# Each map and where its pixels come from, in order of preference (the first uint8 one present).
MAP_SOURCES = {'superpixels1': ('view1',), 'superpixels2': ('view2',), 'superpixels': (PIXELS_KEY, 'image')}
# Trainers whose steps and evaluations take on-device superpixels.
TRAINERS = ('moco', 'supervised', 'linear_probe', 'segmentation')


def check_method(data) -> None:
  """Raises a ValueError saying what to change unless ``data.superpixels`` runs on a device (jax_slic)."""
  method = preset(data.superpixels).method
  if method != 'jax_slic':
    raise ValueError(f"data.superpixels_on_device=True needs data.superpixels='jax_slic' (the only method that "
                     f'runs on a device), got {data.superpixels!r} ({method}); set --config.data.superpixels=jax_slic '
                     'or leave superpixels_on_device False to compute SEEDS / SLIC on the host')


def enabled(config, uses_superpixels: bool = True) -> bool:
  """Whether ``config`` asks for on-device superpixels (``data.superpixels_on_device``) for a model that uses
  them (the ViT baseline never reads a map, so its host path already ships none worth computing).

  Raises a ValueError saying what to change when the request cannot be met.
  """
  data = config.data
  if not bool(data.get('superpixels_on_device', False)):
    return False
  check_method(data)
  trainer = config.get('trainer', 'moco')
  if trainer not in TRAINERS:
    raise ValueError(f'data.superpixels_on_device is supported by the {", ".join(TRAINERS)} trainers, not '
                     f'{trainer!r} (its recipe and evaluation compute their maps on the host); set it False')
  return bool(uses_superpixels)


def superpixel_fn(data, max_segments: int | None = None) -> Callable[[jax.Array], jax.Array]:
  """Jittable uint8 (B, H, W, 3) -> int32 (B, H, W): jax_slic with ``data.superpixels`` and its
  ``superpixel_overrides``, as many ids as requested but at most ``max_segments`` (the model's slots)."""
  config = preset(data.superpixels, **dict(data.get('superpixel_overrides', {}) or {}))
  if config.method != 'jax_slic':
    raise ValueError(f"on-device superpixels run jax_slic only; data.superpixels is {data.superpixels!r}")

  def superpixels(pixels: jax.Array) -> jax.Array:
    if pixels.dtype != jnp.uint8:
      raise ValueError(f'on-device superpixels take the uint8 pixels the recipe emits, got {pixels.dtype}')
    count = config.segments_for(pixels.shape[1], pixels.shape[2])
    count = count if max_segments is None else min(count, max_segments)
    return jax_slic.slic_batch(pixels, num_segments=count, iterations=config.iterations,
                               compactness=float(config.compactness),
                               connectivity=bool(config.enforce_connectivity))

  return superpixels


def normalize(pixels: jax.Array) -> jax.Array:
  """uint8 (..., 3) -> float32 ImageNet-normalised, the same arithmetic as ``augment.normalize``."""
  return (pixels.astype(jnp.float32) / 255.0 - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def prepare(batch: Mapping[str, Any], superpixels: Callable[[jax.Array], jax.Array]) -> dict[str, Any]:
  """A batch of uint8 pixels (see the module docstring) -> the model's batch: a map for every key of
  ``MAP_SOURCES`` whose source is present as uint8 (maps already there are kept), ``superpixel_pixels``
  dropped, every uint8 image of ``IMAGE_KEYS`` normalised. Other keys pass through. Jittable."""
  out = dict(batch)
  for map_key, sources in MAP_SOURCES.items():
    if map_key in out:
      continue
    for source in sources:
      if source in batch and batch[source].dtype == jnp.uint8:
        out[map_key] = superpixels(batch[source])
        break
  out.pop(PIXELS_KEY, None)
  for key in IMAGE_KEYS:
    if key in out and out[key].dtype == jnp.uint8:
      out[key] = normalize(out[key])
  return out


@dataclasses.dataclass(frozen=True)
class OnDeviceSuperpixels(GradientStep):
  """An objective (MoCo, supervised, Segmenter) whose batches carry pixels instead of maps: ``prepare`` then the
  objective's own step, in one jitted program.

  objective: has init_state / gradients / apply_gradients. superpixels: ``superpixel_fn(data, max_segments)``.
  """

  objective: Any
  superpixels: Callable[[jax.Array], jax.Array]

  @property
  def learning_rate_fn(self):
    return self.objective.learning_rate_fn

  def init_state(self, variables, rng):
    return self.objective.init_state(variables, rng)

  def gradients(self, state, batch, **kwargs):
    return self.objective.gradients(state, prepare(batch, self.superpixels), **kwargs)

  def apply_gradients(self, state, grads, aux):
    return self.objective.apply_gradients(state, grads, aux)

  def __getattr__(self, name):  # model, optimizer, temperature, ... of the wrapped objective
    if name.startswith('__') or name in ('objective', 'superpixels'):
      raise AttributeError(name)
    return getattr(self.objective, name)
