"""Per-pixel class maps of a Segmenter checkpoint (``python -m cast_jax.segment`` with a segmentation checkpoint).

Each image goes through what the original's single-scale evaluation does (``segm/eval/miou_cast``): resize with
kept ratio to fit ``img_scale`` (mmseg's test ``Resize``), normalise with the Segmenter's constants, the sliding
window of ``cast_jax.sliding_window`` (per-window SEEDS with the x255 wrap, averaged logits), then the window
grid's merged logits are resized bilinearly once, straight to the image's own size, and the argmax taken there,
as the ``miou`` evaluator does. The model compiles once, for one static batch of windows, whatever the image sizes.

Settings come from the checkpoint: a workdir's config.json (``data.crop_size``, ``window_stride``,
``window_batch``, ``img_scale``, its superpixels); for a converted ``.npz`` the window is the model's
``image_size`` (the crop it was trained on: 512 for ADE20K, 480 for Pascal Context), the stride window - 32
(miou_cast's), ``img_scale`` (4 x window, window) (ADE20K's (2048, 512)) and the Segmenter's SEEDS. Each can be
overridden.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from cast_jax import xla_cpu
from cast_jax import visualize
from cast_jax.data.segmentation import SegmentationEval
from cast_jax.models.variants import ModelSpec, build_model
from cast_jax.run_folder import load_variables
from cast_jax.sliding_window import SlidingWindow, sliding_window_inference
from cast_jax.superpixels import SuperpixelConfig, preset, seeds_grid


@dataclasses.dataclass(frozen=True)
class ClassMapSettings:
  """Window and stride (px), windows per model call, the test resize's (long, short) ``img_scale``, and SEEDS."""

  window: int
  stride: int
  window_batch: int = 2
  img_scale: tuple[int, int] = (2048, 512)
  superpixels: SuperpixelConfig = dataclasses.field(default_factory=lambda: preset('segmentation'))


def settings_for(path, spec: ModelSpec, window: Optional[int] = None, stride: Optional[int] = None,
                 window_batch: Optional[int] = None,
                 img_scale: Optional[Sequence[int]] = None) -> ClassMapSettings:
  """The checkpoint's settings (module docstring); arguments that are not None override them."""
  config_file = pathlib.Path(path).expanduser() / 'config.json'
  if config_file.is_file():
    data = json.loads(config_file.read_text())['data']
    overrides = dict(data.get('superpixel_overrides') or {}, invert_uint8=bool(data.get('invert_quirk', True)))
    found = ClassMapSettings(window=int(data['crop_size']), stride=int(data.get('window_stride') or data['crop_size']),
                             window_batch=int(data.get('window_batch') or 2), img_scale=tuple(data['img_scale']),
                             superpixels=preset(data.get('superpixels', 'segmentation'), **overrides))
  else:
    size = int(spec.image_size)
    found = ClassMapSettings(window=size, stride=max(8, size - 32), img_scale=(4 * size, size))
  changes = {k: v for k, v in dict(window=window, stride=stride, window_batch=window_batch).items() if v is not None}
  if window is not None and stride is None:
    changes['stride'] = max(8, window - 32)
  if img_scale is not None:
    changes['img_scale'] = tuple(int(v) for v in img_scale)
  elif window is not None and not config_file.is_file():
    changes['img_scale'] = (4 * window, window)
  return dataclasses.replace(found, **changes)


class ClassMapSegmenter:
  """Image array in, (H, W) class indices out, for a Segmenter checkpoint (``ModelSpec.seg_classes`` > 0)."""

  def __init__(self, spec: ModelSpec, variables: dict[str, Any], settings: ClassMapSettings):
    if not spec.seg_classes:
      raise ValueError('this checkpoint has no segmentation decoder (seg_classes = 0): it gives hierarchies, not '
                       'class maps (python -m cast_jax.segment shows its hierarchy)')
    window = settings.window
    per_window = settings.superpixels.segments_for(window, window)
    grid = seeds_grid(window, window, per_window)
    needed = max(per_window, grid.count if grid is not None else 0)
    # Slots for every superpixel of a window: a converted .npz records the converter's default (196), while a
    # 512 px window has 1024 SEEDS cells. Extra slots are masked and change nothing.
    self.spec = spec.replace(max_segments=max(int(spec.max_segments), needed))
    self.settings = settings
    self.window = SlidingWindow(window=window, stride=settings.stride, window_batch=settings.window_batch,
                                superpixels=settings.superpixels)
    self.recipe = SegmentationEval(img_scale=tuple(settings.img_scale))
    model = build_model(self.spec)
    variables = {k: variables[k] for k in ('params', 'batch_stats') if k in variables}
    forward = xla_cpu.jit(lambda v, x, s: model.apply(v, x, s, train=False)['masks'])
    self._apply = lambda images, superpixels: forward(variables, images, superpixels)

  @classmethod
  def from_checkpoint(cls, path, **overrides) -> 'ClassMapSegmenter':
    """A converted Segmenter ``.npz`` or a segmentation workdir; ``overrides`` as ``settings_for``'s."""
    spec, variables = load_variables(path)
    return cls(spec, variables, settings_for(path, spec, **overrides))

  @property
  def num_classes(self) -> int:
    return int(self.spec.seg_classes)

  def logits(self, image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> (H, W, C) float32 merged window logits at the image's own size."""
    image = visualize.check_image(image, 'image')
    normalized = self.recipe({'image': image})['image']
    # The window grid's merged logits go straight back to the image's own pixels (one resize, as the original's
    # merge_windows to ori_shape), not through the test resize's size.
    return sliding_window_inference(self._apply, normalized, self.window, max_segments=self.spec.max_segments,
                                    out_size=image.shape[:2])['merged_logits']

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> (H, W) int32 class indices."""
    return self.logits(image).argmax(-1).astype(np.int32)


def class_colours(classes: np.ndarray) -> np.ndarray:
  """(H, W) class indices -> (H, W, 3) uint8 in the project's fixed palette (class c: PALETTE[c % 256])."""
  return visualize.colorize(classes)


def write_class_map(out_dir: pathlib.Path, name: str, image: np.ndarray, classes: np.ndarray) -> dict[str, pathlib.Path]:
  """``NAME_classes.png`` (the indices: 8-bit grey for up to 256 classes, else 16-bit), ``NAME_classes_colour.png``
  (each class in its palette colour) and ``NAME_classes_overlay.png`` (the colours over the image at half
  strength, with class boundaries)."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  classes = np.asarray(classes)
  if classes.min() < 0 or classes.max() > 65535:
    raise ValueError(f'class indices must be in [0, 65535]; got [{classes.min()}, {classes.max()}]')
  paths = {'classes': out_dir / f'{name}_classes.png', 'colour': out_dir / f'{name}_classes_colour.png',
           'overlay': out_dir / f'{name}_classes_overlay.png'}
  if classes.max() <= 255:
    Image.fromarray(classes.astype(np.uint8)).save(paths['classes'])
  else:
    Image.fromarray(classes.astype(np.uint16)).save(paths['classes'])
  colours = class_colours(classes)
  visualize.save_png(colours, paths['colour'])
  blend = ((image.astype(np.uint16) + colours.astype(np.uint16)) // 2).astype(np.uint8)
  visualize.save_png(visualize.overlay_boundaries(blend, classes, color=(255, 255, 255)), paths['overlay'])
  return paths
