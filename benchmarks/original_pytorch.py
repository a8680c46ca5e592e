"""Times the ORIGINAL PyTorch CAST on this machine, for side-by-side comparison with cast_jax.

Not part of the package and never imported by it: it needs PyTorch and timm 0.4.12 installed by hand, best in a
virtual environment of its own (``python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch
timm==0.4.12 numpy einops``), and a checkout of the original code (github.com/twke18/CAST), whose ``cast_models``,
``moco-v3/suppix_utils`` and ``segmenter`` code it imports. torchvision is optional (a placeholder stands in when
it is missing, since the model code never uses it). DGL is replaced by a batched torch implementation of
``dgl.geometry.farthest_point_sampler`` with the same semantics (start index, squared distances, first max).

    python benchmarks/original_pytorch.py --cast-repo /path/to/CAST --batch 32 --threads 2
    python benchmarks/original_pytorch.py --cast-repo /path/to/CAST --only train_step --only deit_train_step \
        --batch 32 --repeats 3 --threads 2
    python benchmarks/original_pytorch.py --cast-repo /path/to/CAST --only seg_train_step --seg-batch 8 --threads 2

prints one JSON line per measurement, in the format of ``python -m cast_jax.benchmark``. Every step is timed as
cast_jax's ``_time_train_step`` times it: one warm-up call, then the mean seconds of ``--repeats`` calls on the
same batch (cast_jax's compile is reported apart and excluded; eager PyTorch has none). Random weights and
inputs; superpixels are a regular grid of ``--superpixels`` (196: 14x14 cells of 16 px at 224 px). float32
throughout: the original trains under CUDA autocast (float16), which a CPU has no counterpart of here.
  forward: eval forward of cast_small (``--image-size`` 224, 196 grid superpixels, ``--batch`` 32), images per
    second.
  block: timm 0.4.12's transformer ``Block`` as CAST builds it, at cast_small's first stage (``--batch`` x 197
    tokens x 384 channels, 6 heads), then its attention and its MLP alone: forward and backward, one line each,
    milliseconds and images per second; the counterpart of ``python -m cast_jax.benchmark --only block``.
  stem: the original's ``ConvStem`` of cast_small in train mode, forward and backward (parameter gradients),
    milliseconds and images per second; the counterpart of ``python -m cast_jax.benchmark --only stem``.
  train_step: one MoCo-v3 step of CAST-S as ``moco-v3/main_moco_suppix.py`` runs
    ``scripts/moco/train_imagenet1k_cast.sh``: ``suppix_utils.builder.MoCo_SupPix(partial(cast_small,
    stop_grad_conv1=True), dim 256, mlp_dim 4096, T 0.2)``, both views through the base encoder and predictor,
    the momentum update (cosine momentum from 0.99), both views through the momentum encoder, the symmetric
    contrastive loss, AdamW (lr 1.5e-4 x batch / 256, weight decay 0.1), lr and momentum set per step;
    images (pairs of views) per second; the counterpart of ``python -m cast_jax.benchmark --only train_step``.
    One process: the builder's all-gather over a world of one is the identity, so its loss is restated without
    torch.distributed (and without ``.cuda()``); SyncBatchNorm is plain BatchNorm on one process.
  deit_train_step: one supervised DeiT step of CAST-S as ``deit/main_suppix.py`` + ``engine_suppix.py`` run it:
    ``cast_models.cast_deit.cast_small`` (1000 classes, drop path 0.1, train mode), timm's
    SoftTargetCrossEntropy (the criterion the recipe uses with mixup on) on batch-mixup targets with label
    smoothing 0.1 (made before timing: cast_jax mixes in its input pipeline), timm's ``create_optimizer`` AdamW
    (lr 5e-4 x batch / 512, weight decay 0.05 off biases, 1-D parameters, pos_embed and cls_token), then the
    ``ModelEma`` update (0.99996); images per second; the counterpart of ``python -m cast_jax.benchmark --only
    deit_train_step``.
  seg_train_step: one Segmenter fine-tuning step as ``segm/engine_cast.train_one_epoch`` runs it (train mode,
    ``SuperpixSegmenter(cast_seg_deit.cast_small(), SuperpixMaskTransformer)`` as ``segm/model/factory``
    builds it, 150 classes, crop 512, 1024 grid superpixels, CrossEntropyLoss(ignore_index=255), SGD momentum
    0.9 Nesterov), images per second; the counterpart of ``python -m cast_jax.benchmark --only seg_train_step``.
    Imports the Segmenter fork from ``<cast-repo>/segmenter`` (its own imports: einops, OpenCV-contrib). The
    superpixel map is passed as float, as the golden fixtures note the decoder's nearest resize needs.

The train steps also report the process's peak resident memory (``process_peak_rss_mb``, as cast_jax on a CPU).
``--batch 2 --image-size 64 --superpixels 64 --repeats 1`` is a tiny run that checks the entries work.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
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


def _grid_side(args) -> int:
  """Cells per side of the grid superpixels: --superpixels must be a square number, as in cast_jax.benchmark."""
  side = int(round(args.superpixels ** 0.5))
  if side * side != args.superpixels:
    raise ValueError(f'--superpixels must be a square number for the grid benchmark; got {args.superpixels}')
  return side


def _peak_rss_mb() -> float:
  """The process's peak resident memory, as cast_jax.benchmark reports it on a CPU (process_peak_rss_mb)."""
  import resource  # pylint: disable=import-outside-toplevel

  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _time_steps(step, repeats: int) -> tuple[float, float]:
  """(last loss, mean seconds per step) of ``repeats`` timed calls after one warm-up call: what
  cast_jax.benchmark's ``_time_train_step`` times (its compile, which eager PyTorch has none of, excluded)."""
  step()  # warm-up (allocator, caches)
  start = time.perf_counter()
  for _ in range(repeats):
    loss = step()
  return loss, (time.perf_counter() - start) / repeats


def bench_forward(torch, args) -> dict:
  from cast_models.cast import cast_small  # pylint: disable=import-outside-toplevel

  size, side = args.image_size, _grid_side(args)
  model = cast_small(img_size=size).eval()
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


def _moco_lr(step: int, base_lr: float, batch: int, warmup: int = 10, total: int = 1000) -> float:
  """``main_moco_suppix.adjust_learning_rate`` per step: lr x batch / 256, linear warm-up, half cosine."""
  lr = base_lr * batch / 256
  if step < warmup:
    return lr * step / warmup
  return lr * 0.5 * (1. + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _moco_momentum(step: int, base: float = 0.99, total: int = 1000) -> float:
  """``main_moco_suppix.adjust_moco_momentum`` (--moco-m-cos): base -> 1 on a half cosine."""
  return 1. - 0.5 * (1. + math.cos(math.pi * step / total)) * (1. - base)


def bench_train_step(torch, args) -> dict:
  """One MoCo-v3 step of CAST-S as ``moco-v3/main_moco_suppix.py`` runs ``scripts/moco/train_imagenet1k_cast.sh``:
  ``suppix_utils.builder.MoCo_SupPix(partial(cast_small, stop_grad_conv1=True), 256, 4096, T=0.2)`` (projector
  3 layers, predictor 2, BatchNorm), its forward (both views through the base encoder and predictor, the momentum
  update, both views through the momentum encoder, the symmetric contrastive loss), then zero_grad, backward and
  ``torch.optim.AdamW(model.parameters(), lr, weight_decay=0.1)``; lr and momentum set per step as the loop does."""
  sys.path.insert(0, f'{args.cast_repo}/moco-v3')
  import cast_models.cast as cast  # pylint: disable=import-outside-toplevel
  from suppix_utils import builder  # pylint: disable=import-outside-toplevel

  class SingleProcessMoCo(builder.MoCo_SupPix):
    """The builder's contrastive loss on one process: ``concat_all_gather`` over a world of one is ``k`` itself
    and the rank is 0; the only change is that the labels stay on the CPU (the original calls ``.cuda()``)."""

    def contrastive_loss(self, q, k, T):
      q = torch.nn.functional.normalize(q, dim=1)
      k = torch.nn.functional.normalize(k, dim=1)
      logits = torch.einsum('nc,mc->nm', [q, k]) / T
      labels = torch.arange(logits.shape[0], dtype=torch.long)
      return torch.nn.CrossEntropyLoss()(logits, labels) * (2 * T)

  torch.manual_seed(0)
  size, side, batch = args.image_size, _grid_side(args), args.batch
  # One process, so the SyncBatchNorm the original converts to under DDP is plain BatchNorm.
  model = SingleProcessMoCo(functools.partial(cast.cast_small, stop_grad_conv1=True, img_size=size),
                            256, 4096, 0.2).train()
  base_lr = 1.5e-4
  optimizer = torch.optim.AdamW(model.parameters(), base_lr * batch / 256, weight_decay=0.1)
  view1, view2 = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)
  superpixels = torch.from_numpy(_grid_ids(batch, size, side).astype(np.int64))
  count = [0]

  def step():
    lr = _moco_lr(count[0], base_lr, batch)
    for group in optimizer.param_groups:
      group['lr'] = lr
    loss = model(view1, view2, superpixels, superpixels, _moco_momentum(count[0]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    count[0] += 1
    return loss.item()

  loss, seconds = _time_steps(step, args.repeats)
  return {'name': 'train_step', 'model': 'moco_cast_small (original PyTorch)', 'dtype': 'float32',
          'batch': batch, 'image_size': size, 'superpixels': side * side, 'step_s': round(seconds, 3),
          'images_per_s': round(batch / seconds, 2), 'loss': round(loss, 4), 'repeats': args.repeats,
          'process_peak_rss_mb': _peak_rss_mb()}


def _mixed_soft_targets(torch, batch: int, num_classes: int, smoothing: float = 0.1, lam: float = 0.7):
  """(batch, num_classes) targets as timm's batch ``Mixup`` makes them: lam x smoothed one-hot(y) + (1 - lam) x
  smoothed one-hot(flip(y)); the same formula as cast_jax.benchmark.mixed_soft_targets."""
  labels = torch.from_numpy(np.random.default_rng(0).integers(0, num_classes, batch))
  smooth = torch.full((batch, num_classes), smoothing / num_classes)
  smooth[torch.arange(batch), labels] += 1.0 - smoothing
  return lam * smooth + (1.0 - lam) * smooth.flip(0)


def bench_deit_train_step(torch, args) -> dict:
  """One DeiT supervised step of CAST-S as ``deit/main_suppix.py`` + ``engine_suppix.train_one_epoch`` run it:
  ``cast_models.cast_deit.cast_small`` with 1000 classes and drop path 0.1 in train mode, SoftTargetCrossEntropy
  on mixup targets (the criterion the recipe picks with mixup on; DistillationLoss with 'none' just calls it),
  zero_grad, backward, step of timm's ``create_optimizer`` AdamW (lr 5e-4 x batch / 512, weight decay 0.05 off
  biases, 1-D parameters and pos_embed / cls_token), then the ``ModelEma`` update (0.99996). The targets are made
  before timing, as the mixing belongs to the input pipeline in cast_jax."""
  import cast_models.cast_deit as cast_deit  # pylint: disable=import-outside-toplevel
  from timm.loss import SoftTargetCrossEntropy  # pylint: disable=import-outside-toplevel
  from timm.optim import create_optimizer  # pylint: disable=import-outside-toplevel
  from timm.utils import ModelEma  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  size, side, batch, classes = args.image_size, _grid_side(args), args.batch, 1000
  # create_model('cast_small', num_classes=1000, drop_rate=0.0, drop_path_rate=0.1, img_size=...) as main_suppix.
  model = cast_deit.cast_small(num_classes=classes, drop_rate=0.0, drop_path_rate=0.1, img_size=size).train()
  opt_args = argparse.Namespace(opt='adamw', lr=5e-4 * batch / 512, weight_decay=0.05, momentum=0.9, opt_eps=1e-8,
                                opt_betas=None)
  optimizer = create_optimizer(opt_args, model)
  model_ema = ModelEma(model, decay=0.99996, device='', resume='')
  criterion = SoftTargetCrossEntropy()
  images = torch.randn(batch, 3, size, size)
  superpixels = torch.from_numpy(_grid_ids(batch, size, side).astype(np.int64))
  targets = _mixed_soft_targets(torch, batch, classes)

  def step():
    loss = criterion(model(images, superpixels), targets)
    optimizer.zero_grad()
    # NativeScaler without CUDA (its GradScaler disabled) and no --clip-grad: backward, then the step.
    loss.backward()
    optimizer.step()
    model_ema.update(model)
    return loss.item()

  loss, seconds = _time_steps(step, args.repeats)
  return {'name': 'deit_train_step', 'model': 'cast_deit_small (original PyTorch)', 'dtype': 'float32',
          'batch': batch, 'image_size': size, 'superpixels': side * side, 'classes': classes,
          'step_s': round(seconds, 3), 'images_per_s': round(batch / seconds, 2), 'loss': round(loss, 4),
          'repeats': args.repeats, 'process_peak_rss_mb': _peak_rss_mb()}


# The Segmenter's rounded normalisation constants (cast_jax.sliding_window's; this script runs without jax).
SEGMENTER_MEAN = (123.68, 116.28, 103.53)
SEGMENTER_STD = (58.4, 57.12, 57.38)


def _seeds_like_the_original(image, n_segments):
  """Stand-in for ``segm.data.utils.generate_superpixels`` when its package cannot be imported: the same work in
  the same order (the x255 uint8 wrap of the float image, RGB -> Lab, OpenCV SEEDS with one level, prior 2, 5
  histogram bins, 15 iterations), so the sliding-window benchmark times what the original's evaluation runs."""
  import cv2  # pylint: disable=import-outside-toplevel

  wrapped = (image * 255).astype(np.uint8)
  lab = cv2.cvtColor(wrapped, cv2.COLOR_RGB2LAB)
  seeds = cv2.ximgproc.createSuperpixelSEEDS(lab.shape[1], lab.shape[0], 3, num_superpixels=n_segments,
                                             num_levels=1, prior=2, histogram_bins=5, double_step=False)
  seeds.iterate(lab, num_iterations=15)
  return seeds.getLabels()


def _denormalize_like_the_original(x, stats, inplace=True):
  """Stand-in for ``segm.data.utils.rgb_denormalize``: x (N, C, H, W) * std + mean per channel."""
  import torch  # pylint: disable=import-outside-toplevel

  x = x if inplace else x.clone()
  mean, std = torch.tensor(stats['mean']), torch.tensor(stats['std'])
  for channel in range(3):
    x[:, channel] = x[:, channel] * std[channel] + mean[channel]
  return x


def _install_segm_data_stub_if_missing():
  """``segm.model.utils`` imports three helpers from ``segm.data.utils``, whose package pulls in mmcv, mmseg,
  scikit-image and yaml. The train step calls none of them; sliding-window inference calls two, so when that
  package cannot be imported a stand-in holds those two re-implemented (``_seeds_like_the_original``,
  ``_denormalize_like_the_original``) and a third that raises if ever called."""
  try:
    import segm.data.utils  # pylint: disable=import-outside-toplevel,unused-import
    return
  except Exception:  # ImportError of one of its many dependencies
    for name in [n for n in sys.modules if n == 'segm.data' or n.startswith('segm.data.')]:
      del sys.modules[name]

  def unavailable(name):
    def call(*_, **__):
      raise RuntimeError(f'segm.data.utils.{name} is a stand-in here (its package did not import); the train step '
                         'benchmark should never call it')
    return call

  package, utils = types.ModuleType('segm.data'), types.ModuleType('segm.data.utils')
  package.__path__ = []
  utils.label2color = unavailable('label2color')
  utils.generate_superpixels = _seeds_like_the_original
  utils.rgb_denormalize = _denormalize_like_the_original
  package.utils = utils
  sys.modules['segm.data'], sys.modules['segm.data.utils'] = package, utils


def _original_segmenter(torch, args):
  """The original's ADE20K Segmenter (``cast_seg_deit`` small + 2-block mask transformer), random weights."""
  sys.path.insert(0, f'{args.cast_repo}/segmenter')
  _install_segm_data_stub_if_missing()
  import cast_models.cast_seg_deit as cast_seg_deit  # pylint: disable=import-outside-toplevel
  from segm.model.decoder import SuperpixMaskTransformer  # pylint: disable=import-outside-toplevel
  from segm.model.segmenter import SuperpixSegmenter  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  encoder = cast_seg_deit.cast_small()
  dim = encoder.d_model  # factory.create_superpix_decoder: heads d // 64, d_ff 4 d, d_model = the encoder's
  decoder = SuperpixMaskTransformer(n_cls=args.seg_classes, patch_size=encoder.patch_size, d_encoder=dim,
                                    n_layers=2, n_heads=dim // 64, d_model=dim, d_ff=4 * dim, drop_path_rate=0.0,
                                    dropout=0.1)
  return SuperpixSegmenter(encoder, decoder, n_cls=args.seg_classes)


def bench_sliding_window(torch, args) -> dict:
  """The original's single-scale evaluation of one image (``segm.model.utils.inference_with_superpixels``:
  windows of ``--seg-crop`` at stride crop - 32, SEEDS per de-normalised window, windows batched by 2); the
  counterpart of ``python -m cast_jax.benchmark --only sliding_window``. The image is the same PartWorld picture
  resized to ``--seg-image`` and normalised with the Segmenter's constants."""
  import cv2  # pylint: disable=import-outside-toplevel

  from cast_jax.data.partworld import PartWholeDataset  # pylint: disable=import-outside-toplevel  (numpy only)

  segmenter = _original_segmenter(torch, args).eval()
  from segm.model.utils import inference_with_superpixels  # pylint: disable=import-outside-toplevel

  class FloatSuperpixels(torch.nn.Module):
    """The Segmenter with its superpixel ids cast to float on the way in: the decoder resizes them with
    ``F.interpolate(mode='nearest')``, which torch 2.x on CPU refuses for int64 (the original ran older torch);
    the train-step benchmark passes float ids for the same reason."""

    def __init__(self, inner):
      super().__init__()
      self.inner, self.n_cls = inner, inner.n_cls

    def forward(self, images, superpixels):
      return self.inner(images, superpixels.float())

  model = FloatSuperpixels(segmenter)

  height, width = (int(v) for v in args.seg_image.split('x'))
  picture = PartWholeDataset(1, image_size=224)[0]['image']
  resized = cv2.resize(picture, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
  mean, std = np.float32(SEGMENTER_MEAN), np.float32(SEGMENTER_STD)
  image = (resized - mean) * (np.float32(1.0) / std)  # mmseg's Normalize, as cast_jax.sliding_window.normalize
  tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
  normalization = {'mean': [m / 255 for m in SEGMENTER_MEAN], 'std': [v / 255 for v in SEGMENTER_STD]}
  crop = args.seg_crop

  def one_image():
    with torch.no_grad():
      seg = inference_with_superpixels(model, [tensor], [{'flip': False}], (height, width), crop, crop - 32, 2,
                                       normalization)
    return float(seg.sum())

  start = time.perf_counter()
  one_image()
  first_s = time.perf_counter() - start
  _, seconds = _time_steps(one_image, args.repeats)
  return {'name': 'sliding_window', 'model': 'segmenter cast_seg_deit small (original PyTorch)', 'dtype': 'float32',
          'image': f'{height}x{width}', 'window': crop, 'stride': crop - 32, 'window_batch': 2,
          'classes': args.seg_classes, 'first_call_s': round(first_s, 2), 'image_s': round(seconds, 3),
          'images_per_s': round(1 / seconds, 3), 'repeats': args.repeats, 'process_peak_rss_mb': _peak_rss_mb()}


def bench_seg_train_step(torch, args) -> dict:
  model = _original_segmenter(torch, args).train()
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
    return loss.item()

  loss, seconds = _time_steps(step, args.repeats)
  return {'name': 'seg_train_step', 'model': 'segmenter cast_seg_deit small (original PyTorch)', 'dtype': 'float32',
          'batch': batch, 'crop': crop, 'superpixels': (crop // 16) ** 2, 'classes': args.seg_classes,
          'step_s': round(seconds, 3), 'images_per_s': round(batch / seconds, 2), 'loss': round(loss, 4),
          'repeats': args.repeats, 'process_peak_rss_mb': _peak_rss_mb()}


def bench_block(torch, args) -> list[dict]:
  """timm 0.4.12's ``Block`` as CAST builds it (qkv bias, LayerNorm eps 1e-6, exact GELU) at cast_small's first
  stage, then its attention and its MLP alone: forward and backward (gradients of the input and every parameter),
  the counterpart of ``python -m cast_jax.benchmark --only block``."""
  import functools  # pylint: disable=import-outside-toplevel

  from timm.models.vision_transformer import Attention, Block, Mlp  # pylint: disable=import-outside-toplevel

  tokens, dim, heads = 197, 384, 6
  norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
  parts = {'block': Block(dim, heads, qkv_bias=True, norm_layer=norm),
           'block_attention': Attention(dim, heads, qkv_bias=True), 'block_mlp': Mlp(dim, 4 * dim)}
  generator = torch.Generator().manual_seed(0)
  x = torch.randn(args.batch, tokens, dim, generator=generator, requires_grad=True)
  upstream = torch.randn(args.batch, tokens, dim, generator=generator)
  rows = []
  for name, module in parts.items():
    inputs = [x, *module.parameters()]

    def step(module=module, inputs=inputs):
      grads = torch.autograd.grad((module(x) * upstream).sum(), inputs)
      return float(grads[0][0, 0, 0])

    _, seconds = _time_steps(step, args.repeats)
    rows.append({'name': name, 'model': f'timm 0.4.12 {type(module).__name__} (original PyTorch)', 'batch': args.batch,
                 'tokens': tokens, 'dim': dim, 'heads': heads, 'ms': round(1e3 * seconds, 2),
                 'images_per_s': round(args.batch / seconds, 2), 'repeats': args.repeats})
  return rows


def bench_stem(torch, args) -> dict:
  """The original's ``ConvStem`` (cast_small: embed 384) in train mode, forward and backward with respect to its
  parameters (the image needs no gradient), the counterpart of ``python -m cast_jax.benchmark --only stem``."""
  from cast_models.modules import ConvStem  # pylint: disable=import-outside-toplevel

  stem = ConvStem(img_size=args.image_size, patch_size=8, embed_dim=384).train()
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator)
  size = args.image_size // 8
  upstream = torch.randn(args.batch, size, size, 384, generator=generator)  # its output is channels-last
  params = list(stem.parameters())

  def step():
    grads = torch.autograd.grad((stem(images) * upstream).sum(), params)
    return float(grads[0].flatten()[0])

  _, seconds = _time_steps(step, args.repeats)
  return {'name': 'stem', 'model': 'cast_models.modules.ConvStem (original PyTorch)', 'batch': args.batch,
          'image_size': args.image_size, 'embed_dim': 384, 'ms': round(1e3 * seconds, 2),
          'images_per_s': round(args.batch / seconds, 2), 'repeats': args.repeats}


BENCHMARKS = {'forward': bench_forward, 'block': bench_block, 'stem': bench_stem, 'train_step': bench_train_step,
              'deit_train_step': bench_deit_train_step,
              'seg_train_step': bench_seg_train_step, 'sliding_window': bench_sliding_window}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--cast-repo', required=True, help='checkout of github.com/twke18/CAST')
  parser.add_argument('--batch', type=int, default=32, help='forward, train_step, deit_train_step')
  parser.add_argument('--image-size', type=int, default=224, help='forward, train_step, deit_train_step')
  parser.add_argument('--superpixels', type=int, default=196, help='grid superpixels (a square number)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
  parser.add_argument('--only', choices=sorted(BENCHMARKS), action='append',
                      help='run only these (repeatable; default: forward)')
  parser.add_argument('--seg-crop', type=int, default=512)
  parser.add_argument('--seg-batch', type=int, default=8)
  parser.add_argument('--seg-classes', type=int, default=150)
  parser.add_argument('--seg-image', default='512x683', help='HxW of the sliding-window image (ADE20K-like)')
  args = parser.parse_args(argv)

  import torch  # pylint: disable=import-outside-toplevel

  if args.threads:
    torch.set_num_threads(args.threads)
  _install_dgl_stub(torch)
  _install_torchvision_stub_if_missing()
  sys.path.insert(0, args.cast_repo)
  for name in args.only or ['forward']:
    results = BENCHMARKS[name](torch, args)
    for result in results if isinstance(results, list) else [results]:
      print(json.dumps({**result, 'torch': torch.__version__, 'threads': torch.get_num_threads()}), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
