"""Parity with the original Segmenter (segmenter/segm): eval-mode masks, the decoder alone, the pad path and
sliding-window inference.

Folders are found by meta.json ``kind`` anywhere under ``$CAST_GOLDEN_DIR``; every model is built from the
folder's meta.json and its checkpoint goes through the command-line converter.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax import convert
from cast_jax.models import ModelSpec, build_model
from cast_jax.models.segmenter import SuperpixMaskTransformer, gather_to_pixels, nearest_indices
from cast_jax.sliding_window import (SEGMENTER_MEAN, SEGMENTER_STD, SlidingWindow, bilinear_resize,
                                     denormalize_to_uint8, normalize, resize_short_side, segmenter_window_fn,
                                     sliding_window_inference, window_anchors)
from cast_jax.superpixels import compute_superpixels, preset, seeds_grid
from conftest import assert_close_golden, checkpoint_path, fast_jit, golden_dir, golden_folders, missing_fixture

# Below this margin the original's own float32 noise may flip an argmax (golden README, "Near-ties").
TIE_MARGIN = 1e-5


def segmentation_folders(kind: str) -> list[str]:
  """Golden folders of meta.json ``kind`` ('segmenter', 'segmenter_window'), relative to the root, wherever they
  sit and whatever they are called."""
  return golden_folders(kind)


def require_folder(name: str):
  """The absolute path of a folder from ``segmentation_folders`` (a placeholder id: skip, or fail in CI)."""
  path = golden_dir() / name
  if not (path / 'meta.json').is_file():
    missing_fixture(f'segmentation golden fixture {name.strip("<>")} not found under {golden_dir()}: set '
                    'CAST_GOLDEN_DIR to the folder holding the original\'s outputs')
  return path


def segmenter_spec(meta: dict, max_segments: int) -> ModelSpec:
  """The ModelSpec the original's constructor arguments in meta.json describe."""
  enc, dec = meta['encoder'], meta['decoder']
  assert enc['module'].endswith('cast_seg_deit.CAST') and dec['module'].endswith('SuperpixMaskTransformer')
  assert enc['patch_size'] == dec['patch_size'] == 8 and dec['d_encoder'] == enc['embed_dim']
  return ModelSpec(kind='cast_seg_deit', embed_dim=enc['embed_dim'], depth=tuple(enc['depth']),
                   num_heads=enc['num_heads'], num_clusters=tuple(enc['num_clusters']), image_size=enc['img_size'],
                   max_segments=max_segments, seg_classes=meta['n_cls'], decoder_dim=dec['d_model'],
                   decoder_depth=dec['n_layers'], decoder_heads=dec['n_heads'], decoder_mlp_dim=dec['d_ff'],
                   decoder_dropout=dec['dropout'], drop_path_rate=enc['drop_path_rate'])


def converted_variables(folder_path, meta, spec, tmp_path):
  """The folder's checkpoint through ``python -m cast_jax.convert``; checks what it detected."""
  checkpoint = checkpoint_path(folder_path)  # meta.json's 'checkpoint' (segmenter_window: another folder's)
  dst = tmp_path / 'segmenter.npz'
  argv = [str(checkpoint), str(dst), '--num-clusters', ','.join(map(str, spec.num_clusters)),
          '--max-segments', str(spec.max_segments), '--num-heads', str(spec.num_heads),
          '--decoder-heads', str(spec.decoder_heads)]
  assert convert.main(argv) == 0
  detected, variables = convert.load_converted(dst)
  for field in ('kind', 'embed_dim', 'depth', 'image_size', 'seg_classes', 'decoder_dim', 'decoder_depth',
                'decoder_mlp_dim', 'decoder_heads'):
    assert getattr(detected, field) == getattr(spec, field), f'converter detected {field}={getattr(detected, field)}'
  return {'params': variables['params'], 'batch_stats': variables['batch_stats']}


def assert_prediction(name, actual, expected, margin):
  """Identical labels except where the original's best-vs-second margin is float32 noise."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, f'{name}: shape {actual.shape} != {expected.shape}'
  differ = (actual != expected) & (margin >= TIE_MARGIN)
  assert not differ.any(), f'{name}: {int(differ.sum())} of {expected.size} pixels differ away from ties'


SEGMENTER_FOLDERS = segmentation_folders('segmenter') or ['<segmenter fixtures missing>']


@pytest.mark.parametrize('folder', SEGMENTER_FOLDERS)
def test_segmenter_eval_masks_match_original(folder, tmp_path):
  path = require_folder(folder)
  meta = json.loads((path / 'meta.json').read_text())
  inputs, expected = np.load(path / 'inputs.npz'), np.load(path / 'outputs.npz')
  sets = [('', 'image', 'superpixels')]
  if 'pad_image' in inputs.files:
    sets.append(('pad_', 'pad_image', 'pad_superpixels'))
  # Static slots beyond every set's token count: the padding slots must not change anything.
  slots = max(int(inputs[sp].max()) + 1 for _, _, sp in sets) + 5
  spec = segmenter_spec(meta, slots)
  variables = converted_variables(path, meta, spec, tmp_path)
  model = build_model(spec)
  forward = fast_jit(lambda v, x, s: model.apply(v, x, s, train=False))

  for prefix, image_key, sp_key in sets:
    images = jnp.asarray(inputs[image_key].transpose(0, 2, 3, 1))  # the original takes NCHW
    superpixels = jnp.asarray(inputs[sp_key])
    out = forward(variables, images, superpixels)
    num_tokens = expected[prefix + 'encoder_tokens'].shape[1] - 1
    assert bool(np.all(np.asarray(out['valid_tokens']) == (np.arange(slots) < num_tokens)))
    assert_close_golden(prefix + 'encoder_tokens', out['tokens'][:, :1 + num_tokens],
                        expected[prefix + 'encoder_tokens'])
    assert_close_golden(prefix + 'decoder_masks_sp', out['masks_sp'][:, :num_tokens],
                        expected[prefix + 'decoder_masks_sp'])
    inter = out['intermediates']
    for level in range(1, len(spec.num_clusters) + 1):
      # Graph pooling's integer choices, identical away from near-ties (the fixtures' margins are >= 1e-4).
      name = f'{prefix}sampled_inds{level}'
      if name in expected.files:
        fps_ok = expected[f'{prefix}fps_margin{level}'].min(axis=1) >= TIE_MARGIN
        assert_close_golden(name, np.asarray(inter[f'sampled_inds{level}'])[fps_ok], expected[name][fps_ok])
      name = f'{prefix}assign{level}'
      if name in expected.files:
        rows = expected[name].shape[1]
        ours = np.asarray(inter[f'logit{level}'])[:, :rows].argmax(-1)
        assert_prediction(name, ours, expected[name], expected[f'{prefix}assign_margin{level}'])
    masks = np.asarray(out['masks']).transpose(0, 3, 1, 2)
    err = assert_close_golden(prefix + 'masks', masks, expected[prefix + 'masks'])
    print(f'{folder} {prefix or "crop "}masks: largest scaled difference {err:.2g}')
    if prefix + 'prediction' in expected.files:
      assert_prediction(prefix + 'prediction', masks.argmax(1), expected[prefix + 'prediction'],
                        expected[prefix + 'prediction_margin'])


@pytest.mark.parametrize('folder', SEGMENTER_FOLDERS)
def test_segmenter_decoder_alone_matches_original(folder, tmp_path):
  """The decoder on the original's own encoder tokens: isolates it from the encoder's float noise."""
  path = require_folder(folder)
  meta = json.loads((path / 'meta.json').read_text())
  inputs, expected = np.load(path / 'inputs.npz'), np.load(path / 'outputs.npz')
  spec = segmenter_spec(meta, int(inputs['superpixels'].max()) + 1)
  variables = converted_variables(path, meta, spec, tmp_path)
  decoder = SuperpixMaskTransformer(n_cls=spec.seg_classes, dropout=spec.decoder_dropout, **spec.decoder_size())
  dec_vars = {'params': variables['params']['decoder']}
  for prefix, sp_key in (('', 'superpixels'), ('pad_', 'pad_superpixels')):
    if prefix + 'decoder_masks_sp' not in expected.files:
      continue
    tokens = jnp.asarray(expected[prefix + 'encoder_tokens'][:, 1:])
    # Two padding slots with garbage tokens: masked out of attention, they must change nothing.
    padded = jnp.concatenate([tokens, jnp.full_like(tokens[:, :2], 7.0)], axis=1)
    valid = jnp.arange(padded.shape[1])[None] < tokens.shape[1]
    valid = jnp.broadcast_to(valid, padded.shape[:2])
    masks_sp = fast_jit(lambda v, t, m: decoder.apply(v, t, m, train=False))(dec_vars, padded, valid)
    assert_close_golden(prefix + 'decoder_masks_sp', masks_sp[:, :tokens.shape[1]],
                        expected[prefix + 'decoder_masks_sp'])
    # The per-pixel gather of the golden per-token scores gives the golden masks (pad path: stretch, then crop).
    superpixels = inputs[sp_key]
    height, width = superpixels.shape[1:]
    padded_hw = (-(-height // 8) * 8, -(-width // 8) * 8)
    pixels = gather_to_pixels(jnp.asarray(expected[prefix + 'decoder_masks_sp']), jnp.asarray(superpixels), padded_hw)
    assert_close_golden(prefix + 'masks', np.asarray(pixels)[:, :height, :width].transpose(0, 3, 1, 2),
                        expected[prefix + 'masks'])


def test_nearest_indices_are_pytorch_legacy_nearest():
  # floor(dst * in / out): a stretch, e.g. 92 -> 96 repeats source rows 0, 23, 46 and 69 once each.
  idx = nearest_indices(92, 96)
  np.testing.assert_array_equal(idx, np.arange(96) * 92 // 96)
  values, counts = np.unique(idx, return_counts=True)
  assert values.tolist() == list(range(92)) and values[counts == 2].tolist() == [0, 23, 46, 69]
  assert nearest_indices(7, 7).tolist() == list(range(7))


def test_segmenter_rejects_mismatched_superpixels():
  spec = ModelSpec(kind='cast_seg_deit', embed_dim=24, num_clusters=(4, 3, 2, 1), max_segments=8, seg_classes=3,
                   decoder_dim=16, decoder_heads=1)
  model = build_model(spec)
  with pytest.raises(ValueError, match='same pixels'):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 8, 8), int)))
  with pytest.raises(ValueError, match='cast_seg_deit'):
    ModelSpec(kind='cast_deit', seg_classes=3)


def window_slots(meta: dict) -> int:
  """Token slots for a segmenter_window fixture: more than any window's superpixels (SEEDS' grid may exceed the
  request) and the first level's clusters, so that padding slots are exercised (they must change nothing)."""
  window, requested = meta['window_size'], meta['num_superpixels_per_window']
  return max(seeds_grid(window, window, requested).count, requested, meta['encoder']['num_clusters'][0]) + 4


WINDOW_FOLDERS = segmentation_folders('segmenter_window') or ['<segmenter_window fixtures missing>']


@pytest.mark.parametrize('folder', WINDOW_FOLDERS)
def test_sliding_window_inference_matches_original(folder, tmp_path):
  path = require_folder(folder)
  meta = json.loads((path / 'meta.json').read_text())
  inputs, expected = np.load(path / 'inputs.npz'), np.load(path / 'outputs.npz')
  settings = SlidingWindow(window=meta['window_size'], stride=meta['window_stride'],
                           window_batch=meta['window_batch_size'], mean=tuple(meta['normalization']['mean']),
                           std=tuple(meta['normalization']['std']))
  assert settings.superpixels.segments_for(settings.window, settings.window) == meta['num_superpixels_per_window']
  slots = window_slots(meta)
  spec = segmenter_spec(meta, slots)
  variables = converted_variables(path, meta, spec, tmp_path)
  model = build_model(spec)
  calls = []
  forward = segmenter_window_fn(model, variables)

  def apply_fn(images, superpixels):
    calls.append(images.shape)
    return forward(images, superpixels)

  out = sliding_window_inference(apply_fn, inputs['image'].transpose(1, 2, 0), settings, max_segments=slots)
  assert set(calls) == {(settings.window_batch, settings.window, settings.window, 3)}  # one static shape
  assert_close_golden('window_anchors', out['anchors'], expected['window_anchors'])
  assert_close_golden('window_count', out['count'], expected['window_count'])
  assert_close_golden('window_superpixels', out['window_superpixels'], expected['window_superpixels'])
  assert_close_golden('window_masks', out['window_masks'].transpose(0, 3, 1, 2), expected['window_masks'])
  assert_close_golden('merged_logits', out['merged_logits'].transpose(2, 0, 1), expected['merged_logits'])
  err = assert_close_golden('probs', out['probs'].transpose(2, 0, 1), expected['probs'])
  print(f'{folder}: probs largest difference {err:.2g}')
  assert_prediction('prediction', out['prediction'], expected['prediction'], expected['prediction_margin'])


def test_sliding_window_pieces():
  # Anchors: the last window is flush with the border; a side equal to the window gives one anchor.
  assert window_anchors(140, 64, 48) == [0, 48, 76]
  assert window_anchors(64, 64, 48) == [0]
  with pytest.raises(ValueError, match='shorter than'):
    window_anchors(60, 64, 48)
  # The short side is upsampled to the window (int() of the other side), and only when it is shorter.
  image = np.random.default_rng(0).standard_normal((40, 90, 3)).astype(np.float32)
  assert resize_short_side(image, 64).shape == (64, 144, 3)
  assert resize_short_side(image, 32) is image
  # Truncation, not rounding, after float32 x * std + mean (what SEEDS starts from).
  window = ((np.array([[[10.9, 0.2, 254.99]]]) - np.array(SEGMENTER_MEAN)) / np.array(SEGMENTER_STD))
  assert denormalize_to_uint8(window.astype(np.float32), SEGMENTER_MEAN, SEGMENTER_STD).tolist() in (
      [[[10, 0, 254]]], [[[10, 0, 255]]])
  with pytest.raises(ValueError, match='multiple of the encoder stride'):
    SlidingWindow(window=100, stride=50)


def test_segmenter_starts_from_the_deit_checkpoint_with_a_fresh_decoder():
  """train_cast.py's start: the DeiT cast_deit encoder (CROSS_KIND rules), the decoder as the original initialises."""
  from cast_jax import loading
  from cast_jax.train.segmentation import start_segmenter
  from conftest import golden_deit_checkpoint, quick_variables, require_golden

  require_golden()
  meta, source, deit = golden_deit_checkpoint()
  target = ModelSpec(kind='cast_seg_deit', embed_dim=meta['embed_dim'], depth=tuple(meta['depth']),
                     num_heads=meta['num_heads'], seg_classes=5)
  model = build_model(target)
  size = target.image_size
  fresh = quick_variables(model, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
                          jax.ShapeDtypeStruct((1, size, size), jnp.int32))
  fresh = jax.tree_util.tree_map(np.asarray, dict(fresh))
  variables, kept = start_segmenter(fresh, target, source, deit, seed=1)
  ours, checkpoint, initial = (loading.flat_names(t) for t in (variables, deit, fresh))
  assert set(ours) == set(initial)
  decoder = {n for n in initial if n.startswith('params/decoder/')}
  fusion = {n for n in initial if '/encoder/block_fusion/' in n}
  assert set(kept) == decoder | fusion and len(decoder) == 2 * 12 + 9
  for name, value in ours.items():
    if name in decoder:
      np.testing.assert_array_equal(value, initial[name], err_msg=name)
    elif name not in fusion:
      collection, rest = name.split('/encoder/')
      np.testing.assert_array_equal(value, checkpoint[f'{collection}/{rest}'], err_msg=name)
  with pytest.raises(ValueError, match='already holds a Segmenter'):
    start_segmenter(fresh, target, target, variables)


def test_decoder_initialisation_is_the_originals():
  """init_weights: Linear trunc_normal(0.02) and bias 0, LayerNorm 1/0; cls_emb trunc_normal(0.02);
  proj_patch / proj_classes d_model^-0.5 * randn."""
  d_model, n_cls = 128, 7
  decoder = SuperpixMaskTransformer(n_cls=n_cls, d_model=d_model, n_layers=2, n_heads=2, d_ff=4 * d_model)
  tokens = jnp.zeros((1, 5, 48))
  params = jax.jit(decoder.init)(jax.random.PRNGKey(0), tokens, jnp.ones((1, 5), bool))['params']
  assert params['proj_dec']['kernel'].shape == (48, d_model)
  assert params['blocks_1']['attn']['qkv']['kernel'].shape == (d_model, 3 * d_model)
  assert params['blocks_0']['mlp']['fc1']['kernel'].shape == (d_model, 4 * d_model)
  for name, std in (('proj_dec', 0.02), ('blocks_0/attn/qkv', 0.02), ('blocks_1/mlp/fc2', 0.02)):
    node = params
    for part in name.split('/'):
      node = node[part]
    assert abs(float(np.std(node['kernel'])) / std - 1) < 0.1, name
    np.testing.assert_array_equal(node['bias'], 0.0)
  assert abs(float(np.std(params['cls_emb'])) / 0.02 - 1) < 0.2 and params['cls_emb'].shape == (1, n_cls, d_model)
  for name in ('proj_patch', 'proj_classes'):
    assert abs(float(np.std(params[name])) * d_model ** 0.5 - 1) < 0.05, name
  for name in ('decoder_norm', 'mask_norm'):
    np.testing.assert_array_equal(params[name]['scale'], 1.0)
    np.testing.assert_array_equal(params[name]['bias'], 0.0)
  assert params['mask_norm']['scale'].shape == (n_cls,)


def test_decoder_dropout_needs_train_mode_and_padding_slots_are_inert():
  decoder = SuperpixMaskTransformer(n_cls=3, d_model=64, n_heads=1, d_ff=128, dropout=0.5)
  tokens = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 16))
  valid = jnp.broadcast_to(jnp.arange(6) < 4, (2, 6))
  variables = decoder.init(jax.random.PRNGKey(0), tokens, valid)
  apply = jax.jit(decoder.apply, static_argnames='train')
  eval_a = apply(variables, tokens, valid, train=False)
  eval_b = apply(variables, tokens.at[:, 4:].set(100.0), valid, train=False)  # garbage in padding slots
  np.testing.assert_allclose(eval_a[:, :4], eval_b[:, :4], atol=1e-6)
  train = apply(variables, tokens, valid, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  assert float(np.abs(np.asarray(train) - np.asarray(eval_a)).max()) > 1e-2
  # mask_norm: LayerNorm over classes, so each token's scores have mean bias (0) and unit-ish spread.
  np.testing.assert_allclose(np.asarray(eval_a).mean(-1), 0.0, atol=1e-5)


def test_segmenter_checkpoint_conversion_names_what_does_not_fit():
  from cast_jax.torch_pickle import load_torch_checkpoint

  path = require_folder((segmentation_folders('segmenter') or ['<no segmenter fixtures>'])[0])
  meta = json.loads((path / 'meta.json').read_text())
  checkpoint = load_torch_checkpoint(checkpoint_path(path))
  overrides = dict(num_clusters=tuple(meta['encoder']['num_clusters']), max_segments=64)
  branches, info = convert.split_branches(checkpoint)
  assert set(branches) == {'encoder', 'decoder'} and info['segmenter'] and info['n_cls'] == meta['n_cls']
  spec = convert.detect_spec(branches, info, overrides)
  # Heads are not in the weights: the factory's d_model // 64 unless given.
  assert spec.seg_classes == meta['n_cls']
  assert spec.decoder_size()['n_heads'] == max(1, meta['decoder']['d_model'] // 64)

  n_cls = meta['n_cls']
  with pytest.raises(convert.ConversionError, match=rf'n_cls={n_cls + 1} but decoder.cls_emb has {n_cls}'):
    convert.detect_spec(branches, dict(info, n_cls=n_cls + 1), overrides)
  model = dict(checkpoint['model'], **{'aux_head.weight': np.zeros((2, 2), np.float32)})
  with pytest.raises(convert.ConversionError, match='aux_head.weight'):
    convert.split_branches(dict(checkpoint, model=model))
  last = meta['decoder']['n_layers'] - 1
  model = {k: v for k, v in checkpoint['model'].items() if k != f'decoder.blocks.{last}.norm1.weight'}
  branches, info = convert.split_branches(dict(checkpoint, model=model))
  with pytest.raises(convert.ConversionError, match=f'missing params/decoder/blocks_{last}/norm1/scale'):
    convert.convert_state(branches, info, spec)


def test_sliding_window_merge_of_an_identity_model():
  """With a 'model' that returns its input window, the merged logits are the image itself (every window agrees),
  through the upsampling of a short image too; the last group is padded to the static batch shape."""
  rng = np.random.default_rng(0)
  settings = SlidingWindow(window=32, stride=24, window_batch=3)
  shapes = []

  def identity(images, superpixels):
    shapes.append(images.shape)
    assert superpixels.shape == images.shape[:3] and superpixels.dtype == np.int32
    return images

  image = rng.standard_normal((50, 70, 3)).astype(np.float32)
  out = sliding_window_inference(identity, image, settings)
  assert out['anchors'].tolist() == [[0, 0], [0, 24], [0, 38], [18, 0], [18, 24], [18, 38]]
  assert out['count'].min() >= 1 and out['count'].max() == 4
  np.testing.assert_allclose(out['merged_logits'], image, atol=1e-5)
  np.testing.assert_array_equal(out['prediction'], image.argmax(-1))
  assert set(shapes) == {(3, 32, 32, 3)} and len(shapes) == 2
  flipped = sliding_window_inference(identity, image, settings, flipped=True)
  np.testing.assert_allclose(flipped['merged_logits'], image[:, ::-1], atol=1e-5)
  # A short image is upsampled (short side = window) and the merge is resized back to its own size.
  small = rng.standard_normal((20, 30, 3)).astype(np.float32)
  out = sliding_window_inference(identity, small, settings)
  assert out['count'].shape == (32, 48)
  np.testing.assert_allclose(out['merged_logits'], bilinear_resize(bilinear_resize(small, (32, 48)), (20, 30)),
                             atol=1e-5)
  np.testing.assert_allclose(out['probs'].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize('folder', SEGMENTER_FOLDERS)
def test_segmenter_inputs_normalisation_and_superpixels(folder):
  """The crops' normalisation and their SEEDS maps: de-normalised, truncated to uint8, x255-wrapped (the
  'segmentation' preset), as BaseMMSeg computes them."""
  path = require_folder(folder)
  meta = json.loads((path / 'meta.json').read_text())
  inputs = np.load(path / 'inputs.npz')
  mean, std = meta['normalization']['mean'], meta['normalization']['std']
  for prefix in ('', 'pad_'):
    if prefix + 'image_uint8' not in inputs.files:
      continue
    normalised = normalize(inputs[prefix + 'image_uint8'], mean, std)
    # Within one float32 rounding of the original's (mmseg computes the same expression in another order).
    np.testing.assert_allclose(normalised.transpose(0, 3, 1, 2), inputs[prefix + 'image'], atol=1e-6, rtol=0)
    for b, image in enumerate(inputs[prefix + 'image'].transpose(0, 2, 3, 1)):
      seeds_input = denormalize_to_uint8(image, mean, std)
      np.testing.assert_array_equal(seeds_input.astype(np.int16) - inputs[prefix + 'image_uint8'][b],
                                    inputs[prefix + 'seeds_rgb_minus_image'][b])
      labels = compute_superpixels(seeds_input, preset('segmentation'))
      np.testing.assert_array_equal(labels, inputs[prefix + 'superpixels'][b])


def test_segmenter_bfloat16_compute_tracks_float32():
  """compute_dtype bfloat16: parameters, normalisations and the class scores stay float32."""
  spec = ModelSpec(kind='cast_seg_deit', embed_dim=24, num_clusters=(6, 4, 3, 2), max_segments=12, seg_classes=4,
                   decoder_dim=64)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 36, 28, 3))  # not multiples of 8: the pad path
  superpixels = (jnp.arange(36)[:, None] // 9 * 3 + jnp.arange(28)[None, :] // 10)[None].repeat(2, 0)
  from conftest import quick_variables

  variables = quick_variables(build_model(spec), images, superpixels)
  outs = {}
  for dtype in (None, jnp.bfloat16):
    model = build_model(spec, dtype=dtype)
    outs[dtype] = fast_jit(lambda v, x, s: model.apply(v, x, s)['masks'])(variables, images, superpixels)
  assert outs[jnp.bfloat16].dtype == jnp.float32 and outs[None].shape == (2, 36, 28, 4)
  # mask_norm outputs are O(1); bfloat16 keeps ~3 significant digits through the network.
  assert float(jnp.abs(outs[jnp.bfloat16] - outs[None]).max()) < 0.1
  assert float(jnp.abs(outs[None]).max()) > 0.5
