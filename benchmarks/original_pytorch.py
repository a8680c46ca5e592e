"""Times the ORIGINAL PyTorch CAST on this machine, for side-by-side comparison with cast_jax.

Not part of the package and never imported by it: it needs PyTorch and timm 0.4.12 installed by hand
(``pip install torch timm==0.4.12``) and a checkout of the original code (github.com/twke18/CAST), whose
``cast_models`` folder it imports. torchvision is optional (a placeholder stands in when it is missing,
since the model code never uses it). DGL is replaced by a batched torch implementation of
``dgl.geometry.farthest_point_sampler`` with the same semantics (start index, squared distances, first max).

    python benchmarks/original_pytorch.py --cast-repo /path/to/CAST --batch 32 --threads 2
    python benchmarks/original_pytorch.py --cast-repo /path/to/CAST --only seg_train_step --seg-batch 8 --threads 2

prints one JSON line per measurement, in the format of ``python -m cast_jax.benchmark``:
  forward: eval forward of cast_small (224 px, 196 grid superpixels), images per second.
  seg_train_step: one Segmenter fine-tuning step as ``segm/engine_cast.train_one_epoch`` runs it (train mode,
    ``SuperpixSegmenter(cast_seg_deit.cast_small(), SuperpixMaskTransformer)`` as ``segm/model/factory``
    builds it, 150 classes, crop 512, 1024 grid superpixels, CrossEntropyLoss(ignore_index=255), SGD momentum
    0.9 Nesterov), images per second; the counterpart of ``python -m cast_jax.benchmark --only seg_train_step``.
    Imports the Segmenter fork from ``<cast-repo>/segmenter`` (its own imports: einops, OpenCV-contrib). The
    superpixel map is passed as float, as the golden fixtures note the decoder's nearest resize needs.
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


def _grid_ids(batch: int, size: int, side: int) -> np.ndarray:
  cell = size // side
  ids = (np.arange(size) // cell)[:, None] * side + (np.arange(size) // cell)[None, :]
  return np.broadcast_to(ids, (batch, size, size)).copy()


def bench_forward(torch, args) -> dict:
  from cast_models.cast import cast_small  # pylint: disable=import-outside-toplevel

  model = cast_small().eval()
  size, side = 224, 14
  superpixels = torch.from_numpy(_grid_ids(args.batch, size, side).astype(np.int64))
  images = torch.randn(args.batch, 3, size, size)
  with torch.no_grad():
    model(images, superpixels)  # warm-up
    start = time.perf_counter()
    for _ in range(args.repeats):
      model(images, superpixels)
    step = (time.perf_counter() - start) / args.repeats
  return {'name': 'forward', 'model': 'cast_small (original PyTorch)', 'dtype': 'float32',
          'batch': args.batch, 'image_size': size, 'superpixels': side * side,
          'step_s': round(step, 4), 'images_per_s': round(args.batch / step, 2), 'repeats': args.repeats}


def bench_seg_train_step(torch, args) -> dict:
  sys.path.insert(0, f'{args.cast_repo}/segmenter')
  import cast_models.cast_seg_deit as cast_seg_deit  # pylint: disable=import-outside-toplevel
  from segm.model.decoder import SuperpixMaskTransformer  # pylint: disable=import-outside-toplevel
  from segm.model.segmenter import SuperpixSegmenter  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  encoder = cast_seg_deit.cast_small()
  dim = encoder.d_model  # factory.create_superpix_decoder: heads d // 64, d_ff 4 d, d_model = the encoder's
  decoder = SuperpixMaskTransformer(n_cls=args.seg_classes, patch_size=encoder.patch_size, d_encoder=dim,
                                    n_layers=2, n_heads=dim // 64, d_model=dim, d_ff=4 * dim, drop_path_rate=0.0,
                                    dropout=0.1)
  model = SuperpixSegmenter(encoder, decoder, n_cls=args.seg_classes).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=0.0)
  criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
  crop, batch = args.seg_crop, args.seg_batch
  images = torch.randn(batch, 3, crop, crop)
  superpixels = torch.from_numpy(_grid_ids(batch, crop, crop // 16).astype(np.float32))
  labels = torch.randint(0, args.seg_classes, (batch, crop, crop))
  labels[:, :8] = 255

  def step():
    loss = criterion(model.forward(images, superpixels), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)

  step()  # warm-up
  start = time.perf_counter()
  for _ in range(args.repeats):
    loss = step()
  seconds = (time.perf_counter() - start) / args.repeats
  return {'name': 'seg_train_step', 'model': 'segmenter cast_seg_deit small (original PyTorch)', 'dtype': 'float32',
          'batch': batch, 'crop': crop, 'superpixels': (crop // 16) ** 2, 'classes': args.seg_classes,
          'step_s': round(seconds, 3), 'images_per_s': round(batch / seconds, 2), 'loss': round(loss, 4),
          'repeats': args.repeats}


BENCHMARKS = {'forward': bench_forward, 'seg_train_step': bench_seg_train_step}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--cast-repo', required=True, help='checkout of github.com/twke18/CAST')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
  parser.add_argument('--only', choices=sorted(BENCHMARKS), action='append', help='run only these (default: forward)')
  parser.add_argument('--seg-crop', type=int, default=512)
  parser.add_argument('--seg-batch', type=int, default=8)
  parser.add_argument('--seg-classes', type=int, default=150)
  args = parser.parse_args(argv)

  import torch  # pylint: disable=import-outside-toplevel

  if args.threads:
    torch.set_num_threads(args.threads)
  _install_dgl_stub(torch)
  _install_torchvision_stub_if_missing()
  sys.path.insert(0, args.cast_repo)
  for name in args.only or ['forward']:
    result = BENCHMARKS[name](torch, args)
    print(json.dumps({**result, 'torch': torch.__version__, 'threads': torch.get_num_threads()}), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
