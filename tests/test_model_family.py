"""The model family: parameter counts against the spec, every size and kind, the hierarchy, and tiny models of
every kind run under ``jax.jit`` in eval and train mode, with the padding-slot contract and bfloat16.

Full-size models are only traced (``jax.eval_shape``); the models that run are tiny (embed_dim 48, one block
per stage, clusters 8/4/2/1, 64 px images with an 8x8 position grid) and get random, non-trivial parameters
(LayerNorm scales away from 1, biases and BN statistics away from 0) so that a wrongly applied mask or a
dropped term cannot hide behind an identity initialisation.
"""

from __future__ import annotations

import functools
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax.models import KINDS, SIZES, ModelSpec, build_model, is_frozen, pixel_hierarchy
from cast_jax.models.hierarchy import nesting_violations
from conftest import fast_jit


def flat(tree) -> dict[tuple[str, ...], object]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def to_numpy(tree):
  """Host copies of a jitted function's outputs: slicing them eagerly would compile one program per slice."""
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def num_params(shapes, keep=lambda path: True) -> int:
  return sum(int(np.prod(shape)) for path, shape in shapes.items() if keep(path))


@functools.lru_cache(maxsize=None)
def param_shapes(spec: ModelSpec) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{path below 'params': shape} of ``spec`` at its image size; traced only, nothing is computed."""
  model = build_model(spec)
  size = spec.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  superpixels = jax.ShapeDtypeStruct((1, size, size), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, superpixels)
  return {path: tuple(leaf.shape) for path, leaf in flat(variables['params']).items()}


# --------------------------------------------------------------------------------------------------------------
# Parameter counts of the full-size models (docs/original_behaviour.md#parameter-counts).

# cast_seg_deit pools to 320 clusters, so it needs more than the default 196 superpixel slots (ADE uses 1024).
SEG_DEIT = ModelSpec(kind='cast_seg_deit', max_segments=1024)


@pytest.mark.parametrize('spec, total', [
    (ModelSpec(kind='cast', num_classes=1000), 28_339_864),
    (ModelSpec(kind='cast_deit', num_classes=1000), 28_339_864),
    (ModelSpec(kind='cast_seg_pretrain', num_classes=1000), 28_932_376),
    # The original keeps an unused final norm (768) and 1000-way head (385,000); the port drops them.
    (SEG_DEIT, 28_933_144 - 385_768),
], ids=['cast', 'cast_deit', 'cast_seg_pretrain', 'cast_seg_deit'])
def test_total_parameter_counts_match_the_spec(spec, total):
  assert num_params(param_shapes(spec)) == total


def frozen_by_owner(spec: ModelSpec) -> dict[str, int]:
  shapes = param_shapes(spec)
  owners: dict[str, int] = {}
  for path, shape in shapes.items():
    if is_frozen(spec, path):
      owner = [name for name in path if name != 'encoder'][0]
      owners[owner] = owners.get(owner, 0) + int(np.prod(shape))
  return owners


def test_frozen_parameters_match_the_spec():
  cast = ModelSpec(kind='cast', num_classes=1000)
  assert frozen_by_owner(cast) == {'pos_embed': 301_056, 'pe_token': 384, 'pool4': 1_777_920}
  trainable_without_head = num_params(param_shapes(cast), lambda p: not is_frozen(cast, p) and p[0] != 'head')
  assert trainable_without_head == 25_875_504

  deit = ModelSpec(kind='cast_deit', num_classes=1000)
  assert frozen_by_owner(deit) == {'pool4': 1_777_920}
  assert num_params(param_shapes(deit), lambda p: not is_frozen(deit, p)) == 26_561_944

  seg_pretrain = ModelSpec(kind='cast_seg_pretrain', num_classes=1000)
  assert frozen_by_owner(seg_pretrain) == {'pos_embed': 301_056, 'pe_token': 384}
  assert frozen_by_owner(SEG_DEIT) == {}


@pytest.mark.parametrize('kind, trainable', [('cast', 47_395_888), ('cast_seg_pretrain', 49_766_320)])
def test_moco_trainable_parameter_counts(kind, trainable):
  spec = ModelSpec(kind=kind, moco=True)
  shapes = param_shapes(spec)
  assert num_params(shapes, lambda p: not is_frozen(spec, p)) == trainable
  assert num_params(shapes, lambda p: p[0] == 'projector') == 19_415_040
  assert num_params(shapes, lambda p: p[0] == 'predictor') == 2_105_344
  assert not any(p[0] == 'encoder' and p[1] == 'head' for p in shapes), 'MoCo puts its projector on features'


def test_component_parameter_counts_match_the_spec():
  shapes = param_shapes(ModelSpec(kind='cast_deit', num_classes=1000))
  by_owner: dict[str, int] = {}
  for path, shape in shapes.items():
    by_owner[path[0]] = by_owner.get(path[0], 0) + int(np.prod(shape))
  assert {k: v for k, v in by_owner.items() if k.startswith('blocks')} == {f'blocks_{i}': 1_774_464
                                                                           for i in range(11)}
  assert {k: v for k, v in by_owner.items() if k.startswith('pool')} == {f'pool{i}': 1_777_920 for i in (1, 2, 3, 4)}
  assert by_owner['patch_embed'] == 1_021_488
  assert by_owner['pos_embed'] == 301_440 and by_owner['cls_token'] == 384
  assert by_owner['norm'] == 768 and by_owner['head'] == 385_000
  assert shapes[('pos_embed',)] == (1, 785, 384)
  assert param_shapes(ModelSpec(kind='cast', num_classes=1000))[('pos_embed',)] == (1, 784, 384)


# --------------------------------------------------------------------------------------------------------------
# Every size of every kind (traced at 64 px so that it stays cheap).

BLOCK_NAME = re.compile(r'^blocks(\d*)_(\d+)$')


@pytest.mark.parametrize('kind', sorted(KINDS))
@pytest.mark.parametrize('variant', sorted(SIZES))
def test_every_size_builds_with_the_right_depth_and_width(variant, kind):
  spec = ModelSpec(kind=kind, variant=variant, num_clusters=(8, 4, 2, 1), image_size=64, max_segments=16)
  shapes = param_shapes(spec)
  dim, depth = SIZES[variant]['embed_dim'], SIZES[variant]['depth']

  blocks: dict[str, int] = {}
  for path, shape in shapes.items():
    if BLOCK_NAME.match(path[0]):
      blocks[path[0]] = blocks.get(path[0], 0) + int(np.prod(shape))
  assert len(blocks) == sum(depth)
  # A timm block has 12 D^2 + 13 D parameters; any other width or a missing layer changes that.
  assert set(blocks.values()) == {12 * dim * dim + 13 * dim}
  assert all(shapes[(name, 'attn', 'qkv', 'kernel')] == (dim, 3 * dim) for name in blocks)
  assert shapes[('cls_token',)] == (1, 1, dim)

  stages = sorted(BLOCK_NAME.match(name).groups() for name in blocks)
  if kind == 'vit_conv' or KINDS[kind]['block_naming'] == 'shared':
    assert {int(index) for _, index in stages} == set(range(sum(depth)))
    assert all(stage == '' for stage, _ in stages)
  else:
    per_stage = [sum(1 for stage, _ in stages if stage == str(s)) for s in (1, 2, 3, 4)]
    assert tuple(per_stage) == tuple(depth)

  pools = {path[0] for path in shapes if path[0].startswith('pool')}
  if kind == 'vit_conv':
    assert not pools
    assert shapes[('pos_embed',)] == (1, 1 + 4 * 4, dim)
  else:
    assert pools == {'pool1', 'pool2', 'pool3', 'pool4'}
    # GraphPooling: 12 D^2 + 22 D (centroid attention, fc1 to 4D, fc2 back).
    for pool in pools:
      assert num_params(shapes, lambda p, pool=pool: p[0] == pool) == 12 * dim * dim + 22 * dim
    fusion = shapes.get(('block_fusion', 'proj', 'kernel'))
    assert fusion == ((4 * dim, dim) if KINDS[kind]['fusion'] else None)


# --------------------------------------------------------------------------------------------------------------
# Hierarchy.


def test_pixel_hierarchy_composes_levels_like_a_numpy_loop():
  rng = np.random.default_rng(0)
  clusters = (8, 4, 2, 1)
  sizes = (16,) + clusters[:-1]
  logits = {f'logit{l + 1}': rng.normal(size=(2, n, k)).astype(np.float32)
            for l, (n, k) in enumerate(zip(sizes, clusters))}
  logits['cls1'] = np.zeros((2, 1, 3), np.float32)  # other intermediates are ignored
  superpixels = rng.integers(0, 16, (2, 16, 16)).astype(np.int32)

  hierarchy = to_numpy(fast_jit(pixel_hierarchy)(logits, superpixels))
  assert hierarchy.shape == (2, 4, 16, 16) and hierarchy.dtype == np.int32

  expected = np.zeros((2, 4, 16, 16), np.int64)
  for b in range(2):
    for y in range(16):
      for x in range(16):
        token = superpixels[b, y, x]
        for level in range(4):
          token = int(np.argmax(logits[f'logit{level + 1}'][b, token]))
          expected[b, level, y, x] = token
  np.testing.assert_array_equal(hierarchy, expected)

  for level, k in enumerate(clusters):
    assert hierarchy[:, level].min() >= 0 and hierarchy[:, level].max() < k
  assert len(np.unique(hierarchy[:, 0])) > 2, 'random logits should use several level-1 clusters'
  for b in range(2):
    for level in range(3):
      fine, coarse = hierarchy[b, level].ravel(), hierarchy[b, level + 1].ravel()
      for segment in np.unique(fine):
        assert len(np.unique(coarse[fine == segment])) == 1, 'levels must nest'
    assert nesting_violations(superpixels[b], hierarchy[b]) == []


def test_nesting_violations_names_what_does_not_nest():
  superpixels = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
  nested = np.stack([np.array([[0, 0, 0, 0], [1, 1, 1, 1]]), np.zeros((2, 4), int)])
  assert nesting_violations(superpixels, nested) == []
  broken = nested.copy()
  broken[0, 0, 3] = 1  # superpixel 1 now straddles two level-1 segments
  assert nesting_violations(superpixels, broken) == ['1 superpixel(s) spread over several level-1 segments']
  broken = np.stack([nested[0], np.array([[0, 1, 0, 0], [0, 0, 0, 0]])])  # level-1 segment 0 splits at level 2
  assert nesting_violations(superpixels, broken) == ['1 level-1 segment(s) spread over several level-2 segments']


# --------------------------------------------------------------------------------------------------------------
# Tiny models under jit.

TINY = dict(embed_dim=48, depth=(1, 1, 1, 1), num_clusters=(8, 4, 2, 1), image_size=64, max_segments=16)
CAST_KINDS = ('cast', 'cast_deit', 'cast_seg_pretrain', 'cast_seg', 'cast_seg_deit')
NUM_CLASSES = 5


def tiny_spec(kind: str, **changes) -> ModelSpec:
  fields = dict(TINY, kind=kind, num_classes=0 if kind == 'cast_seg_deit' else NUM_CLASSES)
  if kind == 'cast_seg_pretrain':
    # Without dropout, train mode is deterministic, so this model's train-mode compile also serves the
    # train-mode padding check below. The other kinds exercise dropout (same GraphPooling/BlockFusion code).
    fields.update(pool_dropout=0.0, fusion_dropout=0.0)
  fields.update(changes)
  return ModelSpec(**fields)


def block_superpixels() -> np.ndarray:
  """(2, 64, 64): 4x4 blocks of 16x16 px with ids 0..15, row-major in image 0 and column-major in image 1."""
  blocks = np.arange(16).reshape(4, 4)
  maps = np.stack([blocks, blocks.T])
  return maps.repeat(16, axis=1).repeat(16, axis=2).astype(np.int32)


IMAGES = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
SUPERPIXELS = block_superpixels()


def random_variables(model, images, superpixels, seed=0):
  """Variables of ``model`` with random, non-trivial values, from the init's shapes (no init is compiled)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, superpixels)
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    collection, name = path[0].key, path[-1].key
    shape = leaf.shape
    if collection == 'batch_stats':
      value = rng.uniform(0.5, 1.5, shape) if name == 'var' else 0.1 * rng.normal(size=shape)
    elif name == 'scale':
      value = 1.0 + 0.2 * rng.normal(size=shape)
    elif name == 'bias':
      value = 0.1 * rng.normal(size=shape)
    elif name == 'kernel':
      value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    else:  # position tables, class token
      value = 0.5 * rng.normal(size=shape)
    return np.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, shapes)


@functools.lru_cache(maxsize=None)
def compiled(spec: ModelSpec, dtype=None):
  """The model and its jitted eval and train functions, shared between tests (each compiles once)."""
  model = build_model(spec, dtype)
  evaluate = fast_jit(lambda v, x, s: model.apply(v, x, s))
  train = fast_jit(lambda v, x, s, key: model.apply(v, x, s, train=True, rngs={'dropout': key},
                                                    mutable=['batch_stats']))
  return model, evaluate, train


@functools.lru_cache(maxsize=None)
def tiny_variables(spec: ModelSpec):
  return random_variables(build_model(spec), IMAGES, SUPERPIXELS)


def assert_all_finite(tree):
  for path, leaf in flat(tree).items():
    leaf = np.asarray(leaf)
    if leaf.dtype.kind == 'f' or leaf.dtype == jnp.bfloat16:
      assert np.isfinite(leaf.astype(np.float32)).all(), f'{path} has non-finite values'


def assert_batch_stats_changed(before, after):
  before, after = flat(before), flat(after)
  assert before.keys() == after.keys() and before
  for path in before:
    assert not np.allclose(before[path], after[path]), f'batch_stats {path} did not change in train mode'


@pytest.mark.parametrize('kind', CAST_KINDS)
def test_tiny_cast_runs_under_jit_in_eval_and_train_mode(kind):
  spec = tiny_spec(kind)
  _, evaluate, train = compiled(spec)
  variables = tiny_variables(spec)

  out = to_numpy(evaluate(variables, IMAGES, SUPERPIXELS))
  assert_all_finite(out)
  readout = KINDS[kind]['readout']
  if readout in ('cls', 'token_mean'):
    assert out['features'].shape == (2, 48) and out['logits'].shape == (2, NUM_CLASSES)
    assert 'tokens' not in out
  elif readout == 'tokens':
    assert out['tokens'].shape == (2, 16, 48) and out['logits'].shape == (2, 16, NUM_CLASSES)
  else:
    assert out['tokens'].shape == (2, 17, 48) and 'logits' not in out
  inter = out['intermediates']
  for level, (n, k) in enumerate(zip((16, 8, 4, 2), (8, 4, 2, 1)), start=1):
    assert inter[f'logit{level}'].shape == (2, n, k)
    assert inter[f'centroid{level}'].shape == (2, k, 48) and inter[f'block{level}'].shape == (2, n, 48)
    picks = np.asarray(inter[f'sampled_inds{level}'])
    assert picks.min() >= 0 and picks.max() < n
    assert all(len(set(row)) == k for row in picks.tolist()), f'level {level} sampled a token twice'
  assert np.asarray(inter['valid_tokens']).all()
  # The two images have different maps, so their level-1 picks (FPS order) differ.
  assert not np.array_equal(inter['sampled_inds1'][0], inter['sampled_inds1'][1])

  out_train, state = to_numpy(train(variables, IMAGES, SUPERPIXELS, jax.random.PRNGKey(1)))
  assert_all_finite(out_train)
  assert_batch_stats_changed(variables['batch_stats'], state['batch_stats'])
  key = 'features' if 'features' in out else 'tokens'
  assert not np.allclose(out_train[key], out[key], atol=1e-3), 'train mode gave the eval-mode output'
  # Another dropout key: other outputs where dropout is on, the same ones where the spec turns it off.
  again, _ = to_numpy(train(variables, IMAGES, SUPERPIXELS, jax.random.PRNGKey(7)))
  if spec.pool_dropout or spec.fusion_dropout:
    assert not np.allclose(again[key], out_train[key], atol=1e-4), 'dropout is not active in train mode'
  else:
    np.testing.assert_array_equal(again[key], out_train[key])


def padded_superpixels() -> np.ndarray:
  """A batch whose largest id is 11: ids 12..15 never occur.

  Image 0 uses 0..11 without 5 (an empty but valid slot), image 1 only 0..10 (its slot 11 is empty, and valid
  because image 0 reaches 11).
  """
  blocks = np.arange(16).reshape(4, 4)
  first = blocks % 12
  first[first == 5] = 0
  second = blocks.T % 11
  maps = np.stack([first, second]).repeat(16, axis=1).repeat(16, axis=2)
  assert maps.max() == 11
  return maps.astype(np.int32)


@pytest.mark.parametrize('kind', ['cast', 'cast_seg'])
def test_padding_slots_change_nothing(kind):
  """With ids 12..15 absent, 16 slots must give what 12 slots give (the original's dynamic S = 12).

  'cast' covers the feature-resolution tokens and the class-token readout, 'cast_seg' the full-resolution
  tokens and the per-token readout; BlockFusion's masked statistics are checked in train mode below.
  """
  spec16 = tiny_spec(kind)
  spec12 = tiny_spec(kind, max_segments=12)
  variables = tiny_variables(spec16)  # parameter shapes do not depend on max_segments
  superpixels = padded_superpixels()
  out16 = to_numpy(compiled(spec16)[1](variables, IMAGES, superpixels))
  out12 = to_numpy(compiled(spec12)[1](variables, IMAGES, superpixels))
  assert_padding_invisible(out16, out12, kind)


def test_padding_slots_change_nothing_in_train_mode():
  """The same in train mode: batch statistics (BlockFusion's BN) must skip the padding rows."""
  spec16 = tiny_spec('cast_seg_pretrain')
  assert spec16.pool_dropout == spec16.fusion_dropout == 0.0, 'dropout would make the two runs differ'
  spec12 = spec16.replace(max_segments=12)
  variables = tiny_variables(spec16)
  superpixels = padded_superpixels()
  key = jax.random.PRNGKey(2)
  out16, state16 = to_numpy(compiled(spec16)[2](variables, IMAGES, superpixels, key))
  out12, state12 = to_numpy(compiled(spec12)[2](variables, IMAGES, superpixels, key))
  assert_padding_invisible(out16, out12, 'cast_seg_pretrain')
  stats16, stats12 = flat(state16['batch_stats']), flat(state12['batch_stats'])
  assert stats16.keys() == stats12.keys()
  for path in stats16:
    np.testing.assert_allclose(stats16[path], stats12[path], rtol=1e-5, atol=1e-6, err_msg=str(path))


def assert_padding_invisible(out16, out12, kind):
  inter16, inter12 = out16['intermediates'], out12['intermediates']
  np.testing.assert_array_equal(np.asarray(inter16['valid_tokens']), np.array([[True] * 12 + [False] * 4] * 2))
  np.testing.assert_allclose(inter16['logit1'][:, :12], inter12['logit1'], rtol=1e-5, atol=1e-5)
  # Level 4 pools the 2 level-3 centroids into 1: both are equidistant from their mean, so its FPS pick is a
  # rounding-level tie (not something padding decides). Its class token does not depend on the pick.
  for level in (1, 2, 3):
    np.testing.assert_array_equal(np.asarray(inter16[f'sampled_inds{level}']),
                                  np.asarray(inter12[f'sampled_inds{level}']), err_msg=f'sampled_inds{level}')
    np.testing.assert_allclose(inter16[f'centroid{level}'], inter12[f'centroid{level}'], rtol=1e-4, atol=1e-5)
  for level in (1, 2, 3, 4):
    np.testing.assert_allclose(inter16[f'cls{level}'], inter12[f'cls{level}'], rtol=1e-4, atol=1e-5)
  # The slots that exist in both runs, the empty ones (id 5 in image 0, id 11 in image 1) included.
  np.testing.assert_array_equal(np.asarray(inter16['padding_mask1'])[:, :12], np.asarray(inter12['padding_mask1']))
  assert np.asarray(inter12['padding_mask1'])[0, 5] and np.asarray(inter12['padding_mask1'])[1, 11]
  readout = KINDS[kind]['readout']
  if readout in ('cls', 'token_mean'):
    np.testing.assert_allclose(out16['features'], out12['features'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out16['logits'], out12['logits'], rtol=1e-4, atol=1e-5)
  else:
    rows = 12 if readout == 'tokens' else 13  # 'fused' has the class row first
    np.testing.assert_allclose(out16['tokens'][:, :rows], out12['tokens'], rtol=1e-4, atol=1e-5)


def test_conv_vit_runs_under_jit_in_eval_and_train_mode():
  spec = ModelSpec(kind='vit_conv', embed_dim=48, depth=(1, 1), image_size=64, num_classes=NUM_CLASSES)
  _, evaluate, train = compiled(spec)
  variables = tiny_variables(spec)
  out = to_numpy(evaluate(variables, IMAGES, SUPERPIXELS))
  assert_all_finite(out)
  assert out['features'].shape == (2, 48) and out['patch_tokens'].shape == (2, 16, 48)  # 4x4 patch grid
  assert out['logits'].shape == (2, NUM_CLASSES)
  assert flat(variables['params'])[('pos_embed',)].shape == (1, 17, 48)
  # The superpixels are accepted and ignored.
  other = to_numpy(evaluate(variables, IMAGES, np.zeros_like(SUPERPIXELS)))
  np.testing.assert_array_equal(other['features'], out['features'])

  out_train, state = to_numpy(train(variables, IMAGES, SUPERPIXELS, jax.random.PRNGKey(1)))
  assert_all_finite(out_train)
  assert_batch_stats_changed(variables['batch_stats'], state['batch_stats'])


def test_moco_wrapper_projects_and_predicts_under_jit():
  """MoCo around the cheap-to-compile ConvViT: the wrapper's behaviour does not depend on the encoder."""
  spec = ModelSpec(kind='vit_conv', embed_dim=48, depth=(1, 1), image_size=64, moco=True, moco_dim=16,
                   moco_mlp_dim=32)
  model, evaluate, train = compiled(spec)
  variables = tiny_variables(spec)
  assert {'encoder', 'projector', 'predictor'} == set(variables['params'])

  # The base branch, in train mode: every BN (stem, projector, predictor) updates its statistics.
  out, state = to_numpy(train(variables, IMAGES, SUPERPIXELS, jax.random.PRNGKey(1)))
  assert_all_finite(out)
  assert out['projection'].shape == (2, 16) and out['prediction'].shape == (2, 16)
  assert out['features'].shape == (2, 48) and 'logits' not in out
  assert_batch_stats_changed(variables['batch_stats'], state['batch_stats'])
  assert {'projector', 'predictor', 'encoder'} == set(state['batch_stats'])
  # The projector's last BN has no affine part: in train mode its output has zero mean per channel.
  np.testing.assert_allclose(out['projection'].mean(axis=0), 0.0, atol=1e-4)

  # The base branch in eval mode, and the momentum branch: the same projection, and no prediction.
  base = to_numpy(evaluate(variables, IMAGES, SUPERPIXELS))
  project = fast_jit(lambda v, x, s: model.apply(v, x, s, method='project'))
  momentum = to_numpy(project(variables, IMAGES, SUPERPIXELS))
  assert_all_finite(momentum)
  assert 'projection' in momentum and 'prediction' not in momentum and 'prediction' in base
  np.testing.assert_allclose(momentum['projection'], base['projection'], rtol=1e-5, atol=1e-5)
  assert not np.allclose(momentum['projection'], out['projection'], atol=1e-3)


def test_moco_wrapped_cast_traces_both_branches():
  """The MoCo-CAST of the paper: superpixels reach the encoder, 'project' stops before the predictor."""
  spec = tiny_spec('cast', moco=True, moco_dim=16, moco_mlp_dim=32)
  model = build_model(spec)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), IMAGES, SUPERPIXELS)
  assert not any(path[:2] == ('encoder', 'head') for path in flat(variables['params']))
  base = jax.eval_shape(lambda v: model.apply(v, IMAGES, SUPERPIXELS), variables)
  momentum = jax.eval_shape(lambda v: model.apply(v, IMAGES, SUPERPIXELS, method='project'), variables)
  assert base['prediction'].shape == base['projection'].shape == (2, 16)
  assert momentum['projection'].shape == (2, 16) and 'prediction' not in momentum
  assert momentum['intermediates']['logit1'].shape == (2, 16, 8)


def test_bfloat16_runs_under_jit_and_stays_close_to_float32():
  spec = tiny_spec('cast')
  variables = tiny_variables(spec)
  reference = to_numpy(compiled(spec)[1](variables, IMAGES, SUPERPIXELS))
  out = to_numpy(compiled(spec, jnp.bfloat16)[1](variables, IMAGES, SUPERPIXELS))
  assert_all_finite(out)
  assert out['features'].dtype == jnp.bfloat16, 'the bfloat16 model should compute in bfloat16'
  ours = np.asarray(out['features'], np.float32)
  ref = np.asarray(reference['features'], np.float32)
  relative = np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
  assert np.all(relative < 0.1), f'bfloat16 deviates from float32 by {relative}'
  assert np.all(relative > 0), 'identical outputs: the bfloat16 dtype was not used'
  np.testing.assert_array_equal(np.asarray(out['intermediates']['valid_tokens']),
                                np.asarray(reference['intermediates']['valid_tokens']))
