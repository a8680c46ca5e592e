r"""The MoCo (or DeiT) train step with four ways of running the conv stem, timed interleaved in one process.

    python benchmarks/conv_variants.py --step moco --batch 32 --rounds 3

Variants: the kernel gradient from XLA or from ``cast_jax.models.conv``'s matrix products, each with XLA CPU's
default convolutions (YNNPACK) or with XLA's own (``xla_cpu_experimental_ynn_fusion_type`` without
INDIVIDUAL_CONVOLUTION, jax 0.10's other defaults kept). Each variant is compiled once; then every round runs each
variant's step once, so slow phases of a shared machine fall on all of them alike. Prints, per variant, the
seconds of each round and their mean (README "Speed", "The stem's convolutions on XLA CPU"). The trainer's own
compilation (``cast_jax.xla_cpu``) is the third variant: XLA's own convolutions, matmul kernel gradient.
"""

import argparse
import time

import jax

from cast_jax import benchmark
from cast_jax.models import conv

WITHOUT_YNN_CONVOLUTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}
VARIANTS = {  # name: (compiler options, kernel gradient)
    'ynn conv + xla kernel grad': (None, 'xla'),
    'ynn conv + matmul kernel grad': (None, 'matmul'),
    'xla conv + matmul kernel grad': (WITHOUT_YNN_CONVOLUTIONS, 'matmul'),
    'xla conv + xla kernel grad': (WITHOUT_YNN_CONVOLUTIONS, 'xla'),
}


def compiled_step(step: str, batch: int, image_size: int, superpixels: int, options, kernel_gradient: str):
  """(compiled train step, its arguments) of the benchmark's step, traced with ``kernel_gradient``."""
  with conv.kernel_gradient(kernel_gradient):
    if step == 'moco':
      objective, state, arrays = benchmark.moco_step_setup('small', batch, image_size, superpixels, 'float32')
    else:
      objective, state, arrays, _ = benchmark.deit_step_setup('small', batch, image_size, superpixels, 'float32')
    compiled = jax.jit(objective.train_step).lower(state, arrays).compile(compiler_options=options)
  return compiled, (state, arrays)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--step', choices=('moco', 'deit'), default='moco')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--superpixels', type=int, default=196, help='a square number (grid superpixels)')
  args = parser.parse_args()
  steps = {}
  for name, (options, kernel_gradient) in VARIANTS.items():
    compiled, arguments = compiled_step(args.step, args.batch, args.image_size, args.superpixels, options,
                                        kernel_gradient)
    jax.block_until_ready(compiled(*arguments))  # warm-up
    steps[name] = (compiled, arguments)
  seconds = {name: [] for name in steps}
  for _ in range(args.rounds):
    for name, (compiled, arguments) in steps.items():  # not donated: every round reuses the same state
      start = time.perf_counter()
      jax.block_until_ready(compiled(*arguments))
      seconds[name].append(time.perf_counter() - start)
  for name, values in seconds.items():
    mean = sum(values) / len(values)
    print(f'{args.step} batch {args.batch} | {name:30s} | ' + ' '.join(f'{v:.2f}' for v in values)
          + f' | mean {mean:.2f} s, {args.batch / mean:.2f} images/s', flush=True)


if __name__ == '__main__':
  main()
