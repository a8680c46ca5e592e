"""Hierarchical segmentation of your own images: ``python -m cast_jax.segment``.

    python -m cast_jax.segment --checkpoint=cast_small_in1k.npz --out=/tmp/seg photo.jpg more_photos/

``--checkpoint`` is a converted published checkpoint (``python -m cast_jax.convert``) or one of our training
workdirs. A segmentation checkpoint (a converted Segmenter ``.npz`` or a segmentation workdir: a model with a
class decoder) gives per-pixel class maps instead: ``NAME_classes.png`` (class indices, 8-bit grey, 16-bit
above 256 classes), ``NAME_classes_colour.png`` (the classes in a fixed palette) and
``NAME_classes_overlay.png`` (the colours over the image, with class boundaries), by the original's sliding
window at the image's own size (``cast_jax.segment_classes``; ``--window``, ``--stride``, ``--window-batch``,
``--img-scale`` override the checkpoint's settings). Otherwise, per image it writes ``NAME_superpixels.png`` (mean colours with boundaries), ``NAME_levelL.png``
(level L's boundaries over the image), ``NAME_levelL_ids.png`` (its segments in the fixed palette),
``NAME_panel.png`` (all of it in one picture) and ``NAME.npz`` (``superpixels`` (H, W) and ``hierarchy``
(L, H, W) int32 at the input's resolution).

Resize policy (explicit, ``--resize``): 'stretch' resizes the image to the model's square input (its
``image_size``) and maps the labels back with nearest-neighbour sampling, so any image size works and the
labels cover every input pixel.

Each image is segmented as if it were alone: the original's token count is the largest superpixel id over the
whole batch plus one, so batching users' images together would make one image's hierarchy depend on its
neighbours. Batches here are mapped image by image (``jax.vmap`` over batches of one), which keeps the
throughput of a batch and the result of a single image. Files that cannot be read, decoded or segmented are
listed, counted in the summary line and make the exit status 1; the others are still written.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
from typing import Any, Optional, Sequence

import jax
import numpy as np
from PIL import Image

from cast_jax import xla_cpu
from cast_jax import visualize
from cast_jax.data.augment import normalize
from cast_jax.data.decode import decode_image
from cast_jax.data.sources import IMAGE_EXTENSIONS, list_images
from cast_jax.models.hierarchy import encoder_forward
from cast_jax.models.variants import ModelSpec, build_encoder
from cast_jax.superpixels import compute_superpixels, preset
from cast_jax.run_folder import encoder_only, load_variables

class HierarchySegmenter:
  """Image array in, hierarchy out, for a CAST checkpoint (used by the command and the notebooks).

  superpixels: a preset name of ``cast_jax.superpixels`` ('moco', 'slic', ...); superpixel_overrides change
  its fields, and num_segments its count (at most the model's ``max_segments``).
  """

  def __init__(self, spec: ModelSpec, variables: dict[str, Any], superpixels: str = 'moco',
               num_segments: Optional[int] = None, superpixel_overrides: Optional[dict[str, Any]] = None):
    if not spec.uses_superpixels:
      raise ValueError('this checkpoint is the ViT baseline, not CAST: it has no hierarchy to show')
    self.spec, self.variables = encoder_only(spec, variables)
    overrides = dict(superpixel_overrides or {})
    if num_segments is not None:
      overrides.update(num_segments=int(num_segments), pixels_per_segment=None)
    self.superpixel_config = preset(superpixels, **overrides)
    model = build_encoder(self.spec)

    forward = encoder_forward(model, uses_superpixels=True)

    def alone(variables, image, superpixels):
      """One image as a batch of one: its token count is its own max id + 1 (module docstring)."""
      return forward(variables, image[None], superpixels[None])['hierarchy'][0]  # features are not needed here

    self._forward = xla_cpu.jit(jax.vmap(alone, in_axes=(None, 0, 0)))

  @classmethod
  def from_checkpoint(cls, path, superpixels: Optional[str] = None, loaded=None, **kwargs) -> 'HierarchySegmenter':
    """A converted .npz (superpixels default to 'moco', the published models' SEEDS) or a workdir of ours.

    A workdir's superpixels default to the ones its run trained with (its config.json's data settings), so
    a model trained on small images gets superpixels it can hold. loaded: (spec, variables) already read
    from ``path``.
    """
    spec, variables = loaded if loaded is not None else load_variables(path)
    config_file = pathlib.Path(path) / 'config.json'
    if superpixels is None and config_file.is_file():
      data = json.loads(config_file.read_text())['data']
      superpixels = data['superpixels']
      kwargs.setdefault('superpixel_overrides', data.get('superpixel_overrides'))
    return cls(spec, variables, superpixels=superpixels or 'moco', **kwargs)

  def model_input(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normalized (S, S, 3), superpixels (S, S)) at the model's size S."""
    size = self.spec.image_size
    pixels = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.uint8)
    superpixels = compute_superpixels(pixels, self.superpixel_config, max_segments=self.spec.max_segments)
    return normalize(pixels), superpixels

  def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """uint8 (H, W, 3) images (any sizes) -> per image {'superpixels' (H, W), 'hierarchy' (L, H, W)}.

    Each image's result is the same whichever images it is passed with (module docstring).
    """
    inputs = [self.model_input(visualize.check_image(image, 'images')) for image in images]
    if not inputs:
      return []
    batch = np.stack([x for x, _ in inputs]), np.stack([s for _, s in inputs])
    hierarchy = np.asarray(self._forward(self.variables, *batch))
    results = []
    for image, (_, superpixels), levels in zip(images, inputs, hierarchy):
      height, width = image.shape[:2]
      back = functools.partial(resize_nearest, height=height, width=width)
      results.append({'superpixels': back(superpixels), 'hierarchy': np.stack([back(l) for l in levels])})
    return results


def resize_nearest(ids: np.ndarray, height: int, width: int) -> np.ndarray:
  """(h, w) labels -> (height, width) int32 by nearest-neighbour sampling at pixel centres."""
  rows = np.minimum((np.arange(height) + 0.5) * ids.shape[0] / height, ids.shape[0] - 1).astype(int)
  cols = np.minimum((np.arange(width) + 0.5) * ids.shape[1] / width, ids.shape[1] - 1).astype(int)
  return np.ascontiguousarray(ids[rows][:, cols]).astype(np.int32)


def write_outputs(out_dir: pathlib.Path, name: str, image: np.ndarray, result: dict[str, np.ndarray]) -> None:
  superpixels, hierarchy = result['superpixels'], result['hierarchy']
  visualize.save_png(visualize.overlay_boundaries(visualize.mean_colour(image, superpixels), superpixels),
                     out_dir / f'{name}_superpixels.png')
  for level, ids in enumerate(hierarchy, start=1):
    visualize.save_png(visualize.overlay_boundaries(image, ids), out_dir / f'{name}_level{level}.png')
    visualize.save_png(visualize.colorize(ids), out_dir / f'{name}_level{level}_ids.png')
  visualize.save_png(visualize.hierarchy_panel(image, superpixels, hierarchy), out_dir / f'{name}_panel.png')
  np.savez_compressed(out_dir / f'{name}.npz', superpixels=superpixels, hierarchy=hierarchy)


def find_images(paths: Sequence[str]) -> list[pathlib.Path]:
  found = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      found += list_images(path)
    elif path.is_file():
      found.append(path)
    else:
      raise FileNotFoundError(f'{path}: no such file or folder')
  if not found:
    raise ValueError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {list(paths)}')
  return found


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m cast_jax.segment', description=__doc__.split('\n\n')[0])
  parser.add_argument('inputs', nargs='+', help='images or folders of images')
  parser.add_argument('--checkpoint', required=True, help='converted .npz or a cast_jax workdir')
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--superpixels', default=None,
                      help="superpixel preset: 'moco' (SEEDS), 'slic', ...; default: 'moco' for a converted "
                      'checkpoint, the training superpixels for a workdir')
  parser.add_argument('--num-segments', type=int, default=None, help='superpixel count (default: the preset)')
  parser.add_argument('--batch', type=int, default=8,
                      help='images decoded and run together; each is still segmented as if alone')
  parser.add_argument('--resize', choices=['stretch'], default='stretch', help='see the module docstring')
  classes = parser.add_argument_group('segmentation checkpoints (class maps)')
  classes.add_argument('--window', type=int, default=None, help='sliding window in px (default: the checkpoint\'s)')
  classes.add_argument('--stride', type=int, default=None, help='window stride in px (default: the checkpoint\'s)')
  classes.add_argument('--window-batch', type=int, default=None, help='windows per model call')
  classes.add_argument('--img-scale', type=int, nargs=2, default=None, metavar=('LONG', 'SHORT'),
                       help='test resize: the largest kept-ratio size within LONG x SHORT')
  args = parser.parse_args(argv)
  if args.batch < 1:
    parser.error(f'--batch must be at least 1 (got {args.batch})')
  loaded = load_variables(args.checkpoint)
  if loaded[0].seg_classes:
    return _class_maps(args, loaded)
  segmenter = HierarchySegmenter.from_checkpoint(args.checkpoint, superpixels=args.superpixels,
                                        num_segments=args.num_segments, loaded=loaded)
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = find_images(args.inputs)
  failed, segmented = [], 0
  for start in range(0, len(paths), args.batch):
    chunk, images = [], []
    for path in paths[start:start + args.batch]:
      try:
        image, reason = decode_image(path.read_bytes(), exif_transpose=True)
      except OSError as e:  # unreadable file (permissions, a broken link, a vanished network share)
        image, reason = None, f'{type(e).__name__}: {e}'
      if image is None:
        failed.append(f'{path}: {reason}')
        continue
      chunk.append(path)
      images.append(image)
    for path, image, result in zip(chunk, images, segmenter(images)):
      write_outputs(out_dir, path.stem, image, result)
      segmented += 1
    done = min(start + args.batch, len(paths))
    print(f'[{done}/{len(paths)}] files read: {segmented} segmented, {len(failed)} failed', flush=True)
  for line in failed:
    print(f'skipped unreadable image {line}', file=sys.stderr)
  print(f'{segmented}/{len(paths)} images segmented into {out_dir}'
        + (f'; {len(failed)} failed (listed above)' if failed else ''), flush=True)
  return 1 if failed else 0


def _read(path: pathlib.Path) -> tuple[Optional[np.ndarray], Optional[str]]:
  try:
    return decode_image(path.read_bytes(), exif_transpose=True)
  except OSError as e:  # unreadable file (permissions, a broken link, a vanished network share)
    return None, f'{type(e).__name__}: {e}'


def _class_maps(args, loaded) -> int:
  """Class maps of a Segmenter checkpoint, one image at a time (sizes vary; the windows compile once)."""
  from cast_jax.segment_classes import ClassMapSegmenter, settings_for, write_class_map  # pylint: disable=import-outside-toplevel

  spec, variables = loaded
  settings = settings_for(args.checkpoint, spec, window=args.window, stride=args.stride,
                          window_batch=args.window_batch, img_scale=args.img_scale)
  segmenter = ClassMapSegmenter(spec, variables, settings)
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = find_images(args.inputs)
  failed, segmented = [], 0
  print(f'{segmenter.num_classes} classes; window {settings.window}, stride {settings.stride}, '
        f'test resize within {settings.img_scale[0]}x{settings.img_scale[1]}', flush=True)
  for i, path in enumerate(paths, start=1):
    image, reason = _read(path)
    if image is None:
      failed.append(f'{path}: {reason}')
    else:
      write_class_map(out_dir, path.stem, image, segmenter(image))
      segmented += 1
    print(f'[{i}/{len(paths)}] files read: {segmented} segmented, {len(failed)} failed', flush=True)
  for line in failed:
    print(f'skipped unreadable image {line}', file=sys.stderr)
  print(f'{segmented}/{len(paths)} images segmented into class maps in {out_dir}'
        + (f'; {len(failed)} failed (listed above)' if failed else ''), flush=True)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
