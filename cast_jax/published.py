"""The published CAST checkpoints: where they are, downloading them, and converting them once.

    python -m cast_jax.published --list
    python -m cast_jax.published moco_cast_base_in1k --dir ~/cast_checkpoints   # prints the converted .npz

The original authors host their weights in the Hugging Face repository ``twke/CAST`` under the ``snapshots/``
paths their scripts and notebooks use (docs/original_behaviour.md#published-checkpoints). A download goes to
``DIR/NAME.pth`` (via a ``.part`` file, checked against the announced length, so an interrupted download is never
taken for a finished one), and the conversion to ``DIR/NAME.npz``; both are reused when present. No PyTorch is
needed.
``CAST_PUBLISHED_HUB`` points at a mirror (or a ``file://`` copy), ``CAST_CHECKPOINTS`` at the default DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import urllib.error
import urllib.request

from cast_jax.convert import convert_checkpoint, save_converted

HUB = os.environ.get('CAST_PUBLISHED_HUB', 'https://huggingface.co/twke/CAST/resolve/main')  # or a mirror
DEFAULT_DIR = pathlib.Path(os.environ.get('CAST_CHECKPOINTS', '~/cast_checkpoints')).expanduser()


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


def download(name: str, directory=DEFAULT_DIR, hub: str = HUB, quiet: bool = False) -> pathlib.Path:
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
    request = urllib.request.Request(source, headers={'User-Agent': 'cast_jax'})
    with urllib.request.urlopen(request, timeout=60) as response, open(partial, 'wb') as f:
      expected = int(response.headers.get('Content-Length') or 0)
      received = _copy_with_progress(response, f, expected, quiet)
    if expected and received != expected:  # urllib does not notice a connection closed early
      raise OSError(f'the connection closed after {received} of {expected} bytes')
  except (urllib.error.URLError, OSError) as e:
    partial.unlink(missing_ok=True)
    raise DownloadError(f'could not download {source} ({e}). Download it by hand and put it at {target}, '
                        'or convert any local copy with `python -m cast_jax.convert SRC DST.npz`.') from e
  os.replace(partial, target)
  return target


def _copy_with_progress(response, f, expected: int, quiet: bool) -> int:
  """Copies in 1 MiB chunks, printing a line at every tenth of ``expected`` bytes; returns the bytes copied."""
  received, next_report = 0, expected / 10
  while chunk := response.read(1 << 20):
    f.write(chunk)
    received += len(chunk)
    if not quiet and expected and received >= next_report:
      print(f'  {received / 1e6:.0f} of {expected / 1e6:.0f} MB', flush=True)
      next_report += expected / 10
  return received


def converted(name: str, directory=DEFAULT_DIR, hub: str = HUB, quiet: bool = False) -> pathlib.Path:
  """``directory/NAME.npz``: the published checkpoint, downloaded and converted on first use."""
  directory = pathlib.Path(directory).expanduser()
  target = directory / f'{name}.npz'
  if target.is_file():
    return target
  fresh = not (directory / f'{name}.pth').is_file()
  source = download(name, directory, hub, quiet)
  try:
    conversion = convert_checkpoint(source)
  except ValueError:
    if fresh:  # a file we just fetched that does not convert must not be reused as if it were good
      source.unlink()
    raise
  partial = directory / f'{name}.npz.part'
  save_converted(conversion, partial)
  os.replace(partial, target)
  if not quiet:
    print(f'converted {source} -> {target} ({conversion.spec.kind}, {conversion.spec.variant})', flush=True)
  return target


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m cast_jax.published', description=__doc__.split('\n\n')[0])
  parser.add_argument('name', nargs='?', help='a published checkpoint (see --list)')
  parser.add_argument('--dir', default=str(DEFAULT_DIR), help='where downloads and conversions are kept '
                      '(default: $CAST_CHECKPOINTS or ~/cast_checkpoints)')
  parser.add_argument('--hub', default=HUB, help='base URL (a mirror, or file:// for a local copy; default: '
                      '$CAST_PUBLISHED_HUB or Hugging Face)')
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
