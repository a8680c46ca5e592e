"""The CPU as several jax devices (``xla_cpu.use_cpu_devices``, ``config.mesh.cpu_devices``, the benchmark's
``--cpu-devices``): the setting's errors, and a MoCo CAST train step that a 2-device mesh really splits over the
batch (each device computes half the flops) with the 1-device result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from cast_jax import xla_cpu
from cast_jax.train import sharding
from conftest import REPO_ROOT


def test_a_count_below_one_is_refused_with_the_fix():
  with pytest.raises(ValueError, match=r'cpu_devices must be >= 1; got 0.*os.cpu_count\(\)'):
    xla_cpu.use_cpu_devices(0)


def test_one_device_changes_nothing_and_more_after_jax_started_is_an_error():
  jax.devices()  # this test process has started jax's backends
  xla_cpu.use_cpu_devices(1)
  with pytest.raises(RuntimeError, match='cpu_devices=2 must be set before jax starts its backends'):
    xla_cpu.use_cpu_devices(2)
  assert jax.local_device_count() == 1


def test_the_trainer_refuses_a_device_count_jax_does_not_have():
  sharding.check_cpu_devices(1)
  with pytest.raises(ValueError, match=r'config.mesh.cpu_devices=2, but jax has 1 CPU device\(s\)'):
    sharding.check_cpu_devices(2)


# A MoCo CAST step (random weights, grid superpixels) compiled on a 1-device and a 2-device mesh in one process
# that splits its CPU in two; it prints the per-device flops of both and both losses. Segment pooling used to
# fold the batch into the scatter's segment ids, which made the partitioner replicate everything after it: each
# device computed the whole batch (per-device flops 86% of the unsplit program's, not 50%).
_SPLIT_STEP = r'''
import json, jax
from cast_jax import xla_cpu
xla_cpu.use_cpu_devices(2)
from cast_jax import benchmark
from cast_jax.train import sharding

objective, state, arrays = benchmark.moco_step_setup('small', 4, 64, 64, 'float32')
results = {}
for devices in (1, 2):
  mesh = sharding.make_mesh(1, jax.devices()[:devices])
  placed_state = jax.device_put(state, sharding.replicated(mesh))
  placed_batch = jax.device_put(arrays, sharding.batch_sharding(mesh))
  compiled = jax.jit(objective.train_step).lower(placed_state, placed_batch).compile(
      compiler_options=xla_cpu.project_options(fast_compile=True))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  _, metrics = compiled(placed_state, placed_batch)
  results[devices] = dict(flops=cost['flops'], loss=float(metrics['loss']))
print(json.dumps({'device_count': jax.device_count(), **{str(k): v for k, v in results.items()}}))
'''


def _run_on_two_cpu_devices(program: str) -> dict:
  """The last stdout line (JSON) of ``program`` run in a fresh process (its own jax, split in two devices)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO_ROOT))
  done = subprocess.run([sys.executable, '-c', program], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


# Segment pooling alone, batch 4 split over 2 devices: the compiled per-device program must scatter into its own
# 2 images' segments with no collective (the folded-batch form replicated it: a 4-image scatter on each device).
_SPLIT_POOLING = r'''
import json, re, jax, jax.numpy as jnp, numpy as np
from cast_jax import xla_cpu
xla_cpu.use_cpu_devices(2)
from cast_jax.models import segments
from cast_jax.train import sharding

mesh = sharding.make_mesh(1)
rng = np.random.default_rng(0)
values = jnp.asarray(rng.normal(size=(4, 64, 8)), jnp.float32)
ids = jnp.asarray(rng.integers(0, 16, size=(4, 64)), jnp.int32)
placed = jax.device_put((values, ids), sharding.batch_sharding(mesh))
pooled = jax.jit(lambda v, i: segments.segment_mean(v, i, 16)[0])
text = pooled.lower(*placed).compile().as_text()
scatters = re.findall(r'= f32\[([0-9,]+)\][^ ]* scatter\(', text)
collectives = re.findall(r'all-gather|all-reduce|all-to-all|collective-permute', text)
close = bool(np.allclose(np.asarray(pooled(*placed)), np.asarray(pooled(values, ids)), rtol=0, atol=1e-6))
print(json.dumps({'scatters': scatters, 'collectives': collectives, 'same_values': close}))
'''


def test_segment_pooling_stays_split_over_the_batch():
  result = _run_on_two_cpu_devices(_SPLIT_POOLING)
  assert result['scatters'] and all(shape.split(',')[0] == '2' for shape in result['scatters']), result
  assert result['collectives'] == [] and result['same_values'], result


@pytest.mark.slow
def test_a_moco_step_on_two_cpu_devices_splits_the_batch_and_matches_one_device():
  """Slow: compiles a MoCo CAST-S step twice (70 s here)."""
  result = _run_on_two_cpu_devices(_SPLIT_STEP)
  assert result['device_count'] == 2
  one, two = result['1'], result['2']
  # Each of the two devices runs half the batch: about half the flops (the replicated optimizer update and the
  # small B x B contrastive logits are the rest).
  assert two['flops'] < 0.6 * one['flops'], (one, two)
  # Same program, only the cross-device summation order differs (float32).
  assert abs(two['loss'] - one['loss']) <= 1e-5 * abs(one['loss']), (one, two)
