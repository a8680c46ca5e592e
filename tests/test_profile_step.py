"""``cast_jax.profile_step``: op times from a real jax.profiler trace, attributed to kinds, phases and lines."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from cast_jax import profile_step
from cast_jax.models.layers import exact_gelu


def test_self_times_subtract_nested_events():
  events = [{'ph': 'X', 'name': 'while.1', 'ts': 0, 'dur': 100, 'pid': 1, 'tid': 1},
            {'ph': 'X', 'name': 'body_fusion', 'ts': 10, 'dur': 30, 'pid': 1, 'tid': 1},
            {'ph': 'X', 'name': 'body_fusion', 'ts': 50, 'dur': 20, 'pid': 1, 'tid': 1},
            {'ph': 'X', 'name': 'dot.3', 'ts': 5, 'dur': 40, 'pid': 1, 'tid': 2},  # another thread: not nested
            {'ph': 'i', 'name': 'marker', 'ts': 1, 'pid': 1, 'tid': 1}]
  assert dict(profile_step.self_times(events)) == {'while.1': 50, 'body_fusion': 50, 'dot.3': 40}


def test_a_traced_function_is_attributed_to_its_ops_and_lines(tmp_path):
  """A gelu MLP with a gradient and a scatter-add: the trace's op time goes to matmuls, the scatter, both
  phases, and cast_jax's gelu line."""

  def loss(w, x, ids):
    h = exact_gelu(x @ w)
    pooled = jnp.zeros((8, h.shape[1])).at[ids].add(h)  # segment pooling's scatter-add
    return (pooled ** 2).sum()

  grad = jax.jit(jax.value_and_grad(loss))
  rng = np.random.default_rng(0)
  args = (jnp.asarray(rng.normal(size=(256, 256)), jnp.float32), jnp.asarray(rng.normal(size=(512, 256)), jnp.float32),
          jnp.asarray(rng.integers(0, 8, 512), jnp.int32))
  compiled = grad.lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  wall, groups = profile_step.traced_op_times(lambda: jax.block_until_ready(compiled(*args)), compiled.as_text(),
                                              steps=3, out=str(tmp_path))
  assert wall > 0
  assert groups['kind']['matmul/conv'] > 0, groups['kind']
  assert groups['kind']['scatter'] > 0 or groups['kind']['reduce'] > 0, groups['kind']
  assert groups['phase']['backward'] > 0 and groups['phase']['forward/update'] > 0, groups['phase']
  sources = list(groups['source'])
  assert any(s.startswith('cast_jax/models/layers.py:') and s.endswith('exact_gelu') for s in sources), sources
  # Only the module's instructions are counted: the op time per call is below the calls' summed wall time x cores.
  assert sum(groups['phase'].values()) < wall * 8


def test_stack_frames_and_metadata_parse_hlo_text():
  compiled = jax.jit(lambda x: exact_gelu(x).sum()).lower(jnp.ones((4, 4))).compile()
  text = compiled.as_text()
  metadata = profile_step.instruction_metadata(text)
  frames = profile_step.parse_stack_frames(text)
  gelu = [m for m in metadata.values() if profile_step.op_source(m, frames).endswith('exact_gelu')]
  assert gelu, (metadata, frames)


def test_every_instruction_is_found_including_tuple_shaped_ones():
  """Multi-output fusions and while loops have tuple shapes ``(f32[..], s32[])``; their time must not be lost."""

  def f(x):
    a, b = jnp.sin(x), jnp.cos(x)
    looped = jax.lax.fori_loop(0, 5, lambda i, c: c * 1.1 + a, x)  # a while loop over a tuple carry
    return a.sum(0), b.max(0), looped

  text = jax.jit(f).lower(jnp.ones((64, 64))).compile().as_text()
  metadata = profile_step.instruction_metadata(text)
  defined = set(re.findall(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=', text, flags=re.M))
  assert defined and defined == set(metadata), sorted(defined - set(metadata))
  assert any(m['opcode'] == 'while' for m in metadata.values())


def test_the_segmenter_step_profile_names_the_segmenters_lines(tmp_path, capsys):
  """``--step segmenter``: the ADE20K Segmenter's step (here shrunk to crop 64) traced and summed per op."""
  assert profile_step.main(['--step', 'segmenter', '--batch', '1', '--seg-crop', '64', '--seg-clusters', '8,4,2,1',
                            '--seg-classes', '3', '--steps', '1', '--top', '50', '--out', str(tmp_path)]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  summary = lines[0]
  assert summary['model'] == 'segmenter_cast_seg_deit_small' and summary['crop'] == 64
  assert summary['clusters'] == [8, 4, 2, 1] and summary['superpixels'] == 16
  assert summary['wall_s_per_step'] > 0 and summary['op_s_per_step'] > 0
  sources = {row['source'] for row in lines[1:] if row.get('group') == 'source'}
  assert any(source.startswith('cast_jax/models/segmenter.py') for source in sources), sorted(sources)


def test_the_deit_step_profile_sees_the_conv_kernel_gradient(tmp_path, capsys):
  """``--step deit``: the benchmark's DeiT supervised step (shrunk to 64 px) traced; the conv stem's kernel
  gradients come from ``cast_jax/models/conv.py``'s matrix products, not XLA's convolution."""
  assert profile_step.main(['--step', 'deit', '--batch', '2', '--image-size', '64', '--superpixels', '64',
                            '--steps', '1', '--top', '200', '--out', str(tmp_path)]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  summary = lines[0]
  assert summary['model'] == 'cast_deit_small' and summary['classes'] == 1000 and summary['superpixels'] == 64
  assert summary['wall_s_per_step'] > 0 and summary['op_s_per_step'] > 0
  sources = {row['source'] for row in lines[1:] if row.get('group') == 'source'}
  assert any(source.startswith('cast_jax/models/conv.py') for source in sources), sorted(sources)
