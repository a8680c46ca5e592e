"""The published CAST checkpoints: where they are, downloading them, and converting them once.

    python -m cast_jax.published --list
    python -m cast_jax.published moco_cast_base_in1k --dir ~/cast_checkpoints   # prints the converted .npz

The original authors host their weights in the Hugging Face repository ``twke/CAST`` under the ``snapshots/``
paths their scripts and notebooks use (spec_voc_parts_notebooks §5). A download goes to ``DIR/NAME.pth`` (via a
``.part`` file, so an interrupted download is never taken for a finished one), and the conversion to
``DIR/NAME.npz``; both are reused when present. No PyTorch is needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import sys
import urllib.error
import urllib.request

from cast_jax.convert import convert_checkpoint, save_converted

HUB = 'https://huggingface.co/twke/CAST/resolve/main'


@dataclasses.dataclass(frozen=True)
class Published:
  path: str  # inside the hub repository
  about: str


PUBLISHED = {
    'moco_cast_base_in1k': Published('snapshots/moco/imagenet1k/cast_base/checkpoint_0099.pth.tar',
                                     'MoCo-v3 CAST-B, ImageNet-1K, 100 epochs (the original hierarchy notebook)'),
    'moco_vit_base_in1k': Published('snapshots/moco/imagenet1k/vit_base/checkpoint_0099.pth.tar',
                                    'MoCo-v3 ViT-B baseline (conv stem), ImageNet-1K, 100 epochs'),
    'moco_cast_small_coco': Published('snapshots/moco/coco/cast_small/checkpoint_0399.pth.tar',
                                      'MoCo-v3 CAST-S, COCO, 400 epochs (initialises VOC fine-tuning)'),
    'moco_cast_small_coco_ep150': Published('snapshots/moco/coco/cast_small/checkpoint_0149.pth.tar',
                                            'MoCo-v3 CAST-S, COCO, epoch 150 (the VOC 38.4 kNN retrieval)'),
    'deit_cast_small_in1k': Published('snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth',
                                      'DeiT-style supervised CAST-S, ImageNet-1K (80.4 top-1)'),
}


class DownloadError(OSError):
  """A published checkpoint could not be fetched; the message says from where and what to do instead."""


def describe(name: str) -> Published:
  if name not in PUBLISHED:
    raise ValueError(f'unknown published checkpoint {name!r}; known: {", ".join(sorted(PUBLISHED))}')
  return PUBLISHED[name]


def url(name: str, hub: str = HUB) -> str:
  return f'{hub.rstrip("/")}/{describe(name).path}'


def download(name: str, directory, hub: str = HUB, quiet: bool = False) -> pathlib.Path:
  """``directory/NAME.pth``, fetched from ``hub`` unless already there."""
  directory = pathlib.Path(directory).expanduser()
  target = directory / f'{name}.pth'
  if target.is_file():
    return target
  source = url(name, hub)
  directory.mkdir(parents=True, exist_ok=True)
  partial = target.with_suffix('.pth.part')
  if not quiet:
    print(f'downloading {source} -> {target}', flush=True)
  try:
    with urllib.request.urlopen(source, timeout=60) as response, open(partial, 'wb') as f:
      shutil.copyfileobj(response, f, length=1 << 20)
  except (urllib.error.URLError, OSError) as e:
    partial.unlink(missing_ok=True)
    raise DownloadError(f'could not download {source} ({e}). Download it by hand and put it at {target}, '
                        'or convert any local copy with `python -m cast_jax.convert SRC DST.npz`.') from e
  os.replace(partial, target)
  return target


def converted(name: str, directory, hub: str = HUB, quiet: bool = False) -> pathlib.Path:
  """``directory/NAME.npz``: the published checkpoint, downloaded and converted on first use."""
  directory = pathlib.Path(directory).expanduser()
  target = directory / f'{name}.npz'
  if target.is_file():
    return target
  source = download(name, directory, hub, quiet)
  conversion = convert_checkpoint(source)
  partial = directory / f'{name}.npz.part'
  save_converted(conversion, partial)
  os.replace(partial, target)
  if not quiet:
    print(f'converted {source} -> {target} ({conversion.spec.kind}, {conversion.spec.variant})', flush=True)
  return target


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m cast_jax.published', description=__doc__.split('\n\n')[0])
  parser.add_argument('name', nargs='?', help='a published checkpoint (see --list)')
  parser.add_argument('--dir', default='~/cast_checkpoints', help='where downloads and conversions are kept')
  parser.add_argument('--hub', default=HUB, help='base URL (a mirror, or file:// for a local copy)')
  parser.add_argument('--list', action='store_true', help='list the published checkpoints')
  args = parser.parse_args(argv)
  if args.list or not args.name:
    for name, item in PUBLISHED.items():
      print(f'{name:28s} {item.about}\n{"":28s} {url(name, args.hub)}')
    return 0
  try:
    print(converted(args.name, args.dir, args.hub))
  except (ValueError, DownloadError) as e:  # unknown name, failed download, unreadable file
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
