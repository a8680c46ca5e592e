"""``python -m cast_jax.benchmark``: each model measurement runs and reports sensible fields (tiny sizes)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cast_jax import benchmark, xla_cpu


def test_forward_reports_speed_and_flop_rate():
  result = benchmark.bench_forward('small', batch=2, image_size=64, num_superpixels=64, repeats=1, dtype='float32')
  assert result['name'] == 'forward' and result['images_per_s'] > 0 and result['compile_s'] > 0
  assert result['gflops_per_s'] is not None and result['gflops_per_s'] > 0


def test_matmul_ceiling():
  result = benchmark.bench_matmul(repeats=1)
  assert result['shape'] == '6304x384 @ 384x1536' and result['gflops_per_s'] > 0


def test_attention_products_report_time_and_cores_of_each_product():
  rows = benchmark.bench_attention_products(batch=2, repeats=2)
  assert [r['product'] for r in rows] == ['q k^T', 'weights v', 'weights^T g', 'mlp x w']
  assert [r['einsum'] for r in rows][:3] == ['bhqd,bhkd->bhqk', 'bhqk,bhkd->bhqd', 'bhqk,bhqd->bhkd']
  for row in rows:
    assert row['ms'] > 0 and row['batch'] == 2
    assert 0 < row['cores_used'] <= 4 * (os.cpu_count() or 1)  # CPU time over wall time


def test_block_times_the_block_then_its_attention_and_mlp():
  rows = benchmark.bench_block(batch=2, repeats=1, tokens=5, dim=16, heads=2)
  assert [r['name'] for r in rows] == ['block', 'block_attention', 'block_mlp']
  for row in rows:
    assert (row['batch'], row['tokens'], row['dim'], row['heads']) == (2, 5, 16, 2)
    assert row['ms'] > 0 and row['images_per_s'] == pytest.approx(2 / (row['ms'] / 1e3), rel=0.02)


def test_stem_times_the_train_mode_stem_forward_and_backward():
  row = benchmark.bench_stem(batch=2, image_size=32, repeats=1, embed_dim=16)
  assert (row['name'], row['batch'], row['image_size'], row['embed_dim']) == ('stem', 2, 32, 16)
  assert row['ms'] > 0 and row['images_per_s'] == pytest.approx(2 / (row['ms'] / 1e3), rel=0.02)


def test_block_is_a_choice_of_the_command_line(capsys):
  assert 'block' in benchmark.BENCHMARKS and 'stem' in benchmark.BENCHMARKS
  with pytest.raises(SystemExit):
    benchmark.main(['--only', 'not_a_benchmark'])
  assert 'block' in capsys.readouterr().err  # argparse lists the choices


def test_conv_grad_times_both_kernel_gradients_on_the_stems_shapes():
  rows = benchmark.bench_conv_grad('small', batch=2, image_size=64, repeats=1)
  # cast_small's stem: 3 -> 48 -> 96 -> 192 -> 384 (strides 2, 2, 2, 1), then the 1x1 projection to 384.
  assert [(r['input'], r['kernel'], r['stride'], r['out_channels']) for r in rows] == [
      ('64x64x3', '3x3', 2, 48), ('32x32x48', '3x3', 2, 96), ('16x16x96', '3x3', 2, 192),
      ('8x8x192', '3x3', 1, 384), ('8x8x384', '1x1', 1, 384)]
  assert all(r['xla_ms'] > 0 and r['matmul_ms'] > 0 and r['speedup'] > 0 for r in rows)


@pytest.fixture
def compiled_with(monkeypatch):
  """The compiler options of every timed compilation, in order (``benchmark._compile`` spied on)."""
  seen = []
  original = benchmark._compile

  def spy(jitted, *args):
    seen.append(benchmark.timed_compiler_options())
    return original(jitted, *args)

  monkeypatch.setattr(benchmark, '_compile', spy)
  return seen


def test_conv_forward_times_xla_defaults_beside_cast_jax_options(compiled_with):
  seen = compiled_with
  rows = benchmark.bench_conv_forward('small', batch=2, image_size=64, repeats=1)
  assert [(r['input'], r['kernel'], r['stride'], r['out_channels']) for r in rows] == [
      ('64x64x3', '3x3', 2, 48), ('32x32x48', '3x3', 2, 96), ('16x16x96', '3x3', 2, 192),
      ('8x8x192', '3x3', 1, 384), ('8x8x384', '1x1', 1, 384)]
  assert all(r['xla_defaults_ms'] > 0 and r['cast_jax_ms'] > 0 and r['speedup'] > 0 for r in rows)
  # Each layer compiled twice: XLA's defaults first, then cast_jax's options.
  assert seen == [{}, xla_cpu.project_options() or {}] * len(rows)


def test_grid_superpixels_must_be_square():
  with pytest.raises(ValueError, match='square number'):
    benchmark.bench_train_step('small', batch=2, image_size=64, num_superpixels=66, repeats=1, dtype='float32')


def test_mixed_soft_targets_are_timm_batch_mixup_of_smoothed_labels():
  targets = benchmark.mixed_soft_targets(4, 10, smoothing=0.1, lam=0.7, seed=3)
  labels = np.random.default_rng(3).integers(0, 10, 4)
  assert targets.shape == (4, 10) and targets.dtype == np.float32
  np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
  for row, (a, b) in enumerate(zip(labels, labels[::-1])):
    expected = np.full(10, 0.01)
    expected[a] += 0.7 * 0.9
    expected[b] += 0.3 * 0.9
    np.testing.assert_allclose(targets[row], expected, rtol=1e-5)


@pytest.mark.slow
def test_deit_train_step_in_tiny_mode(capsys):
  """Slow (one compile of the CAST-S classifier's train step: 165 s on the loaded 2-core machine): -m slow."""
  import json  # pylint: disable=import-outside-toplevel

  argv = ['--only', 'deit_train_step', '--batch', '2', '--image-size', '64', '--superpixels', '64', '--repeats', '1']
  assert benchmark.main(argv) == 0
  (step,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert step['name'] == 'deit_train_step' and step['model'] == 'cast_deit_small' and step['classes'] == 1000
  assert (step['batch'], step['image_size'], step['superpixels']) == (2, 64, 64)
  assert step['images_per_s'] > 0 and step['compile_s'] > 0
  assert 0.5 * np.log(1000) < step['loss'] < 2 * np.log(1000)  # near chance for random weights


# ``--accelerator``: the peaks table, the utilisation, the batch choice, and the tiny mode CPU CI runs.

from cast_jax import benchmark_accelerator as accel  # noqa: E402


def test_known_peaks_and_the_override():
  assert accel.device_peak('NVIDIA H100 80GB HBM3', 'bfloat16') == (989.4, 'H100 SXM bf16 dense')
  assert accel.device_peak('NVIDIA H100 PCIe', 'float32') == (378.0, 'H100 PCIe TF32 dense')
  assert accel.device_peak('NVIDIA H200', 'bfloat16')[0] == 989.4
  assert accel.device_peak('NVIDIA A100-SXM4-80GB', 'float32')[0] == 156.0
  assert accel.device_peak('TPU v4', 'bfloat16')[0] == 275.0
  assert accel.device_peak('TPU v5 lite', 'bfloat16')[0] == 197.0
  peak, basis = accel.device_peak('cpu', 'float32')
  assert peak is None and basis.startswith('n/a') and '--peak-tflops' in basis
  assert accel.device_peak('cpu', 'float32', override_tflops=2.5) == (2.5, 'given by --peak-tflops')


def test_mfu_is_flops_over_time_over_peak():
  assert accel.mfu(4e12, 0.01, 1000.0) == 40.0  # 400 TFLOP/s of 1000
  assert accel.mfu(None, 0.01, 1000.0) is None and accel.mfu(4e12, 0.01, None) is None


def test_batch_choice_extrapolates_the_memory_estimate():
  # 10 GB fixed, 1 GB per 16 examples at the probe: 128 needs 18 GB, 192 needs 22 GB (> 0.85 * 24 = 20.4).
  gib = 2**30
  assert accel.choose_batch(16, 11 * gib, 10 * gib, 24 * gib)[:2] == [128, 96]
  assert accel.choose_batch(16, 11 * gib, 10 * gib, 5 * gib) == [8]  # nothing fits: the smallest is tried


def run_main(argv, capsys) -> list[dict]:
  import json  # pylint: disable=import-outside-toplevel

  assert benchmark.main(argv) == 0
  return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_accelerator_tiny_moco_float32(capsys):
  """What CPU CI runs: the tiny MoCo step, then end to end with SEEDS on the host and with jax_slic on device."""
  step, seeds, device = run_main(['--accelerator', '--tiny', '--objectives', 'moco', '--dtypes', 'float32'], capsys)
  assert step['name'] == 'accelerator_step' and step['objective'] == 'moco' and step['batch'] == 4
  assert step['image_size'] == 64 and step['dtype'] == 'float32' and step['loss_finite'] is True
  assert step['images_per_s'] > 0 and step['step_s'] > 0 and step['tflops_per_step'] > 0
  assert step['mfu_percent'] == 'n/a' and step['peak_tflops_assumed'] == 'n/a'  # a CPU has no known peak
  assert step['program_peak_mb'] > 0 and step['device_peak_mb'] == 'n/a'  # the CPU keeps no memory_stats
  assert seeds['name'] == device['name'] == 'accelerator_end_to_end'
  assert seeds['superpixels'].startswith('SEEDS on host') and device['superpixels'] == 'jax_slic on device'
  assert seeds['images_per_s'] > 0 and device['images_per_s'] > 0
  assert seeds['compile_s'] == step['compile_s'], 'the SEEDS run reuses the measured step'


@pytest.mark.slow
def test_accelerator_tiny_both_objectives_both_dtypes_with_given_peak(capsys):
  results = run_main(['--accelerator', '--tiny', '--peak-tflops', '1'], capsys)
  steps = [r for r in results if r['name'] == 'accelerator_step']
  assert [(r['objective'], r['dtype']) for r in steps] == [
      ('moco', 'float32'), ('moco', 'bfloat16'), ('supervised', 'float32'), ('supervised', 'bfloat16')]
  for r in steps:
    assert r['loss_finite'] and r['peak_tflops_assumed'] == 1.0 and r['peak_basis'] == 'given by --peak-tflops'
    assert 0 < r['mfu_percent'] < 100
  ends = [(r['objective'], r['dtype'], r['superpixels'] == 'jax_slic on device') for r in results
          if r['name'] == 'accelerator_end_to_end']
  assert ends == [('moco', 'bfloat16', False), ('moco', 'bfloat16', True), ('supervised', 'bfloat16', False),
                  ('supervised', 'bfloat16', True)]


def test_compiler_options_reach_the_timed_compilation_and_are_reported(capsys, compiled_with):
  seen = compiled_with
  given = {'xla_backend_optimization_level': '0'}
  project = xla_cpu.project_options() or {}
  for flags, expected in (([], {**project, **given}), (['--xla-defaults'], given)):
    seen.clear()
    assert benchmark.main(['--only', 'matmul', '--repeats', '1', *flags,
                           '--compiler-option', 'xla_backend_optimization_level=0']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['compiler_options'] == expected
    assert seen == [expected]
  with pytest.raises(SystemExit):
    benchmark.main(['--only', 'matmul', '--compiler-option', 'no_equals_sign'])
  assert 'write NAME=VALUE' in capsys.readouterr().err
