r"""How well a network's features recognise one PartWorld object across two renderings.

    python -m cast_jax.evaluate.rendering_retrieval --checkpoint=/tmp/cast_deit_demo [--palette=random]

Each of ``--num`` validation objects is rendered twice (``make_example``'s appearance 0 and 1: the same class,
parts and pose; new colours, textures, background and clutter), resized to the run's image size and fed through
the encoder with SEEDS superpixels as in evaluation. For every first rendering the second rendering with the
most similar feature (cosine) is found among all ``--num``. Prints the percentage where that is its own
re-rendering (instance top-1; chance 100 / num) and where it at least has the same class.

This measures how hard the MoCo demo's cross-rendering task is for a given network (README, "Results on the
built-in dataset"): a network that knows the classes can still find few exact copies.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

import numpy as np
from PIL import Image

from cast_jax.data import augment, partworld


def render_pairs(num: int, size: int, source_size: int = 96, palette: str = 'random',
                 split: str = 'validation', appearance: int = 1):
  """(first (num, size, size, 3) uint8, second (num, size, size, 3) uint8, labels (num,) int64): renderings
  0 and ``appearance`` of validation objects 0..num-1, rendered at source_size and resized bilinearly."""
  firsts, seconds, labels = [], [], []
  for index in range(num):
    pair = [partworld.make_example(index, image_size=source_size, split=split, appearance=a, palette=palette)
            for a in (0, appearance)]
    firsts.append(_resize(pair[0]['image'], size))
    seconds.append(_resize(pair[1]['image'], size))
    labels.append(pair[0]['label'])
  return np.stack(firsts), np.stack(seconds), np.array(labels, np.int64)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  if image.shape[0] == size:
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def retrieval_scores(features_first: np.ndarray, features_second: np.ndarray, labels: np.ndarray) -> dict:
  """features_*: (N, D), row i of both from object i; labels (N,). Cosine nearest neighbour of each first
  rendering among the second renderings -> {'instance_top1', 'class_match', 'chance', 'num'} in percent."""
  if features_first.shape != features_second.shape or features_first.ndim != 2:
    raise ValueError(f'features must both be (N, D); got {features_first.shape} and {features_second.shape}')
  a = features_first / np.linalg.norm(features_first, axis=1, keepdims=True)
  b = features_second / np.linalg.norm(features_second, axis=1, keepdims=True)
  nearest = (a @ b.T).argmax(axis=1)
  num = len(labels)
  return {'instance_top1': float((nearest == np.arange(num)).mean() * 100),
          'class_match': float((labels[nearest] == labels).mean() * 100), 'chance': 100.0 / num, 'num': num}


def encode(feature_fn: Callable, images: np.ndarray, superpixel_fn: Callable, batch_size: int = 128) -> np.ndarray:
  """(N, S, S, 3) uint8 -> (N, D) features via ``feature_fn(normalised images, superpixels)`` in batches."""
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    superpixels = np.stack([superpixel_fn(im) for im in chunk])
    out.append(np.asarray(feature_fn(np.stack([augment.normalize(im) for im in chunk]), superpixels)))
  return np.concatenate(out)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True, help='a cast_jax workdir (or converted .npz)')
  parser.add_argument('--num', type=int, default=512, help='validation objects (the candidates of each query)')
  parser.add_argument('--palette', default='random', choices=partworld.PALETTES)
  args = parser.parse_args(argv)

  from cast_jax import run_folder, xla_cpu  # pylint: disable=import-outside-toplevel
  from cast_jax.models import build_model  # pylint: disable=import-outside-toplevel
  from cast_jax.superpixels import compute_superpixels, preset  # pylint: disable=import-outside-toplevel

  spec, variables = run_folder.encoder_only(*run_folder.load_variables(args.checkpoint))
  model = build_model(spec)
  apply = xla_cpu.jit(lambda v, x, s: model.apply(v, x, s, train=False)['features'])
  # The demo's superpixels (configs use 'moco' / 'deit' presets with these overrides at 64 px).
  config = preset('moco', num_segments=49, iterations=10)
  first, second, labels = render_pairs(args.num, spec.image_size, palette=args.palette)
  features = [encode(lambda x, s: apply(variables, x, s), images, lambda im: compute_superpixels(im, config))
              for images in (first, second)]
  print(json.dumps({'checkpoint': args.checkpoint, **retrieval_scores(*features, labels)}))


if __name__ == '__main__':
  main()
