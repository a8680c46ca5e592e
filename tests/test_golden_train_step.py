"""One MoCo-v3 optimizer step from the golden checkpoints, against the original's train_step.npz.

The original took the step in train mode with every Dropout at p=0 (deterministic), view 2 the horizontal
flip of view 1, momentum m=0.99 applied before the keys, AdamW with weight decay 0.1 on every trainable
parameter.

Why some checks are conditioned on the original's own values. The fixtures use a batch of 2, and MoCo's
projector and predictor end in BatchNorm over that batch: for a unit where the two images nearly agree
(|x0 - x1| ~ 1e-3, below sqrt(eps)) the layer amplifies float32 rounding. The heads' gradients of the real
step then differ between float32 and float64 by up to 2% of a tensor's largest value, and one key by ~1e-3;
``test_fixture_heads_amplify_float32_rounding`` measures and prints this (run pytest with -s).
No float32 port can meet the golden README's 1e-4 there, so:

* the loss, q1, q2 and k1 are compared directly; the loss uses the original's keys as targets (keys carry
  no gradient, so this only removes the one ill-conditioned key, k2, which is compared at 5e-3);
* the encoder's gradients are compared at 1e-4 given the original's gradient at the encoder output, which
  the original's projector gradient determines exactly (a least-squares solve, below);
* the optimizer is checked at 1e-5 by applying it to the original's gradients;
* head gradients and our own step's parameters are compared with the measured float32 noise allowed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax import convert
from cast_jax.models import build_model
from cast_jax.models.heads import MoCoMLP
from cast_jax.models.moco import MoCo
from cast_jax.train import optim
from cast_jax.train.moco import MoCoObjective, contrastive_loss
from conftest import checkpoint_path, golden_state_as_flax, fast_jit, load_meta, require_golden, spec_from_meta

MOCO_FOLDERS = ('moco_cast', 'moco_cast_seg')
# Below the heads, float32 noise reaches 7% of a tensor's largest gradient in these fixtures (ours against
# the original; float32 against float64 of our own head: up to 2%). A real error shows up as O(1).
HEAD_NOISE = 0.1
# Gradients that are exactly zero in exact arithmetic (e.g. the bias feeding a BatchNorm over the batch)
# come out as float32 noise in the original: up to 3e-6 of the largest gradient after the heads' noise,
# below 1e-6 of it given the original's head gradient.
NOISE_FLOOR = 1e-6
STEP_NOISE_FLOOR = 1e-5


def step_noise(r, path):
  """How far our whole-step gradient of ``path`` may be from the original's (float32 noise)."""
  largest = max(float(np.abs(g).max()) for g in r['golden_grads'].values())
  return HEAD_NOISE * float(np.abs(r['golden_grads'][path]).max()) + STEP_NOISE_FLOOR * largest


def flat(tree):
  return {k: np.asarray(v) for k, v in convert.flatten(tree).items()}


def name(path):
  return '/'.join(path)


@functools.lru_cache(maxsize=None)
def golden_step(folder):
  """Everything the tests compare, computed once per folder."""
  root = require_golden()
  meta = load_meta(folder)
  spec = spec_from_meta(meta).replace(pool_dropout=0.0, fusion_dropout=0.0)  # p=0, as the golden step
  variables = convert.convert_checkpoint(checkpoint_path(folder), spec=spec).variables
  golden = np.load(root / folder / 'train_step.npz')
  inputs = np.load(root / folder / 'inputs.npz')
  batch = {
      'view1': jnp.asarray(inputs['image'].transpose(0, 2, 3, 1)),
      'view2': jnp.asarray(golden['view2_image'].transpose(0, 2, 3, 1)),
      'superpixels1': jnp.asarray(inputs['superpixels']),
      'superpixels2': jnp.asarray(golden['view2_superpixels']),
  }
  lr, momentum = float(golden['lr']), float(golden['momentum'])
  labels = optim.trainable_labels(spec, variables['params'])
  optimizer = optim.adamw(lr, labels, weight_decay=0.1, decay_mask=optim.decay_all)
  objective = MoCoObjective(model=build_model(spec), optimizer=optimizer,
                            momentum_fn=lambda step: jnp.float32(momentum), temperature=meta['temperature'])
  state = objective.init_state(variables, jax.random.PRNGKey(0))
  golden_keys = {'k1': jnp.asarray(golden['k1']), 'k2': jnp.asarray(golden['k2'])}
  golden_grads = golden_state_as_flax(golden, spec, 'grad/', require_all=False)['params']

  def step(state, batch):
    grads, aux = objective.gradients(state, batch, target_keys=golden_keys)
    new_state, _ = objective.apply_gradients(state, grads, aux)
    own_keys = objective.gradients(state, batch)[1]
    return new_state, grads, aux, own_keys['k2']

  def encoder_vjp(state, batch, cotangents):
    """Gradients of <features_v, cotangent_v> summed over both views (BatchNorm statistics threaded)."""

    def features(params):
      out1, stats = objective._forward(params, state.batch_stats, batch['view1'], batch['superpixels1'],
                                       jax.random.PRNGKey(0), method=MoCo.project)
      out2, _ = objective._forward(params, stats, batch['view2'], batch['superpixels2'], jax.random.PRNGKey(0),
                                   method=MoCo.project)
      return out1['features'], out2['features']

    feats, vjp = jax.vjp(features, state.params)
    return feats, vjp(cotangents)[0]

  def update_from(grads, state):
    updates, _ = optimizer.update(grads, state.opt_state, state.params)
    return jax.tree_util.tree_map(lambda p, u: p + u, state.params, updates)

  new_state, grads, aux, own_k2 = fast_jit(step)(state, batch)
  # The original's gradient at the encoder output: its projector's first-layer gradient is
  # G = sum_v F_v^T D_v with F_v our (B, D) features (equal to the original's within 1e-6) and D_v the
  # gradient at that layer's output, so D follows from a least-squares solve and D_v W^T is the cotangent.
  (f1, f2), _ = jax.jit(encoder_vjp)(state, batch, (jnp.zeros((2, spec.size()['embed_dim'])),) * 2)
  features = np.concatenate([np.asarray(f1, np.float64), np.asarray(f2, np.float64)])
  g_first = golden_grads[('projector', 'layers_0', 'kernel')].astype(np.float64)
  delta = np.linalg.lstsq(features.T, g_first, rcond=None)[0]  # (2B, hidden)
  w_first = np.asarray(variables['params']['projector']['layers_0']['kernel'], np.float64)
  cot = (delta @ w_first.T).astype(np.float32)
  batch_size = f1.shape[0]
  _, encoder_grads = jax.jit(encoder_vjp)(state, batch, (jnp.asarray(cot[:batch_size]), jnp.asarray(cot[batch_size:])))
  full_golden_grads = jax.tree_util.tree_map(jnp.zeros_like, state.params)
  full_golden_grads = jax.tree_util.tree_map_with_path(
      lambda p, z: jnp.asarray(golden_grads.get(tuple(k.key for k in p), z)), full_golden_grads)
  params_from_golden_grads = jax.jit(update_from)(full_golden_grads, state)
  return dict(meta=meta, spec=spec, features=(np.asarray(f1), np.asarray(f2)), variables=variables, golden=golden, labels=flat(labels), lr=lr,
              new_state=new_state, grads=flat(grads), aux=aux, own_k2=np.asarray(own_k2),
              golden_grads=golden_grads, encoder_grads=flat(encoder_grads),
              params_from_golden_grads=flat(params_from_golden_grads),
              after=golden_state_as_flax(golden, spec, 'after/', require_all=True))


@pytest.mark.parametrize('folder', MOCO_FOLDERS)
def test_loss_and_embeddings_match(folder):
  r = golden_step(folder)
  golden = r['golden']
  loss, expected = float(r['aux']['loss']), float(golden['loss'])
  assert abs(loss - expected) <= 1e-5 * abs(expected), (loss, expected)
  for key in ('q1', 'q2', 'k1'):
    np.testing.assert_allclose(np.asarray(r['aux'][key]), golden[key], atol=1e-4, err_msg=key)
  # k2 passes through the ill-conditioned projector BatchNorm (module docstring).
  np.testing.assert_allclose(r['own_k2'], golden['k2'], atol=5e-3, err_msg='k2')


@pytest.mark.parametrize('folder', MOCO_FOLDERS)
def test_fixture_heads_amplify_float32_rounding(folder):
  """The same head gradient in float32 and float64 differs by far more than 1e-4 (what the README asks)."""
  r = golden_step(folder)
  meta, variables, golden = r['meta'], r['variables'], r['golden']
  proj, pred = MoCoMLP(3, meta['moco_mlp_dim'], meta['moco_dim']), MoCoMLP(2, meta['moco_mlp_dim'], meta['moco_dim'])
  feats = list(r['features'])  # the encoder outputs of the real step, per view
  with jax.enable_x64(True):
    results = {}
    for dtype in (np.float32, np.float64):
      cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), dtype), t)
      heads = cast({k: variables['params'][k] for k in ('projector', 'predictor')})
      stats = cast({k: variables['batch_stats'][k] for k in ('projector', 'predictor')})

      def loss(heads, f1, f2, k1, k2):
        def q(f):
          z, _ = proj.apply({'params': heads['projector'], 'batch_stats': stats['projector']}, f, train=True,
                            mutable=['batch_stats'])
          p, _ = pred.apply({'params': heads['predictor'], 'batch_stats': stats['predictor']}, z, train=True,
                            mutable=['batch_stats'])
          return p
        return contrastive_loss(q(f1), k2, 0.2) + contrastive_loss(q(f2), k1, 0.2)

      results[dtype] = jax.grad(loss)(heads, *cast(feats), cast(golden['k1']), cast(golden['k2']))
    worst = 0.0
    for path, g64 in flat(results[np.float64]).items():
      g32 = flat(results[np.float32])[path]
      worst = max(worst, float(np.abs(g32 - g64).max() / np.abs(g64).max()))
  print(f'{folder}: float32 vs float64 head gradients differ by {worst:.2%} of a tensor\'s largest')
  # Well-conditioned layers agree to ~1e-6; these differ by orders of magnitude more.
  assert worst > 1e-4, f'heads are well conditioned here ({worst:.2g}); tighten the tolerances of this file'
  assert worst < HEAD_NOISE, worst


@pytest.mark.parametrize('folder', MOCO_FOLDERS)
def test_encoder_gradients_match_given_the_originals_head(folder):
  r = golden_step(folder)
  encoder = {p: g for p, g in r['golden_grads'].items() if p[0] == 'encoder'}
  frozen = {p for p, l in r['labels'].items() if str(l) == optim.FROZEN}
  assert set(encoder) == {p for p in r['grads'] if p[0] == 'encoder'} - frozen, 'trainable sets differ'
  floor = NOISE_FLOOR * max(float(np.abs(g).max()) for g in encoder.values())
  for path, expected in encoder.items():
    tol = 1e-4 * float(np.abs(expected).max()) + floor
    err = float(np.abs(r['encoder_grads'][path] - expected).max())
    assert err <= tol, f'grad {name(path)}: {err:.3g} > {tol:.3g}'


@pytest.mark.parametrize('folder', MOCO_FOLDERS)
def test_head_gradients_match_within_float32_noise(folder):
  r = golden_step(folder)
  heads = {p: g for p, g in r['golden_grads'].items() if p[0] != 'encoder'}
  assert set(heads) == {p for p in r['grads'] if p[0] != 'encoder'}
  for path, expected in heads.items():
    scale = float(np.abs(expected).max())
    err = float(np.abs(r['grads'][path] - expected).max())
    assert err <= HEAD_NOISE * scale, f'grad {name(path)}: {err / scale:.3g} of its largest value'
  # Whole-step gradients of the encoder: within the same noise.
  largest = max(float(np.abs(g).max()) for g in r['golden_grads'].values())
  worst = max(float(np.abs(r['grads'][p] - g).max() / np.abs(g).max()) for p, g in r['golden_grads'].items()
              if np.abs(g).max() > 1e-3 * largest)  # tensors that are not float32 noise themselves
  print(f'{folder}: whole-step gradients differ from the original by up to {worst:.2%} of a tensor\'s largest '
        '(tensors above 1e-3 of the largest gradient)')
  for path, expected in r['golden_grads'].items():
    assert float(np.abs(r['grads'][path] - expected).max()) <= step_noise(r, path), name(path)


@pytest.mark.parametrize('folder', MOCO_FOLDERS)
def test_optimizer_reproduces_parameters_from_the_originals_gradients(folder):
  """AdamW, decay on every trainable leaf, frozen leaves untouched: exact given the same gradients."""
  r = golden_step(folder)
  expected_params = r['after']['params']
  before = flat(r['variables']['params'])
  for path, expected in expected_params.items():
    actual = r['params_from_golden_grads'][path]
    if path not in r['golden_grads']:  # frozen in the original: never changes
      np.testing.assert_array_equal(expected, before[path], err_msg=f'golden frozen {name(path)} changed')
      np.testing.assert_array_equal(actual, before[path], err_msg=f'frozen {name(path)} changed')
      continue
    g = r['golden_grads'][path]
    err = np.abs(actual - expected)
    # Where |g| is near Adam's eps, g / (|g| + eps) amplifies rounding (README): 2 lr allowed there.
    assert float(np.max(np.where(np.abs(g) > 1e-6, err, 0))) <= 1e-5, name(path)
    assert float(np.max(err)) <= 2 * r['lr'] + 1e-6, name(path)


@pytest.mark.parametrize('folder', MOCO_FOLDERS)
def test_own_step_parameters_statistics_and_momentum_encoder(folder):
  r = golden_step(folder)
  state = r['new_state']
  got = {'params': flat(state.params), 'batch_stats': flat(state.batch_stats),
         'momentum_params': flat(state.ema_params), 'momentum_batch_stats': flat(state.ema_batch_stats)}
  for collection, expected in r['after'].items():
    assert set(expected) == set(got[collection]), collection
    for path, value in expected.items():
      actual = got[collection][path]
      label = f'{collection}/{name(path)}'
      if collection == 'params':
        g = r['golden_grads'].get(path)
        if g is None:
          np.testing.assert_array_equal(actual, value, err_msg=f'frozen {label} changed')
          continue
        # AdamW's first step moves each weight by lr * g / (|g| + eps) (+ decay): the sign of g decides,
        # so elements whose gradient is within the float32 noise of zero may move the other way.
        clear = np.abs(g) > step_noise(r, path)
        err = float(np.max(np.where(clear, np.abs(actual - value), 0)))
        assert err <= 1e-5, f'{label}: {err:.3g}'
      else:
        scale = max(1.0, float(np.abs(value).max()))
        err = float(np.abs(actual - value).max()) / scale
        if collection == 'momentum_params':
          tol = 1e-5
        elif path[0] in ('projector', 'predictor'):
          tol = 1e-3  # statistics of layers fed by the ill-conditioned head BatchNorm (module docstring)
        else:
          tol = 1e-4
        assert err <= tol, f'{label}: {err:.3g}'
