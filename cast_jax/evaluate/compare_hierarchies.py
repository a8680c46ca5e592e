"""Pictures of the hierarchies that several CAST checkpoints give the same PartWorld images (before / after).

    python -m cast_jax.evaluate.compare_hierarchies --out docs/hierarchy_before_after.png \
        untrained=/tmp/cast_demo_init trained=/tmp/cast_demo

One row per validation image: the image, its ground-truth parts, then for each checkpoint (named NAME=PATH, a
workdir or a converted .npz) the boundaries of every hierarchy level over the image. Each checkpoint uses the
superpixels its run trained with (``HierarchySegmenter.from_checkpoint``), so runs with the same data settings get the
same superpixels. The images are rendered with the PartWorld palette the runs trained on (their configs'
``data.palette``, as ``score_hierarchy`` does; 'random' for a converted .npz) unless --palette names one. Tiles are
enlarged by ``--scale`` (nearest) so that 64 px images stay readable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from cast_jax import visualize
from cast_jax.data import partworld
from cast_jax.evaluate.score_hierarchy import run_palette
from cast_jax.segment import HierarchySegmenter


def _enlarge(tile: np.ndarray, scale: int) -> np.ndarray:
  return np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)


def images_palette(checkpoints: Sequence[tuple[str, str]]) -> str:
  """The PartWorld palette the checkpoints trained on; an error when they trained on different ones."""
  palettes = {name: run_palette(path) for name, path in checkpoints}
  if len(set(palettes.values())) != 1:
    raise ValueError(f'the checkpoints trained on different PartWorld palettes {palettes}; '
                     'choose the images with --palette random|class')
  return next(iter(palettes.values()))


def compare(checkpoints: Sequence[tuple[str, str]], num_images: int = 4, seed: int = 0, scale: int = 3,
            first_index: int = 0, num_segments: int | None = None, palette: str | None = None) -> np.ndarray:
  """The comparison picture, uint8 (H, W, 3); checkpoints: (name, path) pairs, all CAST at one image size.
  num_segments: SEEDS superpixels per image (default: a workdir's own setting, 196 for a converted .npz).
  palette: PartWorld's image palette (default: the one the checkpoints trained on)."""
  palette = palette or images_palette(checkpoints)
  segmenters = [(name, HierarchySegmenter.from_checkpoint(path, num_segments=num_segments)) for name, path in checkpoints]
  sizes = {s.spec.image_size for _, s in segmenters}
  if len(sizes) != 1:
    raise ValueError(f'the checkpoints were trained at different image sizes {sorted(sizes)}; compare like with like')
  size = sizes.pop()
  dataset = partworld.PartWholeDataset(first_index + num_images, image_size=size, seed=seed, split='validation',
                                       palette=palette)
  part_colours = partworld.part_palette()  # the ground-truth tile's fixed colour per part id
  titles = ['image', 'parts']
  for name, segmenter in segmenters:
    titles += [f'{name} L{level + 1}' for level in range(len(segmenter.spec.clusters()))]
  rows = []
  for index in range(first_index, first_index + num_images):
    example = dataset[index]
    row = [example['image'], part_colours[example['part_mask']]]
    for _, segmenter in segmenters:
      result = segmenter([example['image']])[0]  # one image per call: batch-mates would change the token count
      row += [visualize.overlay_boundaries(example['image'], level) for level in result['hierarchy']]
    rows.append([_enlarge(tile, scale) for tile in row])
  return visualize.tile_grid(rows, titles)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m cast_jax.evaluate.compare_hierarchies',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('checkpoints', nargs='+', help='NAME=PATH (a workdir or a converted .npz), in column order')
  parser.add_argument('--out', required=True, help='the PNG to write')
  parser.add_argument('--num-images', type=int, default=4)
  parser.add_argument('--first-index', type=int, default=0, help='first PartWorld validation image')
  parser.add_argument('--seed', type=int, default=0, help='PartWorld seed of the validation images')
  parser.add_argument('--scale', type=int, default=3, help='enlarge every tile this many times (nearest)')
  parser.add_argument('--num-segments', type=int, default=None,
                      help="superpixels per image (default: a workdir's own setting, 196 for a converted .npz)")
  parser.add_argument('--palette', choices=partworld.PALETTES, default=None,
                      help="PartWorld's image colours (default: the palette the checkpoints trained on)")
  args = parser.parse_args(argv)
  pairs = []
  for item in args.checkpoints:
    name, sep, path = item.partition('=')
    if not sep or not name or not path:
      parser.error(f'checkpoints are NAME=PATH; got {item!r}')
    pairs.append((name, path))
  picture = compare(pairs, args.num_images, args.seed, args.scale, args.first_index, args.num_segments,
                    args.palette)
  print(f'wrote {visualize.save_png(picture, args.out)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
