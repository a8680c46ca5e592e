"""Scores each hierarchy level of a CAST checkpoint against PartWorld's object and part masks.

    python -m cast_jax.evaluate.score_hierarchy --checkpoint=/tmp/cast_demo --vit-checkpoint=/tmp/vit_demo

Each segment is labelled with the majority ground-truth class of its pixels, then mIoU (percent; object:
background vs object, 2 classes; parts: background and the 28 part classes). Rows: the superpixels alone,
each level of CAST's hierarchy, and, with --vit-checkpoint, k-means on the ViT baseline's patch features with
the same number of segments as each level (upsampled to pixels, nearest). Prints one JSON line per row.
The images are rendered with the palette the run trained on (its config's ``data.palette``; 'random' for a
converted .npz), unless --palette says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from cast_jax import xla_cpu
from cast_jax.data import partworld
from cast_jax.data.augment import normalize
from cast_jax.evaluate.segment_scores import SegmentScore
from cast_jax.models.variants import build_encoder
from cast_jax.run_folder import RunFolder, encoder_only, load_variables
from cast_jax.segment import HierarchySegmenter, resize_nearest

NUM_PART_CLASSES = 29  # background + 28 parts


def kmeans(points: np.ndarray, k: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
  """(N, D) -> (N,) cluster ids; k-means++ initialisation, Lloyd iterations, on L2-normalised points."""
  points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
  squared_distances = lambda centres: ((points[:, None] - np.asarray(centres)[None]) ** 2).sum(-1)  # (N, k)
  rng = np.random.default_rng(seed)
  k = min(k, len(points))
  centres = [points[rng.integers(len(points))]]
  for _ in range(1, k):
    dist = squared_distances(centres).min(axis=1)
    centres.append(points[rng.choice(len(points), p=dist / dist.sum())] if dist.sum() > 0 else points[0])
  centres = np.asarray(centres)
  for _ in range(iterations):
    ids = squared_distances(centres).argmin(axis=1)
    for c in range(k):
      if np.any(ids == c):
        centres[c] = points[ids == c].mean(0)
  return squared_distances(centres).argmin(axis=1)


def run_palette(checkpoint: str) -> str:
  """PartWorld's palette in a run folder's config ('random' for a .npz or a run from before the option)."""
  folder = RunFolder(checkpoint)
  if not folder.is_run():
    return 'random'
  return folder.read_config().get('data', {}).get('palette', 'random')


def score(checkpoint: str, vit_checkpoint: str | None, num_images: int, num_segments: int | None, seed: int,
          palette: str | None = None):
  palette = palette or run_palette(checkpoint)
  segmenter = HierarchySegmenter.from_checkpoint(checkpoint, num_segments=num_segments)
  size = segmenter.spec.image_size
  clusters = segmenter.spec.clusters()
  dataset = partworld.PartWholeDataset(num_images, image_size=size, seed=seed, split='validation',
                                       palette=palette)
  rows = {'superpixels': None, **{f'cast_level{l + 1} ({k})': None for l, k in enumerate(clusters)}}
  if vit_checkpoint:
    vit_spec, vit_variables = encoder_only(*load_variables(vit_checkpoint))
    vit = build_encoder(vit_spec)
    vit_tokens = xla_cpu.jit(lambda v, x: vit.apply(v, x, None, train=False)['patch_tokens'])
    rows.update({f'vit_kmeans ({k})': None for k in clusters})
  scores = {name: (SegmentScore(2), SegmentScore(NUM_PART_CLASSES)) for name in rows}

  def add(name, segments, example):
    scores[name][0].update(segments, example['object_mask'].astype(np.int64))
    scores[name][1].update(segments, example['part_mask'])

  for index in range(num_images):
    example = dataset[index]
    # One image per call: as in the original, the token count is the batch's largest superpixel id + 1, so
    # batch-mates with more superpixels can change an image's hierarchy (its empty token slots take part).
    result = segmenter([example['image']])[0]
    add('superpixels', result['superpixels'], example)
    for level, k in enumerate(clusters):
      add(f'cast_level{level + 1} ({k})', result['hierarchy'][level], example)
    if vit_checkpoint:
      tokens = np.asarray(vit_tokens(vit_variables, normalize(example['image'])[None]))[0]
      grid = int(round(len(tokens) ** 0.5))
      for k in clusters:
        ids = kmeans(tokens.astype(np.float64), k, seed=index).reshape(grid, grid)
        add(f'vit_kmeans ({k})', resize_nearest(ids, size, size), example)
  return [{'segments': name, 'object_miou': round(s[0].miou(), 2), 'part_miou': round(s[1].miou(), 2),
           'num_images': num_images, 'palette': palette} for name, s in scores.items()]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m cast_jax.evaluate.score_hierarchy',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--checkpoint', required=True, help='a CAST workdir or converted .npz')
  parser.add_argument('--vit-checkpoint', default=None, help='the ViT baseline, for the k-means rows')
  parser.add_argument('--num-images', type=int, default=256)
  parser.add_argument('--num-segments', type=int, default=49, help='superpixels per image (SEEDS)')
  parser.add_argument('--seed', type=int, default=0, help='PartWorld seed of the validation images')
  parser.add_argument('--palette', default=None, choices=partworld.PALETTES,
                      help="PartWorld's colours (default: the --checkpoint run's data.palette)")
  args = parser.parse_args(argv)
  rows = score(args.checkpoint, args.vit_checkpoint, args.num_images, args.num_segments, args.seed, args.palette)
  for row in rows:
    print(json.dumps(row), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
