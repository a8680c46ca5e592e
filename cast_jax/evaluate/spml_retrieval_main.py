r"""SPML's segment retrieval as one command: build the memory from a list of labelled images, score another list.

    python -m cast_jax.evaluate.spml_retrieval_main --checkpoint=checkpoint_0149.pth.tar --data_dir=VOC_ROOT \
        --memory_list=VOC_ROOT/train+.txt --query_list=VOC_ROOT/val.txt --num_classes=21
    python -m cast_jax.evaluate.spml_retrieval_main --config=configs/spml_cast_s_voc_retrieval.py \
        --checkpoint=checkpoint_0149.pth.tar --data_dir=VOC_ROOT   # the lists and settings from the config

The published CAST-S COCO MoCo checkpoint at epoch 150 (``cast_jax.published`` 'moco_cast_small_coco_ep150',
``snapshots/moco/coco/cast_small/checkpoint_0149.pth.tar``) gives 38.4 mIoU on VOC 2012 val this way in the
paper ("before fine-tuning"; not reproduced here: no VOC run was made).

List files are SPML's: one ``image_path label_path [instance_path]`` line per image, paths relative to
``--data_dir``. Labels are class-index PNGs (palette or grayscale; the raw index is read, never the palette's
luminance), 255 ignored. Prints one JSON line: mIoU, per-class IoU, pixel accuracy and the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image


def read_list(data_dir: str, list_path: str, need_labels: bool = True) -> list[tuple[str, Optional[str]]]:
  """(image path, label path or None) per line of an SPML list file; missing files raise, naming the line."""
  entries = []
  with open(list_path) as handle:
    for number, line in enumerate(handle, start=1):
      parts = line.split()
      if not parts:
        continue
      image = os.path.join(data_dir, parts[0])
      label = os.path.join(data_dir, parts[1]) if len(parts) > 1 else None
      if need_labels and label is None:
        raise ValueError(f'{list_path}:{number}: {parts[0]} has no label path; retrieval needs "image label" lines')
      for path in (image, label):
        if path is not None and not os.path.isfile(path):
          raise FileNotFoundError(f'{list_path}:{number} names {path}, which does not exist (paths are relative '
                                  f'to --data_dir={data_dir})')
      entries.append((image, label))
  if not entries:
    raise ValueError(f'{list_path} lists no images')
  return entries


def read_label(path: str) -> np.ndarray:
  """A class-index PNG -> (H, W) uint8 ids. Palette images give their indices (not ``convert('L')``)."""
  with Image.open(path) as image:
    if image.mode not in ('P', 'L', 'I', 'I;16'):
      raise ValueError(f'{path}: label images must hold class indices (palette or grayscale PNG); got mode '
                       f'{image.mode}. Convert colour-coded labels to indices first.')
    return np.asarray(image).astype(np.uint8)


def read_items(entries) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
  for image_path, label_path in entries:
    with Image.open(image_path) as image:
      rgb = np.asarray(image.convert('RGB'))
    label = read_label(label_path)
    if label.shape != rgb.shape[:2]:
      raise ValueError(f'{label_path}: label {label.shape} does not match its image {image_path} {rgb.shape[:2]}')
    yield pathlib.Path(image_path).stem, rgb, label


def retrieval_spec(source, num_clusters: Optional[Sequence[int]], max_segments: int, image_size: int = 512):
  """The ``cast_seg`` segmentation stage SPML builds around a ``cast_seg_pretrain`` checkpoint's sizes."""
  from cast_jax.models import ModelSpec

  size = source.size()
  return ModelSpec(kind='cast_seg', embed_dim=size['embed_dim'], depth=tuple(size['depth']),
                   num_heads=size['num_heads'], num_clusters=tuple(num_clusters) if num_clusters else None,
                   image_size=image_size, max_segments=max_segments)


REQUIRED = ('checkpoint', 'data_dir', 'memory_list', 'query_list')


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m cast_jax.evaluate.spml_retrieval_main',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='', help='a retrieval config (configs/spml_*_retrieval.py[:test]); its '
                      'fields are the defaults of the options below, which override them')
  parser.add_argument('--checkpoint', default='', help='the cast_seg_pretrain MoCo checkpoint (.pth.tar/.npz)')
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--memory_list', default='', help='SPML list of the memory images (train+ for VOC)')
  parser.add_argument('--query_list', default='', help='SPML list of the scored images (val for VOC)')
  parser.add_argument('--num_classes', type=int, default=21)
  parser.add_argument('--test_image_size', type=int, default=512)
  parser.add_argument('--num_superpixels', type=int, default=1024)
  parser.add_argument('--max_segments', type=int, default=1024, help='static token slots (>= SEEDS output)')
  parser.add_argument('--num_clusters', default='', help='comma-separated, default 320,160,80,40 (cast_small)')
  parser.add_argument('--top_k', type=int, default=20)
  parser.add_argument('--chunk', type=int, default=4096, help='memory rows per top-k step')
  return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The options, with a ``--config`` file's fields as defaults; the four paths must be set one way or the
  other (an error names the missing ones)."""
  parser = make_parser()
  known, _ = parser.parse_known_args(argv)
  if known.config:
    from cast_jax.train.config_lib import load_config_file  # pylint: disable=import-outside-toplevel

    fields = dict(load_config_file(known.config).to_dict())
    options = {action.dest for action in parser._actions}  # pylint: disable=protected-access
    unknown = sorted(set(fields) - options)
    if unknown:
      parser.error(f'{known.config} has fields {unknown} that are not options of this command')
    if isinstance(fields.get('num_clusters'), (tuple, list)):
      fields['num_clusters'] = ','.join(str(c) for c in fields['num_clusters'])
    parser.set_defaults(**fields)
  args = parser.parse_args(argv)
  missing = [name for name in REQUIRED if not getattr(args, name)]
  if missing:
    parser.error(f'set {", ".join("--" + m for m in missing)} (on the command line or in the --config file)')
  return args


def run(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)

  from cast_jax import convert
  from cast_jax.evaluate import spml_retrieval as sr

  source = convert.convert_checkpoint(args.checkpoint).spec
  clusters = [int(c) for c in args.num_clusters.split(',') if c.strip()] or None
  spec = retrieval_spec(source, clusters, args.max_segments)
  model, variables = sr.load_moco_for_retrieval(args.checkpoint, spec)
  apply = sr.make_apply(model, variables)
  opts = dict(test_image_size=args.test_image_size, num_superpixels=args.num_superpixels,
              max_segments=args.max_segments)
  memory_entries = read_list(args.data_dir, args.memory_list)
  query_entries = read_list(args.data_dir, args.query_list)
  memory = sr.memory_from_images(apply, read_items(memory_entries), args.num_classes, chunk=args.chunk,
                                 top_k=args.top_k, **opts)
  scores = sr.score_split(apply, read_items(query_entries), memory, args.num_classes, **opts)
  result = {'miou': scores['miou'], 'iou': scores['iou'].tolist(), 'pixel_acc': scores['pixel_acc'],
            'tp': scores['tp'].tolist(), 'tp_fp': scores['tp_fp'].tolist(), 'tp_fn': scores['tp_fn'].tolist(),
            'memory_size': memory.size, 'queries': len(query_entries)}
  return result


def main(argv: Optional[Sequence[str]] = None) -> None:
  print(json.dumps(run(argv)))


if __name__ == '__main__':
  main(sys.argv[1:])
