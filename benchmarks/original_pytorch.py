"""Times the ORIGINAL PyTorch CAST on this machine, for side-by-side comparison with cast_jax.

Not part of the package and never imported by it: it needs PyTorch and timm 0.4.12 installed by hand
(``pip install torch timm==0.4.12``) and a checkout of the original code (github.com/twke18/CAST), whose
``cast_models`` folder it imports. torchvision is optional (a placeholder stands in when it is missing,
since the model code never uses it). DGL is replaced by a batched torch implementation of
``dgl.geometry.farthest_point_sampler`` with the same semantics (start index, squared distances, first max).

    python benchmarks/original_pytorch.py --cast-repo /path/to/CAST --batch 32 --threads 2

prints one JSON line per measurement, in the format of ``python -m cast_jax.benchmark``:
  forward: eval forward of cast_small (224 px, 196 grid superpixels), images per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types

import numpy as np


def _install_dgl_stub(torch):
  """Registers a module ``dgl.geometry`` whose farthest_point_sampler follows DGL's CPU kernel."""

  def farthest_point_sampler(pos, npoints, start_idx=0):
    batch, num_points, _ = pos.shape
    picks = torch.zeros(batch, npoints, dtype=torch.long)
    picks[:, 0] = start_idx
    dist = torch.full((batch, num_points), float('inf'), dtype=pos.dtype)
    rows = torch.arange(batch)
    for t in range(1, npoints):
      last = pos[rows, picks[:, t - 1]]  # (B, C)
      dist = torch.minimum(dist, ((pos - last[:, None]) ** 2).sum(-1))
      picks[:, t] = torch.argmax(dist, dim=1)  # first maximum on ties, as DGL
    return picks

  dgl = types.ModuleType('dgl')
  geometry = types.ModuleType('dgl.geometry')
  geometry.farthest_point_sampler = farthest_point_sampler
  dgl.geometry = geometry
  sys.modules['dgl'] = dgl
  sys.modules['dgl.geometry'] = geometry


def _install_torchvision_stub_if_missing():
  """timm 0.4.12 imports torchvision for its data helpers, which the model code never calls. When no
  torchvision matching the installed torch exists, a placeholder module lets the import succeed."""
  try:
    import torchvision  # pylint: disable=import-outside-toplevel,unused-import
    return
  except Exception:  # ImportError, or a build that does not match torch (RuntimeError)
    pass

  class _Placeholder(types.ModuleType):

    def __getattr__(self, name):
      if name.startswith('__'):
        raise AttributeError(name)
      return type(name, (), {})

  for name in ('torchvision', 'torchvision.transforms', 'torchvision.transforms.functional', 'torchvision.datasets',
               'torchvision.models', 'torchvision.ops'):
    sys.modules[name] = _Placeholder(name)
  sys.modules['torchvision'].transforms = sys.modules['torchvision.transforms']


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--cast-repo', required=True, help='checkout of github.com/twke18/CAST')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
  args = parser.parse_args(argv)

  import torch  # pylint: disable=import-outside-toplevel

  if args.threads:
    torch.set_num_threads(args.threads)
  _install_dgl_stub(torch)
  _install_torchvision_stub_if_missing()
  sys.path.insert(0, args.cast_repo)
  from cast_models.cast import cast_small  # pylint: disable=import-outside-toplevel

  model = cast_small().eval()
  size, side = 224, 14
  cell = size // side
  ids = (np.arange(size) // cell)[:, None] * side + (np.arange(size) // cell)[None, :]
  superpixels = torch.from_numpy(np.broadcast_to(ids, (args.batch, size, size)).astype(np.int64).copy())
  images = torch.randn(args.batch, 3, size, size)
  with torch.no_grad():
    model(images, superpixels)  # warm-up
    start = time.perf_counter()
    for _ in range(args.repeats):
      model(images, superpixels)
    step = (time.perf_counter() - start) / args.repeats
  print(json.dumps({'name': 'forward', 'model': 'cast_small (original PyTorch)', 'dtype': 'float32',
                    'batch': args.batch, 'image_size': size, 'superpixels': side * side,
                    'step_s': round(step, 4), 'images_per_s': round(args.batch / step, 2), 'repeats': args.repeats,
                    'torch': torch.__version__, 'threads': torch.get_num_threads()}), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
