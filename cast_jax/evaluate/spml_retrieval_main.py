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
luminance), 255 ignored. Prints one JSON line: mIoU, per-class IoU, pixel accuracy, the counts, and the
score of predicting class 0 (background) everywhere on the same pixels.

PartWorld, no download (``--partworld``; ``configs/spml_demo_retrieval.py``): the memory is built from the first
``--memory_images`` of PartWorld's train split and the first ``--query_images`` of its validation split are
scored, with ``partworld_segmentation``'s object labels (9 classes: background + the 8 objects), rendered at
``--partworld_image_size`` with ``--palette`` (the one the checkpoint was pretrained on)::

    python -m cast_jax.evaluate.spml_retrieval_main --config=configs/spml_demo_retrieval.py --checkpoint=/tmp/cast_demo

Checkpoints: a PyTorch ``.pth.tar`` (converted here), a converted ``.npz`` or a cast_jax run folder (its latest
checkpoint). A ``cast_seg_pretrain`` MoCo checkpoint runs as SPML's ``cast_seg`` segmentation stage with the
projector on every fused token (``spml_retrieval.load_moco_for_retrieval``); a ``cast`` MoCo checkpoint (the
MoCo demo, ``configs/demo.py``) has no fused tokens and runs through ``spml_retrieval.last_stage_model``: the
projector on each last-stage token, a superpixel taking its level-3 segment's token, prototypes over the
last-level segments (``models.spml.LastStageEmbedding`` says why). ``--untrained`` replaces the weights by the
seeded initialisation the trainer starts from (``--seed``; the same dummy batch as ``train.loop``), for the
untrained network's score on the same protocol.
"""

from __future__ import annotations

import argparse
import functools
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
LIST_OPTIONS = REQUIRED[1:]  # what --partworld replaces


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m cast_jax.evaluate.spml_retrieval_main',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='', help='a retrieval config (configs/spml_*_retrieval.py[:test]); its '
                      'fields are the defaults of the options below, which override them')
  parser.add_argument('--checkpoint', default='', help='a MoCo checkpoint: cast_seg_pretrain (.pth.tar, .npz) or '
                      'a cast run folder / .npz (the MoCo demo)')
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
  parser.add_argument('--segment_level', type=int, default=0, help='the pooling level whose segments are the '
                      'prototypes (1-based); 0: the last (SPML\'s level 4)')
  parser.add_argument('--untrained', action='store_true', help='score the seeded initialisation of the '
                      "checkpoint's model (same architecture, no training) instead of its weights")
  parser.add_argument('--seed', type=int, default=0, help='the --untrained initialisation (a run\'s config.seed)')
  partworld = parser.add_argument_group('PartWorld (no download; replaces --data_dir and the two lists)')
  partworld.add_argument('--partworld', action=argparse.BooleanOptionalAction, default=False,
                         help='memory from PartWorld train, queries from PartWorld validation, object labels '
                         '(background + 8 classes); --no-partworld reads list files under a PartWorld config')
  partworld.add_argument('--memory_images', type=int, default=1024)
  partworld.add_argument('--query_images', type=int, default=512)
  partworld.add_argument('--partworld_image_size', type=int, default=64)
  partworld.add_argument('--palette', default='random', help="'random' or 'class' (the MoCo demo's)")
  partworld.add_argument('--seg_labels', default='objects', help="'objects' (9 classes) or 'parts' (29)")
  partworld.add_argument('--partworld_seed', type=int, default=0)
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
  if args.partworld:
    given = [name for name in LIST_OPTIONS if getattr(args, name)]
    if given:
      parser.error(f'--partworld generates its images; drop {", ".join("--" + g for g in given)} (or drop '
                   '--partworld to read list files)')
    from cast_jax.data.partworld import PALETTES  # pylint: disable=import-outside-toplevel
    from cast_jax.data.partworld_segmentation import num_classes  # pylint: disable=import-outside-toplevel

    if args.palette not in PALETTES:
      parser.error(f'--palette must be one of {PALETTES} (the rendering the checkpoint trained on); got '
                   f'{args.palette!r}')

    try:
      classes = num_classes(args.seg_labels)
    except ValueError as e:
      parser.error(str(e))
    if args.num_classes != classes:
      parser.error(f'PartWorld {args.seg_labels!r} labels have {classes} classes; set --num_classes={classes} '
                   f'(got {args.num_classes})')
    if min(args.memory_images, args.query_images) < 1:
      parser.error(f'--memory_images and --query_images must be >= 1; got {args.memory_images}, '
                   f'{args.query_images}')
    required = ('checkpoint',)
  else:
    required = REQUIRED
  missing = [name for name in required if not getattr(args, name)]
  if missing:
    parser.error(f'set {", ".join("--" + m for m in missing)} (on the command line or in the --config file)')
  return args


def partworld_items(split: str, count: int, image_size: int = 64, palette: str = 'random',
                    labels: str = 'objects', seed: int = 0) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
  """(name, (S, S, 3) uint8 image, (S, S) uint8 class ids) of the first ``count`` PartWorld examples of
  ``split``, as ``read_items`` gives list-file images (``data.partworld_segmentation``: every pixel labelled)."""
  from cast_jax.data.partworld_segmentation import PartWorldSegmentation  # pylint: disable=import-outside-toplevel

  source = PartWorldSegmentation(count, image_size=image_size, seed=seed, split=split, labels=labels,
                                 palette=palette)
  for index in range(count):
    example = source[index]
    yield f'partworld_{split}_{index:05d}', example['image'], example['label_map']


def load_checkpoint(path: str):
  """(spec, {'params', 'batch_stats'}) of a converted ``.npz`` or run folder, or None for a PyTorch file (the
  cast_seg_pretrain path converts it itself)."""
  from cast_jax.run_folder import load_variables  # pylint: disable=import-outside-toplevel

  location = pathlib.Path(path).expanduser()
  if location.is_dir() or location.suffix == '.npz':
    return load_variables(location)
  return None


def initial_variables(spec, seed: int):
  """The seeded initialisation ``train.loop.initial_variables`` gives a run of ``spec`` with config.seed=seed
  and no init_checkpoint (the same dummy batch: zeros, superpixel ids 0..7)."""
  import jax  # pylint: disable=import-outside-toplevel

  fresh = jax.device_get(_seeded_init(spec)(jax.random.PRNGKey(seed)))
  return {k: fresh[k] for k in ('params', 'batch_stats') if k in fresh}


@functools.lru_cache(maxsize=4)
def _seeded_init(spec):
  """jit(rng -> variables) of ``spec``'s model, compiled once per spec whatever the seed."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from cast_jax.models import build_model  # pylint: disable=import-outside-toplevel

  size = spec.image_size
  images = jnp.zeros((2, size, size, 3), jnp.float32)
  superpixels = jnp.broadcast_to(jnp.arange(size * size, dtype=jnp.int32).reshape(size, size) % 8, (2, size, size))
  model = build_model(spec)
  return jax.jit(lambda rng: model.init({'params': rng, 'dropout': rng}, images, superpixels))


def retrieval_model(args, clusters):
  """(model, variables) for ``args.checkpoint``: SPML's cast_seg stage for cast_seg_pretrain checkpoints, the
  last-stage reading for the demo's ``cast`` ones (module docstring)."""
  from cast_jax import convert  # pylint: disable=import-outside-toplevel
  from cast_jax.evaluate import spml_retrieval as sr  # pylint: disable=import-outside-toplevel

  loaded = load_checkpoint(args.checkpoint)
  source = loaded[0] if loaded is not None else convert.convert_checkpoint(args.checkpoint).spec
  if args.untrained:
    loaded = (source, initial_variables(source, args.seed))
  if source.kind == 'cast':
    return sr.last_stage_model(*loaded, path=args.checkpoint, num_clusters=clusters,
                               max_segments=args.max_segments)
  if source.kind != 'cast_seg_pretrain':
    raise ValueError(f'{args.checkpoint} holds a {source.kind} model; retrieval reads MoCo checkpoints of kind '
                     "cast_seg_pretrain (SPML's, e.g. the published epoch-150 COCO one) or cast (configs/demo.py)")
  spec = retrieval_spec(source, clusters, args.max_segments)
  return sr.load_moco_for_retrieval(args.checkpoint, spec, loaded=loaded)


def run(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)

  from cast_jax.evaluate import spml_retrieval as sr

  clusters = [int(c) for c in str(args.num_clusters).split(',') if c.strip()] or None
  model, variables = retrieval_model(args, clusters)
  apply = sr.make_apply(model, variables, level=args.segment_level or None)
  opts = dict(test_image_size=args.test_image_size, num_superpixels=args.num_superpixels,
              max_segments=args.max_segments)
  if args.partworld:
    rendering = dict(image_size=args.partworld_image_size, palette=args.palette, labels=args.seg_labels,
                     seed=args.partworld_seed)
    memory_items = partworld_items('train', args.memory_images, **rendering)
    query_items, queries = partworld_items('validation', args.query_images, **rendering), args.query_images
  else:
    memory_items = read_items(read_list(args.data_dir, args.memory_list))
    query_entries = read_list(args.data_dir, args.query_list)
    query_items, queries = read_items(query_entries), len(query_entries)
  memory = sr.memory_from_images(apply, memory_items, args.num_classes, chunk=args.chunk, top_k=args.top_k, **opts)
  scores = sr.score_split(apply, query_items, memory, args.num_classes, **opts)
  # Predicting class 0 (background) on every pixel the benchmark counts: the floor a segmentation has to beat.
  tp_fn = scores['tp_fn']
  floor_tp, floor_tp_fp = np.zeros_like(tp_fn), np.zeros_like(tp_fn)
  floor_tp[0], floor_tp_fp[0] = tp_fn[0], tp_fn.sum()
  _, floor_miou, floor_acc = sr.miou_from_counts(tp_fn, floor_tp_fp, floor_tp)
  result = {'miou': scores['miou'], 'iou': scores['iou'].tolist(), 'pixel_acc': scores['pixel_acc'],
            'tp': scores['tp'].tolist(), 'tp_fp': scores['tp_fp'].tolist(), 'tp_fn': scores['tp_fn'].tolist(),
            'memory_size': memory.size, 'queries': queries,
            'background_everywhere': {'miou': float(floor_miou), 'pixel_acc': float(floor_acc)}}
  return result


def main(argv: Optional[Sequence[str]] = None) -> None:
  print(json.dumps(run(argv)))


if __name__ == '__main__':
  main(sys.argv[1:])
