"""Strict checkpoint loading (cast_jax.loading): every missing, unexpected and mis-shaped leaf is named, kept-fresh
leaves are declared, position tables are resampled as PyTorch's bicubic interpolate, tasks declare their starts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cast_jax import loading
from cast_jax.models.variants import ModelSpec


def _tree(seed=0, head=10, grid=4, dim=6):
  rng = np.random.default_rng(seed)
  return {
      'params': {
          'pos_embed': rng.standard_normal((1, grid * grid, dim)).astype(np.float32),
          'blocks_0': {'attn': {'qkv': {'kernel': rng.standard_normal((dim, 3 * dim)).astype(np.float32),
                                        'bias': rng.standard_normal((3 * dim,)).astype(np.float32)}}},
          'head': {'kernel': rng.standard_normal((dim, head)).astype(np.float32),
                   'bias': np.zeros((head,), np.float32)},
      },
      'batch_stats': {'patch_embed': {'proj_1': {'mean': rng.standard_normal((3,)).astype(np.float32)}}},
  }


def test_a_fitting_checkpoint_loads_every_leaf_in_the_fresh_dtype():
  fresh, ckpt = _tree(0), _tree(1)
  ckpt['params']['head']['kernel'] = ckpt['params']['head']['kernel'].astype(np.float64)
  out, kept = loading.load(fresh, ckpt)
  assert kept == []
  for name, value in loading.flat_names(out).items():
    np.testing.assert_array_equal(value, loading.flat_names(ckpt)[name].astype(np.float32))
    assert value.dtype == np.float32, name


def test_dont_load_keeps_fresh_values_and_reports_them():
  fresh, ckpt = _tree(0), _tree(1, head=7)  # a head of another size: kept fresh, so not mis-shaped
  out, kept = loading.load(fresh, ckpt, dont_load=('params/head/.*',))
  assert sorted(kept) == ['params/head/bias', 'params/head/kernel']
  np.testing.assert_array_equal(out['params']['head']['kernel'], fresh['params']['head']['kernel'])
  np.testing.assert_array_equal(out['params']['pos_embed'], ckpt['params']['pos_embed'])


def test_a_mismatched_checkpoint_fails_naming_every_missing_unexpected_and_misshaped_leaf():
  fresh = _tree(0)
  ckpt = _tree(1, head=7)
  del ckpt['params']['blocks_0']['attn']['qkv']['bias']
  del ckpt['batch_stats']['patch_embed']
  ckpt['params']['norm'] = {'scale': np.ones(6, np.float32)}
  with pytest.raises(loading.LoadError) as info:
    loading.load(fresh, ckpt, source='ckpt.npz')
  error = info.value
  assert [m.split()[0] for m in error.missing] == ['params/blocks_0/attn/qkv/bias',
                                                   'batch_stats/patch_embed/proj_1/mean']
  assert [u.split()[0] for u in error.unexpected] == ['params/norm/scale']
  assert [m.split(':')[0] for m in error.misshaped] == ['params/head/kernel', 'params/head/bias']
  message = str(error)
  assert message.startswith('ckpt.npz does not fit the model')
  for name in ('missing (in the model, not in the checkpoint): params/blocks_0/attn/qkv/bias (18,)',
               'missing (in the model, not in the checkpoint): batch_stats/patch_embed/proj_1/mean (3,)',
               'unexpected (in the checkpoint, not in the model): params/norm/scale (6,)',
               'mis-shaped: params/head/kernel: checkpoint (6, 7), model (6, 10)',
               'mis-shaped: params/head/bias: checkpoint (7,), model (10,)'):
    assert name in message, message


def test_a_renamed_wrapper_prefix_is_an_error_not_a_fresh_start():
  fresh = _tree(0)
  wrapped = {c: {'encoder': t} for c, t in _tree(1).items()}
  with pytest.raises(loading.LoadError) as info:
    loading.load(fresh, wrapped)
  assert len(info.value.missing) == 6 and len(info.value.unexpected) == 6  # every leaf, both ways
  assert 'params/encoder/pos_embed (1, 16, 6)' in info.value.unexpected


def test_skip_unexpected_drops_declared_leaves_and_typos_in_dont_load_are_errors():
  fresh, ckpt = _tree(0), _tree(1)
  ckpt['params']['norm'] = {'scale': np.ones(6, np.float32), 'bias': np.zeros(6, np.float32)}
  out, _ = loading.load(fresh, ckpt, skip_unexpected=('params/norm/.*',))
  assert 'norm' not in out['params']
  with pytest.raises(loading.LoadError, match="dont_load pattern matches no leaf of the model: 'params/haed/.*'"):
    loading.load(fresh, _tree(1), dont_load=('params/haed/.*',))


def test_a_resample_rule_fits_a_misshaped_position_table():
  fresh, ckpt = _tree(0, grid=6), _tree(1, grid=4)
  with pytest.raises(loading.LoadError, match=r'params/pos_embed: checkpoint \(1, 16, 6\), model \(1, 36, 6\)'):
    loading.load(fresh, ckpt)
  out, _ = loading.load(fresh, ckpt, resample={'params/pos_embed': loading.position_table()})
  np.testing.assert_allclose(out['params']['pos_embed'],
                             _reference_resize(ckpt['params']['pos_embed'], 0, 6), rtol=1e-6, atol=1e-6)
  # A rule that cannot fit the leaf is reported as mis-shaped, with the reason.
  bad = _tree(0, grid=6)
  bad['params']['pos_embed'] = np.zeros((1, 35, 6), np.float32)
  with pytest.raises(loading.LoadError, match='cannot resample: position table has 35 grid cells'):
    loading.load(bad, ckpt, resample={'params/pos_embed': loading.position_table()})


def _torch_bicubic_1d_weights(in_size, out_size):
  """PyTorch's upsample_bicubic2d along one axis, written from its C++ (UpSample.h) one output at a time."""
  a = -0.75
  conv1 = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  conv2 = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  taps = []
  for out in range(out_size):
    real = in_size / out_size * (out + 0.5) - 0.5  # area_pixel_compute_source_index, cubic: no clamp
    index = math.floor(real)
    t = real - index
    coeffs = [conv2(t + 1), conv1(t), conv1(1 - t), conv2(2 - t)]
    taps.append([(min(max(index - 1 + k, 0), in_size - 1), coeffs[k]) for k in range(4)])
  return taps


def _reference_resize(table, extra, out_grid):
  table = np.asarray(table, np.float64)
  g = math.isqrt(table.shape[1] - extra)
  grid = table[0, extra:].reshape(g, g, -1)
  taps = _torch_bicubic_1d_weights(g, out_grid)
  out = np.zeros((out_grid, out_grid, grid.shape[-1]))
  for y in range(out_grid):
    for x in range(out_grid):
      for iy, wy in taps[y]:
        for ix, wx in taps[x]:
          out[y, x] += wy * wx * grid[iy, ix]
  return np.concatenate([table[:, :extra], out.reshape(1, out_grid * out_grid, -1)], axis=1)


@pytest.mark.parametrize('src,dst,extra', [(4, 7, 0), (5, 3, 1), (28, 64, 0), (6, 6, 1)])
def test_position_table_resampling_matches_pytorch_bicubic(src, dst, extra):
  rng = np.random.default_rng(src * dst)
  table = rng.standard_normal((1, extra + src * src, 5)).astype(np.float32)
  if dst <= 8:
    expected = _reference_resize(table, extra, dst)
  else:  # the 4-fold loop is slow at 64x64; the separable form of the same 1-D weights
    weights = np.zeros((dst, src))
    for o, taps in enumerate(_torch_bicubic_1d_weights(src, dst)):
      for i, w in taps:
        weights[o, i] += w
    grid = np.einsum('Yy,yxd,Xx->YXd', weights, table[0, extra:].astype(np.float64).reshape(src, src, -1), weights)
    expected = np.concatenate([table[:, :extra], grid.reshape(1, dst * dst, -1)], axis=1)
  got = loading.resample_position_table(table, (1, extra + dst * dst, 5), extra_tokens=extra)
  assert got.dtype == np.float32 and got.shape == (1, extra + dst * dst, 5)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(got[:, :extra], table[:, :extra])  # the cls slot is copied
  if src == dst:
    np.testing.assert_array_equal(got, table)  # bicubic at equal size is the identity, as in PyTorch
  constant = np.full_like(table, 0.25)
  np.testing.assert_allclose(loading.resample_position_table(constant, got.shape, extra), 0.25, rtol=1e-6)


def test_start_rules_check_the_checkpoint_kind_and_take_a_moco_encoder():
  target = ModelSpec(kind='cast', num_classes=10)
  source = ModelSpec(kind='cast', moco=True)
  fresh = _tree(0)
  loaded = {c: {'encoder': {k: v for k, v in t.items() if k != 'head'}, 'projector': {'w': np.ones(2)}}
            for c, t in _tree(1).items()}
  rules = loading.StartRules(kinds=('cast',), moco=True, dont_load=('params/head/.*',))
  out, kept = loading.start_from(fresh, target, source, loaded, rules)
  assert kept == ['params/head/bias', 'params/head/kernel']
  np.testing.assert_array_equal(out['params']['pos_embed'], loaded['params']['encoder']['pos_embed'])
  with pytest.raises(ValueError, match='holds a cast_deit model; this model starts from cast checkpoints'):
    loading.start_from(fresh, target, ModelSpec(kind='cast_deit'), loaded, rules)
  with pytest.raises(ValueError, match='is not a MoCo checkpoint'):
    loading.start_from(fresh, target, ModelSpec(kind='cast'), loaded, rules)


def test_torch_default_init_redraws_only_the_matched_layers():
  variables = {'params': {'block_fusion': {'proj': {'kernel': np.zeros((400, 8), np.float32),
                                                    'bias': np.zeros(8, np.float32)},
                                           'norm': {'scale': np.full(400, 3.0, np.float32),
                                                    'bias': np.full(400, 3.0, np.float32)}},
                          'other': {'kernel': np.zeros((3, 3), np.float32)}},
               'batch_stats': {'block_fusion': {'norm': {'mean': np.full(400, 3.0, np.float32),
                                                         'var': np.full(400, 3.0, np.float32)}}}}
  out = loading.torch_default_init(variables, '(params|batch_stats)/block_fusion/.*', seed=0)
  kernel = out['params']['block_fusion']['proj']['kernel']
  assert kernel.dtype == np.float32
  assert np.abs(kernel).max() <= 1 / 20 and np.abs(kernel).max() > 0.045  # U(+-1/sqrt(400)) reaches its bound
  assert abs(kernel.std() - 1 / 20 / math.sqrt(3)) < 0.002  # the std of a uniform on [-b, b]
  assert 0 < np.abs(out['params']['block_fusion']['proj']['bias']).max() <= 1 / 20
  np.testing.assert_array_equal(out['params']['block_fusion']['norm']['scale'], 1.0)
  np.testing.assert_array_equal(out['params']['block_fusion']['norm']['bias'], 0.0)
  np.testing.assert_array_equal(out['batch_stats']['block_fusion']['norm']['mean'], 0.0)
  np.testing.assert_array_equal(out['batch_stats']['block_fusion']['norm']['var'], 1.0)
  np.testing.assert_array_equal(out['params']['other']['kernel'], 0.0)
