"""Speed measurements, one JSON line each.

    python -m cast_jax.benchmark                       # everything
    python -m cast_jax.benchmark --only forward --batch 32 --repeats 5

Measurements (``--only`` picks some):
  forward: the eval forward pass of a CAST model (default cast_small, 224 px, 196 superpixels, batch 32):
    compile time, then images per second over ``repeats`` timed calls after one warm-up call, and GFLOP/s by
    XLA's own flop count.
  matmul: one float32 (6304x384) @ (384x1536) product, the MLP's shape at batch 32: what this CPU's matrix
    units deliver, the ceiling the forward pass is compared with.
  attention_products: attention's three batched matrix products at CAST-S's first stage ((batch, 12 heads, 197
    tokens, 32 channels); q k^T, the weights times v, and the transposed product of the backward) beside the
    MLP's 2-D matmul: milliseconds each and the cores it kept busy (process CPU time over wall time), which shows
    XLA CPU running the batched ones on one core (why ``--cpu-devices`` helps; README "Speed").
  block: one timm transformer block of CAST-S's first stage ((batch, 197 tokens, 384 channels), 6 heads, exact
    GELU, LayerNorm eps 1e-6) forward and backward (gradients of the input and every parameter), then its
    attention and its MLP alone, the same way: one line each ('block', 'block_attention', 'block_mlp'),
    milliseconds and images per second; ``benchmarks/original_pytorch.py --only block`` times timm's.
  stem: cast_small's conv stem in train mode (BatchNorm on batch statistics) at ``--batch`` x ``--image-size``
    (224) pixels, forward and backward (gradients of every parameter, none of the image), as the DeiT step runs
    it: milliseconds and images per second; ``benchmarks/original_pytorch.py --only stem`` times the original's
    ``ConvStem``.
  conv_grad: the kernel gradient of each conv of the model's stem (its shapes at ``--batch`` and
    ``--image-size``), XLA's own beside ``cast_jax.models.conv``'s matrix products: milliseconds each.
  conv_forward: the forward of each conv of the stem compiled with XLA's defaults and with cast_jax's options
    (``cast_jax.xla_cpu``: XLA CPU's own convolutions instead of YNNPACK's on jax 0.10): milliseconds each.
  train_step: one MoCo-v3 step of cast_small with projector and predictor (two views, base and momentum
    branches, AdamW), batch 32 at 224 px: compile time, images per second (pairs of views) after one
    warm-up step, and peak memory (device peak where the backend reports it, else the process's peak RSS).
  deit_train_step: one DeiT supervised step of CAST-S as the trainer builds it (``configs/deit_cast_s.py``: the
    1000-way classifier, drop path 0.1, soft-target cross-entropy on mixup targets given with the batch, AdamW,
    weight EMA), batch 32 at 224 px: compile time, images per second, peak memory.
  superpixels: SEEDS (MoCo preset) and scikit-image SLIC on 224 px PartWorld images, one image at a time in one
    process (per core), beside jax_slic (preset 'jax_slic': 196 segments, 10 iterations) on a batch of
    ``--superpixel-batch`` (256) images in one jitted call on the default jax device: images per second each.
  seg_train_step: one Segmenter fine-tuning step (``cast_seg_deit`` small encoder, clusters 320/160/80/40, the
    2-block mask transformer, 150 classes: ADE20K's model) at crop 512, batch 8, 1024 grid superpixels (SEEDS'
    count at 512 px), masked cross-entropy and SGD Nesterov: compile time, images per second, peak memory.
    ``--seg-crop``, ``--seg-batch``, ``--seg-clusters``, ``--seg-classes`` shrink it (CI's tiny mode).
  sliding_window: the Segmenter's single-scale evaluation of one ``--seg-image`` (default 512x683, an ADE20K
    validation image's usual size) with window ``--seg-crop`` and stride crop - 32 (ADE20K: 512 / 480), windows
    in batches of 2: real SEEDS per window on the host, the model, the merge; seconds per image, split into
    SEEDS and the rest.
  pipeline: each augmentation recipe with its superpixels over the built-in PartWorld source, batches of 32,
    with 1 and 2 grain worker processes of one recipe thread each: images per second over
    ``--pipeline-batches`` batches, timed after worker start-up and after what the workers could buffer.

accelerator (``--accelerator``, not part of "everything"): the MoCo and supervised train steps of CAST-S at 224 px
    in float32 and bfloat16 on the jax device present: images/s, step time, peak memory, model-FLOPs utilisation,
    and end-to-end images/s with SEEDS on the host vs on-device superpixels (``cast_jax.benchmark_accelerator``;
    ``--tiny`` for CPU CI).

Every timed compilation gets cast_jax's XLA options (``cast_jax.xla_cpu``, what the trainer compiles with) plus
any ``--compiler-option``; ``--xla-defaults`` drops cast_jax's own, to time XLA's defaults side by side.
``python -m cast_jax.benchmark`` restarts itself with glibc's huge pages for malloc where they apply
(``cast_jax.malloc_hugepages``, as the trainer does; ``CAST_JAX_MALLOC_HUGEPAGES=0`` times without them); each
JSON line records the ``GLIBC_TUNABLES`` it ran with.

Weights are random (speed does not depend on them) and superpixels are a regular 14x14 grid of 16 px cells,
so every one of the 196 token slots is used, as with SEEDS at 224 px.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from cast_jax import benchmark_accelerator, malloc_hugepages, xla_cpu
from cast_jax.models import ModelSpec, build_model, conv, layers
from cast_jax.models.variants import compute_dtype


def grid_superpixels(batch: int, size: int, cells_per_side: int) -> np.ndarray:
  """(batch, size, size) int32 ids of a regular grid, row-major."""
  cell = size // cells_per_side
  idx = np.minimum(np.arange(size) // cell, cells_per_side - 1)
  ids = idx[:, None] * cells_per_side + idx[None, :]
  return np.broadcast_to(ids, (batch, size, size)).astype(np.int32)


def _environment() -> dict:
  device = jax.devices()[0]
  return {'backend': jax.default_backend(), 'device': getattr(device, 'device_kind', str(device)),
          'num_devices': jax.device_count(), 'jax': jax.__version__, 'python': platform.python_version()}


def on_devices(replicated_tree, batch_tree):
  """(replicated_tree, batch_tree) laid out as the trainer lays out state and batch: on one device as they are;
  on several (``--cpu-devices``) the first replicated and the second split over the devices along its leading
  (batch) axis, so the jitted step runs data parallel."""
  if jax.device_count() == 1:
    return replicated_tree, batch_tree
  from cast_jax.train import sharding  # pylint: disable=import-outside-toplevel

  mesh = sharding.make_mesh(1)
  sharding.check_batch_divides(jax.tree_util.tree_leaves(batch_tree)[0].shape[0], mesh)
  return (jax.device_put(replicated_tree, sharding.replicated(mesh)),
          jax.device_put(batch_tree, sharding.batch_sharding(mesh)))


def _mean_seconds(fn, args, repeats: int) -> float:
  """Mean seconds of ``repeats`` calls of an already compiled ``fn``, after one warm-up call."""
  jax.block_until_ready(fn(*args))  # warm-up outside the timed loop (allocator, caches)
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / repeats


# XLA options added over cast_jax's own (``cast_jax.xla_cpu``) for every timed compilation
# (``--compiler-option NAME=VALUE``); with ``--xla-defaults`` they are added over XLA's defaults instead.
COMPILER_OPTIONS: dict[str, str] = {}


def timed_compiler_options() -> dict[str, str]:
  """What the timed compilations get: cast_jax's options (none under ``xla_cpu.xla_defaults()``), then
  ``COMPILER_OPTIONS`` over them."""
  return {**(xla_cpu.project_options() or {}), **COMPILER_OPTIONS}


def _compile(jitted, *args):
  """(compiled, seconds it took), compiled with ``timed_compiler_options()``."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile(compiler_options=timed_compiler_options() or None)
  return compiled, time.perf_counter() - start


def _gflops_per_s(compiled, seconds: float, devices: int = 1) -> Optional[float]:
  """XLA's own flop count of ``compiled`` over ``seconds`` (None where the backend gives no count). XLA counts
  one device's share of a program split over ``devices``, so the count is multiplied by them."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  flops = (analysis or {}).get('flops')
  return round(flops * devices / seconds / 1e9, 1) if flops else None


def _grid_inputs(batch: int, image_size: int, num_superpixels: int, views: int = 1):
  """(random normalized images per view, grid superpixels): every one of ``num_superpixels`` slots used."""
  side = int(round(num_superpixels ** 0.5))
  if side * side != num_superpixels:
    raise ValueError(f'--superpixels must be a square number for the grid benchmark; got {num_superpixels}')
  rng = np.random.default_rng(0)
  images = [jnp.asarray(rng.normal(size=(batch, image_size, image_size, 3)), jnp.float32) for _ in range(views)]
  return images, jnp.asarray(grid_superpixels(batch, image_size, side))


def bench_forward(variant: str, batch: int, image_size: int, num_superpixels: int, repeats: int,
                  dtype: str) -> dict:
  spec = ModelSpec(kind='cast', variant=variant, image_size=image_size, max_segments=num_superpixels)
  model = build_model(spec, dtype=compute_dtype(dtype))
  (images,), superpixels = _grid_inputs(batch, image_size, num_superpixels)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), images[:1], superpixels[:1])
  variables, (images, superpixels) = on_devices(variables, (images, superpixels))
  forward = jax.jit(lambda v, x, y: model.apply(v, x, y)['features'])
  compiled, compile_s = _compile(forward, variables, images, superpixels)
  step_s = _mean_seconds(compiled, (variables, images, superpixels), repeats)
  return {'name': 'forward', 'model': f'cast_{variant}', 'dtype': dtype, 'batch': batch, 'image_size': image_size,
          'superpixels': num_superpixels, 'compile_s': round(compile_s, 2), 'step_s': round(step_s, 4),
          'images_per_s': round(batch / step_s, 2),
          'gflops_per_s': _gflops_per_s(compiled, step_s, jax.device_count()),
          'repeats': repeats, **_environment()}


def bench_matmul(repeats: int) -> dict:
  """One float32 matmul of the MLP's shape at batch 32 (6272 + 32 tokens, 384 -> 1536): the CPU's ceiling."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(6304, 384)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(384, 1536)), jnp.float32)
  compiled, _ = _compile(jax.jit(jnp.matmul), a, b)
  step_s = _mean_seconds(compiled, (a, b), repeats)
  return {'name': 'matmul', 'shape': '6304x384 @ 384x1536', 'step_s': round(step_s, 5),
          'gflops_per_s': round(2 * 6304 * 384 * 1536 / step_s / 1e9, 1), 'repeats': repeats, **_environment()}


def bench_attention_products(batch: int, repeats: int) -> list[dict]:
  """Each batched product of attention at cast_small's first stage, and the MLP's 2-D matmul for contrast:
  milliseconds and cores used (user + system CPU time of this process over the wall time of the calls)."""
  rng = np.random.default_rng(0)
  tokens, heads, head_dim, dim = 197, 12, 32, 384
  q = jnp.asarray(rng.normal(size=(batch, heads, tokens, head_dim)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(batch, heads, tokens, tokens)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(batch * tokens, dim)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(dim, 4 * dim)), jnp.float32)
  cases = [('q k^T', 'bhqd,bhkd->bhqk', (q, q)), ('weights v', 'bhqk,bhkd->bhqd', (weights, q)),
           ('weights^T g', 'bhqk,bhqd->bhkd', (weights, q)), ('mlp x w', 'nd,de->ne', (x, w))]
  rows = []
  for name, equation, operands in cases:
    compiled, _ = _compile(jax.jit(functools.partial(jnp.einsum, equation)), *operands)
    jax.block_until_ready(compiled(*operands))
    # process_time: user + system CPU time of all the process's threads, at a finer grain than os.times' ticks.
    cpu_start, start = time.process_time(), time.perf_counter()
    for _ in range(repeats):
      jax.block_until_ready(compiled(*operands))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    rows.append({'name': 'attention_products', 'product': name, 'einsum': equation, 'batch': batch,
                 'ms': round(1e3 * wall / repeats, 2), 'cores_used': round(cpu / wall, 2),
                 'repeats': repeats, **_environment()})
  return rows


BLOCK_TOKENS, BLOCK_DIM, BLOCK_HEADS = 197, 384, 6  # cast_small's first stage: 196 segments + the class token


def bench_block(batch: int, repeats: int, tokens: int = BLOCK_TOKENS, dim: int = BLOCK_DIM,
                heads: int = BLOCK_HEADS) -> list[dict]:
  """A transformer block, its attention and its MLP, each forward and backward at (batch, tokens, dim):
  milliseconds per call (mean of ``repeats`` after a warm-up) and images per second."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, tokens, dim)), jnp.float32)
  upstream = jnp.asarray(rng.normal(size=(batch, tokens, dim)), jnp.float32)  # the gradient flowing in
  parts = {'block': layers.Block(num_heads=heads), 'block_attention': layers.Attention(heads),
           'block_mlp': layers.Mlp(4 * dim)}
  rows = []
  for name, module in parts.items():
    params = jax.jit(module.init)(jax.random.PRNGKey(0), x)

    def loss(params, x, module=module):
      return jnp.sum(module.apply(params, x) * upstream)

    compiled, _ = _compile(jax.jit(jax.grad(loss, argnums=(0, 1))), params, x)
    seconds = _mean_seconds(compiled, (params, x), repeats)
    rows.append({'name': name, 'batch': batch, 'tokens': tokens, 'dim': dim, 'heads': heads,
                 'ms': round(1e3 * seconds, 2), 'images_per_s': round(batch / seconds, 2), 'repeats': repeats,
                 **_environment()})
  return rows


def bench_stem(batch: int, image_size: int, repeats: int, embed_dim: int = BLOCK_DIM) -> dict:
  """The conv stem in train mode, forward and backward with respect to its parameters only."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch, image_size, image_size, 3)), jnp.float32)
  stem = layers.ConvStem(embed_dim)
  variables = jax.jit(stem.init)(jax.random.PRNGKey(0), images[:1])
  size = image_size // 8
  upstream = jnp.asarray(rng.normal(size=(batch, size, size, embed_dim)), jnp.float32)

  def loss(params, batch_stats, images):
    out, _ = stem.apply({'params': params, 'batch_stats': batch_stats}, images, train=True,
                        mutable=['batch_stats'])
    return jnp.sum(out * upstream)

  args = (variables['params'], variables['batch_stats'], images)
  compiled, _ = _compile(jax.jit(jax.grad(loss)), *args)
  seconds = _mean_seconds(compiled, args, repeats)
  return {'name': 'stem', 'batch': batch, 'image_size': image_size, 'embed_dim': embed_dim,
          'ms': round(1e3 * seconds, 2), 'images_per_s': round(batch / seconds, 2), 'repeats': repeats,
          **_environment()}


def stem_layers(variant: str, image_size: int) -> list[tuple[int, int, int, int, int]]:
  """(input size, C_in, C_out, kernel, stride) of each conv of the CAST stem: four 3x3 convs with embed_dim/8
  channels doubling, then the 1x1 projection to embed_dim."""
  from cast_jax.models.variants import SIZES  # pylint: disable=import-outside-toplevel

  embed_dim = SIZES[variant]['embed_dim']
  layers, size, channels = [], image_size, 3
  for index, stride in enumerate((2, 2, 2, 1)):
    out_channels = embed_dim // 8 * 2 ** index
    layers.append((size, channels, out_channels, 3, stride))
    size, channels = (size + 2 - 3) // stride + 1, out_channels
  layers.append((size, channels, embed_dim, 1, 1))
  return layers


def _stem_layer_arrays(rng, batch: int, size: int, c_in: int, c_out: int, kernel: int, stride: int):
  """(x, w, padding, row) for one stem layer; row: the shape fields every per-layer result carries."""
  x = jnp.asarray(rng.standard_normal((batch, size, size, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, c_in, c_out)) * 0.1, jnp.float32)
  row = {'batch': batch, 'input': f'{size}x{size}x{c_in}', 'kernel': f'{kernel}x{kernel}', 'stride': stride,
         'out_channels': c_out}
  return x, w, ((kernel // 2, kernel // 2),) * 2, row


def bench_conv_grad(variant: str, batch: int, image_size: int, repeats: int) -> list[dict]:
  """The kernel gradient of each conv of the CAST stem (3x3 convs, then the 1x1 projection) at ``batch``:
  XLA's own against ``cast_jax.models.conv``'s per-tap matrix products, each jitted alone."""
  rng = np.random.default_rng(0)
  results = []
  for size, c_in, c_out, kernel, stride in stem_layers(variant, image_size):
    x, w, padding, shape = _stem_layer_arrays(rng, batch, size, c_in, c_out, kernel, stride)
    dy = jnp.ones_like(jax.eval_shape(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')), x, w))
    row = {'name': 'conv_grad', **shape, 'repeats': repeats}
    for kind in ('xla', 'matmul'):
      with conv.kernel_gradient(kind):
        grad = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv.conv_general_dilated(
            x, w, (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')), w)[1](dy)[0])
        compiled, _ = _compile(grad, x, w, dy)
      row[f'{kind}_ms'] = round(1e3 * _mean_seconds(compiled, (x, w, dy), repeats), 2)
    row['speedup'] = round(row['xla_ms'] / row['matmul_ms'], 2)
    results.append({**row, **_environment()})
  return results


def bench_conv_forward(variant: str, batch: int, image_size: int, repeats: int) -> list[dict]:
  """The forward of each conv of the CAST stem at ``batch``, compiled with XLA's defaults and with cast_jax's
  options (``cast_jax.xla_cpu``: on jax 0.10's XLA CPU, XLA's own convolutions instead of YNNPACK's)."""
  rng = np.random.default_rng(0)
  results = []
  for size, c_in, c_out, kernel, stride in stem_layers(variant, image_size):
    x, w, padding, shape = _stem_layer_arrays(rng, batch, size, c_in, c_out, kernel, stride)
    forward = jax.jit(lambda x, w: conv.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    row = {'name': 'conv_forward', **shape, 'repeats': repeats}
    for column, defaults in (('xla_defaults_ms', xla_cpu.xla_defaults()), ('cast_jax_ms', contextlib.nullcontext())):
      with defaults:
        compiled, _ = _compile(forward, x, w)
      row[column] = round(1e3 * _mean_seconds(compiled, (x, w), repeats), 2)
    row['speedup'] = round(row['xla_defaults_ms'] / row['cast_jax_ms'], 2)
    results.append({**row, **_environment()})
  return results


def _peak_memory_mb() -> dict:
  stats = {}
  try:
    device_stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # backends without memory statistics
    device_stats = {}
  if 'peak_bytes_in_use' in device_stats:
    stats['device_peak_mb'] = round(device_stats['peak_bytes_in_use'] / 2**20, 1)
  import resource  # pylint: disable=import-outside-toplevel

  stats['process_peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  return stats


def moco_step_setup(variant: str, batch: int, image_size: int, num_superpixels: int, dtype: str):
  """(objective, state, batch arrays) of the benchmarked MoCo-v3 step: cast_small with projector and predictor,
  AdamW, random weights, two views of random pixels with grid superpixels. Shared with ``cast_jax.profile_step``."""
  from cast_jax.train import optim, schedules  # pylint: disable=import-outside-toplevel
  from cast_jax.train.moco import MoCoObjective  # pylint: disable=import-outside-toplevel

  spec = ModelSpec(kind='cast', variant=variant, image_size=image_size, max_segments=num_superpixels, moco=True)
  model = build_model(spec, dtype=compute_dtype(dtype))
  (view1, view2), superpixels = _grid_inputs(batch, image_size, num_superpixels, views=2)
  batch_arrays = dict(view1=view1, view2=view2, superpixels1=superpixels, superpixels2=superpixels)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), view1[:2], superpixels[:2])
  labels = optim.trainable_labels(spec, variables['params'])
  lr_fn = schedules.warmup_cosine(1.5e-4, 10, 1000)
  objective = MoCoObjective(model=model, optimizer=optim.adamw(lr_fn, labels, 0.1, optim.decay_all),
                            momentum_fn=schedules.momentum_cosine(0.99, 1000), learning_rate_fn=lr_fn)
  state = jax.jit(objective.init_state)(variables, jax.random.PRNGKey(1))
  return objective, state, batch_arrays


def bench_train_step(variant: str, batch: int, image_size: int, num_superpixels: int, repeats: int,
                     dtype: str) -> dict:
  objective, state, batch_arrays = moco_step_setup(variant, batch, image_size, num_superpixels, dtype)
  metrics, compile_s, step_s = _time_train_step(objective, state, batch_arrays, repeats)
  return {'name': 'train_step', 'model': f'moco_cast_{variant}', 'dtype': dtype, 'batch': batch,
          'image_size': image_size, 'superpixels': num_superpixels, 'compile_s': round(compile_s, 2),
          'step_s': round(step_s, 3), 'images_per_s': round(batch / step_s, 2), 'repeats': repeats,
          **_peak_memory_mb(), **_environment()}


def mixed_soft_targets(batch: int, num_classes: int, smoothing: float = 0.1, lam: float = 0.7,
                       seed: int = 0) -> np.ndarray:
  """(batch, num_classes) float32 soft targets as the DeiT recipe's batch mixup makes them (timm ``Mixup``):
  lam x smoothed one-hot(y) + (1 - lam) x smoothed one-hot(flip(y)), each row summing to 1."""
  labels = np.random.default_rng(seed).integers(0, num_classes, batch)
  smooth = np.full((batch, num_classes), smoothing / num_classes, np.float32)
  smooth[np.arange(batch), labels] += 1.0 - smoothing
  return (lam * smooth + (1.0 - lam) * smooth[::-1]).astype(np.float32)


def deit_step_setup(variant: str, batch: int, image_size: int, num_superpixels: int, dtype: str):
  """(objective, state, batch arrays, spec) of the benchmarked DeiT supervised step of CAST as the trainer builds
  it (``configs/deit_cast_s.py``'s objective: ``tasks.supervised_task``): the 1000-way cast_deit classifier in
  train mode (drop path 0.1), soft-target cross-entropy on mixup targets (made here, as the input pipeline makes
  them, so not timed), AdamW with DeiT's decay mask, and the weight EMA (0.99996) updated inside the step, as the
  original's loop does after each step. Shared with ``cast_jax.profile_step``."""
  from cast_jax.train import config_lib, loop, schedules, tasks  # pylint: disable=import-outside-toplevel

  config = config_lib.supervised_defaults()
  config.model.update(variant=variant, image_size=image_size, max_segments=num_superpixels)
  config.batch_size, config.compute_dtype = batch, dtype
  config.steps_per_epoch, config.total_steps, config.num_epochs, config.warmup_epochs = 1000, 1000, 1, 0
  spec = loop.model_spec(config)
  model = build_model(spec, dtype=compute_dtype(dtype))
  (images,), superpixels = _grid_inputs(batch, image_size, num_superpixels)
  targets = jnp.asarray(mixed_soft_targets(batch, spec.num_classes, config.label_smoothing))
  batch_arrays = {'image': images, 'superpixels': superpixels, 'targets': targets}
  variables = loop.initial_variables(config, spec, model)
  schedule = schedules.Schedule.from_config(config, 1000 * batch)
  objective = tasks.build_task(config, spec, model, variables['params'], schedule).objective
  state = jax.jit(objective.init_state)(variables, jax.random.PRNGKey(1))
  return objective, state, batch_arrays, spec


def bench_deit_train_step(variant: str, batch: int, image_size: int, num_superpixels: int, repeats: int,
                          dtype: str) -> dict:
  """One DeiT supervised step of CAST (``deit_step_setup``), timed as ``bench_train_step`` times MoCo's."""
  objective, state, batch_arrays, spec = deit_step_setup(variant, batch, image_size, num_superpixels, dtype)
  metrics, compile_s, step_s = _time_train_step(objective, state, batch_arrays, repeats)
  return {'name': 'deit_train_step', 'model': f'cast_deit_{variant}', 'dtype': dtype, 'batch': batch,
          'image_size': image_size, 'superpixels': num_superpixels, 'classes': spec.num_classes,
          'compile_s': round(compile_s, 2), 'step_s': round(step_s, 3), 'images_per_s': round(batch / step_s, 2),
          'loss': round(float(metrics['loss']), 4), 'repeats': repeats, **_peak_memory_mb(), **_environment()}


def _time_train_step(objective, state, batch_arrays, repeats: int):
  """(last metrics, compile seconds, seconds per step) of ``objective.train_step`` jitted with the state
  donated: one warm-up step, then ``repeats`` timed steps on the same batch (data parallel over the devices
  where there are several, ``on_devices``)."""
  state, batch_arrays = on_devices(state, batch_arrays)
  compiled, compile_s = _compile(jax.jit(objective.train_step, donate_argnums=(0,)), state, batch_arrays)
  state, metrics = compiled(state, batch_arrays)  # warm-up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(repeats):
    state, metrics = compiled(state, batch_arrays)
  jax.block_until_ready((state, metrics))
  return metrics, compile_s, (time.perf_counter() - start) / repeats


def _segmenter(crop: int, clusters: tuple[int, ...], classes: int, dtype: str):
  """(spec, model, random variables) of the Segmenter at ``crop`` with 16 px grid superpixels' slots."""
  num_superpixels = (crop // 16) ** 2
  spec = ModelSpec(kind='cast_seg_deit', variant='small', image_size=crop, num_clusters=clusters,
                   max_segments=num_superpixels, seg_classes=classes)
  model = build_model(spec, dtype=compute_dtype(dtype))
  (images,), superpixels = _grid_inputs(2, crop, num_superpixels)
  variables = jax.jit(lambda rng: model.init({'params': rng, 'dropout': rng}, images, superpixels))(
      jax.random.PRNGKey(0))
  return spec, model, variables


def seg_step_setup(batch: int, crop: int, clusters: tuple[int, ...], classes: int, dtype: str):
  """(objective, state, batch, spec) of the Segmenter's SGD-Nesterov step on random images and labels with grid
  superpixels (``bench_seg_train_step`` times it, ``profile_step --step segmenter`` traces it)."""
  from cast_jax.train import segmentation  # pylint: disable=import-outside-toplevel

  spec, model, variables = _segmenter(crop, clusters, classes, dtype)
  (images,), superpixels = _grid_inputs(batch, crop, spec.max_segments)
  labels = jnp.asarray(np.random.default_rng(1).integers(0, classes, (batch, crop, crop)), jnp.int32)
  labels = labels.at[:, :8].set(255)  # some ignored pixels, as padding and unlabelled pixels give
  batch_arrays = {'image': images, 'superpixels': superpixels, 'label_map': labels}
  lr_fn = segmentation.segmenter_schedule(1e-3, 1000)
  objective = segmentation.SegmentationObjective(
      model=model, optimizer=segmentation.segmenter_optimizer(lr_fn, variables['params']), num_classes=classes,
      learning_rate_fn=lr_fn, label_key='label_map')
  state = jax.jit(objective.init_state)(variables, jax.random.PRNGKey(1))
  return objective, state, batch_arrays, spec


def bench_seg_train_step(batch: int, crop: int, clusters: tuple[int, ...], classes: int, repeats: int,
                         dtype: str) -> dict:
  """One SGD-Nesterov step of the Segmenter (train mode, dropout on) on random images and labels."""
  objective, state, batch_arrays, spec = seg_step_setup(batch, crop, clusters, classes, dtype)
  metrics, compile_s, step_s = _time_train_step(objective, state, batch_arrays, repeats)
  return {'name': 'seg_train_step', 'model': 'segmenter_cast_seg_deit_small', 'dtype': dtype, 'batch': batch,
          'crop': crop, 'superpixels': spec.max_segments, 'clusters': list(clusters), 'classes': classes,
          'compile_s': round(compile_s, 2), 'step_s': round(step_s, 3), 'images_per_s': round(batch / step_s, 2),
          'loss': round(float(metrics['loss']), 4), 'repeats': repeats, **_peak_memory_mb(), **_environment()}


def bench_sliding_window(image_hw: tuple[int, int], crop: int, clusters: tuple[int, ...], classes: int,
                         repeats: int, dtype: str) -> dict:
  """Single-scale sliding-window evaluation of one image (``cast_jax.sliding_window``), SEEDS included."""
  import cv2  # pylint: disable=import-outside-toplevel

  from cast_jax import sliding_window as sw  # pylint: disable=import-outside-toplevel
  from cast_jax.data.partworld import PartWholeDataset  # pylint: disable=import-outside-toplevel
  from cast_jax.superpixels import compute_superpixels  # pylint: disable=import-outside-toplevel

  spec, model, variables = _segmenter(crop, clusters, classes, dtype)
  picture = PartWholeDataset(1, image_size=224)[0]['image']  # a real picture, so SEEDS does real work
  image = sw.normalize(cv2.resize(picture, (image_hw[1], image_hw[0]), interpolation=cv2.INTER_LINEAR))
  settings = sw.SlidingWindow(window=crop, stride=max(8, crop - 32), window_batch=2)
  forward = sw.segmenter_window_fn(model, variables)
  seeds_s = []

  def timed_superpixels(pixels, config, max_segments):  # SEEDS' share of the time, measured where it runs
    begin = time.perf_counter()
    out = compute_superpixels(pixels, config, max_segments)
    seeds_s.append(time.perf_counter() - begin)
    return out

  sw.compute_superpixels, original = timed_superpixels, sw.compute_superpixels
  try:
    start = time.perf_counter()
    out = sw.sliding_window_inference(forward, image, settings, max_segments=spec.max_segments)  # compiles
    first_s = time.perf_counter() - start
    seeds_s.clear()
    start = time.perf_counter()
    for _ in range(repeats):
      out = sw.sliding_window_inference(forward, image, settings, max_segments=spec.max_segments)
    image_s = (time.perf_counter() - start) / repeats
  finally:
    sw.compute_superpixels = original
  return {'name': 'sliding_window', 'model': 'segmenter_cast_seg_deit_small', 'dtype': dtype,
          'image': f'{image_hw[0]}x{image_hw[1]}', 'window': crop, 'stride': settings.stride,
          'window_batch': settings.window_batch, 'windows': int(len(out['anchors'])), 'classes': classes,
          'first_call_s': round(first_s, 2), 'image_s': round(image_s, 3), 'images_per_s': round(1 / image_s, 3),
          'seeds_s_per_image': round(sum(seeds_s) / repeats, 3), 'repeats': repeats, **_environment()}


def _moco_superpixels():
  """SEEDS with the MoCo recipe's settings, as a picklable callable for worker processes."""
  from cast_jax import superpixels  # pylint: disable=import-outside-toplevel

  return functools.partial(superpixels.compute_superpixels, config=superpixels.preset('moco'))


def _slic_superpixels():
  from cast_jax import superpixels  # pylint: disable=import-outside-toplevel

  return functools.partial(superpixels.compute_superpixels, config=superpixels.preset('slic'))


class _SegmentationView:
  """PartWorld with its part mask as the label map the segmentation recipe expects."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    example = self._source[index]
    return {'image': example['image'], 'label_map': example['part_mask'].astype(np.uint8),
            'label': example['label']}


def _pipeline_recipes(superpixel_fn):
  from cast_jax.data import recipes, segmentation, supervised  # pylint: disable=import-outside-toplevel

  return {
      'moco_two_views': recipes.MoCoTwoViews(superpixel_fn),
      'linear_probe_train': recipes.LinearProbeTrain(superpixel_fn),
      'supervised_train': supervised.SupervisedTrain(superpixel_fn),
      'segmentation_train': segmentation.SegmentationTrain(superpixel_fn, crop_size=224, img_scale=(896, 224)),
      'center_crop_eval': recipes.CenterCropEval(superpixel_fn),
  }


def bench_pipeline(args) -> list[dict]:
  from cast_jax.data.partworld import PartWholeDataset  # pylint: disable=import-outside-toplevel
  from cast_jax.data.pipeline import PipelineConfig, make_dataset  # pylint: disable=import-outside-toplevel

  source = PartWholeDataset(4096, image_size=args.image_size)
  results = []
  for name, recipe in _pipeline_recipes(_moco_superpixels()).items():
    data = _SegmentationView(source) if name.startswith('segmentation') else source
    for workers in (1, 2):
      config = PipelineConfig(batch_size=args.batch, seed=0, num_workers=workers, prefetch_buffer=1,
                              read_threads=1, read_buffer=args.batch)
      # One recipe thread per worker process, so "workers" counts the processes doing the work. Worker
      # start-up and what the workers may have buffered meanwhile (a batch in the process queue and a batch of
      # read-ahead elements each) are consumed first; then the timed batches measure the steady rate.
      it = iter(make_dataset(data, recipe, config))
      for _ in range(2 * workers + 1):
        next(it)
      start = time.perf_counter()
      for _ in range(args.pipeline_batches):
        next(it)
      seconds = time.perf_counter() - start
      results.append({'name': 'pipeline', 'recipe': name, 'workers': workers, 'batch': args.batch,
                      'batches': args.pipeline_batches, 'image_size': args.image_size,
                      'images_per_s': round(args.batch * args.pipeline_batches / seconds, 1), **_environment()})
      del it
  return results


def bench_superpixels(args) -> list[dict]:
  """SEEDS (MoCo preset) and scikit-image SLIC one image at a time in this process (per core), and jax_slic on
  a batch of ``--superpixel-batch`` images in one jitted call on the default device, side by side."""
  from cast_jax.data.partworld import PartWholeDataset  # pylint: disable=import-outside-toplevel
  from cast_jax.superpixels import jax_slic, preset  # pylint: disable=import-outside-toplevel

  size = min(args.image_size, 224)  # PartWorld's largest
  source = PartWholeDataset(64, image_size=size)
  images = [source[i]['image'] for i in range(64)]
  results = []
  for method, fn in (('seeds', _moco_superpixels()), ('slic', _slic_superpixels())):
    fn(images[0])
    start = time.perf_counter()
    for image in images:
      fn(image)
    seconds = time.perf_counter() - start
    results.append({'name': 'superpixels', 'method': method, 'image_size': size, 'batch': 1,
                    'images_per_s': round(len(images) / seconds, 1), 'processes': 1, 'device': 'host (one core)'})

  config = preset('jax_slic')
  batch = np.stack([images[i % len(images)] for i in range(args.superpixel_batch)])
  fn = jax.jit(functools.partial(jax_slic.slic_batch, num_segments=config.num_segments,
                                 iterations=config.iterations, compactness=config.compactness))
  device_batch = jax.device_put(batch)  # the host-to-device copy is not timed: in a train step the views are there
  compiled, compile_s = _compile(fn, device_batch)
  seconds = _mean_seconds(compiled, (device_batch,), args.repeats)
  results.append({'name': 'superpixels', 'method': 'jax_slic', 'image_size': size, 'batch': args.superpixel_batch,
                  'iterations': config.iterations, 'compile_s': round(compile_s, 2), 'step_s': round(seconds, 4),
                  'images_per_s': round(args.superpixel_batch / seconds, 1), 'repeats': args.repeats,
                  **_environment()})
  return results


def _forward(args) -> list[dict]:
  return [bench_forward(args.variant, args.batch, args.image_size, args.superpixels, args.repeats, args.dtype)]


def _train_step(args) -> list[dict]:
  return [bench_train_step(args.variant, args.batch, args.image_size, args.superpixels, args.repeats, args.dtype)]


def _deit_train_step(args) -> list[dict]:
  return [bench_deit_train_step(args.variant, args.batch, args.image_size, args.superpixels, args.repeats,
                                args.dtype)]


def _matmul(args) -> list[dict]:
  return [bench_matmul(args.repeats)]


def _clusters(text: str) -> tuple[int, ...]:
  return tuple(int(v) for v in text.split(','))


def _seg_train_step(args) -> list[dict]:
  return [bench_seg_train_step(args.seg_batch, args.seg_crop, _clusters(args.seg_clusters), args.seg_classes,
                               args.repeats, args.dtype)]


def _sliding_window(args) -> list[dict]:
  height, width = (int(v) for v in args.seg_image.lower().split('x'))
  return [bench_sliding_window((height, width), args.seg_crop, _clusters(args.seg_clusters), args.seg_classes,
                               args.repeats, args.dtype)]


def _attention_products(args) -> list[dict]:
  return bench_attention_products(args.batch, args.repeats)


def _block(args) -> list[dict]:
  return bench_block(args.batch, args.repeats)


def _stem(args) -> list[dict]:
  return [bench_stem(args.batch, args.image_size, args.repeats)]


def _conv_grad(args) -> list[dict]:
  return bench_conv_grad(args.variant, args.batch, args.image_size, args.repeats)


def _conv_forward(args) -> list[dict]:
  return bench_conv_forward(args.variant, args.batch, args.image_size, args.repeats)


BENCHMARKS = {'forward': _forward, 'matmul': _matmul, 'attention_products': _attention_products,
              'block': _block, 'stem': _stem, 'conv_grad': _conv_grad, 'conv_forward': _conv_forward,
              'train_step': _train_step,
              'deit_train_step': _deit_train_step, 'superpixels': bench_superpixels,
              'pipeline': bench_pipeline, 'seg_train_step': _seg_train_step, 'sliding_window': _sliding_window}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m cast_jax.benchmark', description=__doc__.split('\n\n')[0])
  parser.add_argument('--only', choices=sorted(BENCHMARKS), action='append', help='run only these (repeatable)')
  parser.add_argument('--variant', default='small')
  parser.add_argument('--batch', type=int, default=None,
                      help='default 32; with --accelerator: the largest that fits (see benchmark_accelerator)')
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--superpixels', type=int, default=196)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  parser.add_argument('--cpu-devices', type=int, default=1,
                      help='present the CPU as this many jax devices and run the steps and the forward data '
                           'parallel over them (the trainer\'s config.mesh.cpu_devices; e.g. the core count)')
  parser.add_argument('--pipeline-batches', type=int, default=6, help='batches per pipeline measurement')
  parser.add_argument('--superpixel-batch', type=int, default=256,
                      help='images per jitted jax_slic call in the superpixels measurement (smaller for CI)')
  benchmark_accelerator.add_arguments(parser)
  parser.add_argument('--seg-crop', type=int, default=512, help='Segmenter crop / window (ADE20K: 512)')
  parser.add_argument('--seg-batch', type=int, default=8, help='Segmenter train batch (ADE20K: 8)')
  parser.add_argument('--seg-clusters', default='320,160,80,40', help='cast_seg_deit clusters per stage')
  parser.add_argument('--seg-classes', type=int, default=150, help='Segmenter classes (ADE20K: 150)')
  parser.add_argument('--seg-image', default='512x683', help='HxW of the sliding-window benchmark image')
  parser.add_argument('--compiler-option', action='append', default=[], metavar='NAME=VALUE',
                      help="an XLA option for the timed compilations (repeatable), over cast_jax's own "
                           '(cast_jax.xla_cpu), e.g. xla_cpu_experimental_ynn_fusion_type=...')
  parser.add_argument('--xla-defaults', action='store_true',
                      help="compile with XLA's defaults instead of cast_jax's options (on XLA CPU of jax 0.10: "
                           'YNNPACK convolutions), to time the two side by side')
  parser.add_argument('--conv-kernel-grad', choices=('matmul', 'xla'), default='matmul',
                      help="the convs' kernel gradient in the steps: matmul (cast_jax.models.conv, the default) "
                           "or xla (XLA's own), to time the two side by side")
  args = parser.parse_args(argv)
  xla_cpu.use_cpu_devices(args.cpu_devices)  # before anything below starts jax's backends
  if args.accelerator:
    if args.only:
      parser.error('--accelerator runs its own measurements; drop --only')
    benchmark_accelerator.finish_arguments(args)
    for result in benchmark_accelerator.run(args):
      print(json.dumps(result), flush=True)
    return 0
  if args.batch is None:
    args.batch = 32
  COMPILER_OPTIONS.clear()
  for option in args.compiler_option:
    name, sep, value = option.partition('=')
    if not sep or not name:
      parser.error(f'--compiler-option {option!r}: write NAME=VALUE')
    COMPILER_OPTIONS[name] = value
  defaults = xla_cpu.xla_defaults() if args.xla_defaults else contextlib.nullcontext()
  with defaults:
    options = timed_compiler_options()
    for name in args.only or list(BENCHMARKS):
      with conv.kernel_gradient(args.conv_kernel_grad):
        results = BENCHMARKS[name](args)
      for result in results:
        if 'step' in name:
          result = {**result, 'conv_kernel_grad': args.conv_kernel_grad}
        print(json.dumps({**result, 'compiler_options': options,
                          'glibc_tunables': os.environ.get('GLIBC_TUNABLES', '')}), flush=True)
  return 0


if __name__ == '__main__':
  malloc_hugepages.reexec_with_hugepages('cast_jax.benchmark')  # README "Huge pages for XLA's buffers"
  sys.exit(main())
