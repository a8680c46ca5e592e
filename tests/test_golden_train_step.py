"""One MoCo-v3 optimizer step from the golden checkpoints, against the original's train_step.npz.

The original took the step in train mode with every Dropout at p=0 (deterministic), view 2 the horizontal
flip of view 1, momentum m=0.99 applied before the keys, AdamW with weight decay 0.1 on every trainable
parameter. Fixtures are every folder whose meta.json kind is 'moco' (with a train_step.npz); the model comes from
meta.json and the batch size from the arrays, so any name, batch size, depth or width works.

Why the heads get tolerances measured per fixture. MoCo's projector and predictor end in BatchNorm over the batch:
for a unit where the images nearly agree (a spread below sqrt(eps)) the layer amplifies float32 rounding, so
a faithful float32 port can differ from the original there by far more than the golden README's 1e-4. How much
depends on the fixture's images and weights, so the tests measure it instead of assuming it:

* ``head_noise``: an independent float64 reference of the heads and the loss (``reference_heads``), at our
  encoder's features, against the same reference in float32 at those features and at features carrying the
  encoder's own float32 rounding (sampled by running the encoder on the batch in reverse order);
* ``golden_step``'s ``step_rounding``: how far each gradient of our whole step moves when the batch is reversed
  (identical in exact arithmetic, another rounding in float32).

Ours and the original's are two float32 computations, each within that noise of exact, so they may differ by
``SAFETY`` times it, on top of the README's tolerance. On a well-conditioned fixture the measured noise is
float32 rounding (~1e-7 relative) and the README's tolerances remain.

* the loss, q1, q2, k1, k2 are compared at the README's tolerance plus their measured noise; the loss uses
  the original's keys as targets (keys carry no gradient, so this keeps the keys' noise out of the gradients);
* the encoder's gradients are compared at 1e-4 given the original's gradient at the encoder output, which
  the original's projector gradient determines exactly (a least-squares solve, below);
* the optimizer is checked at 1e-5 by applying it to the original's gradients;
* head gradients, whole-step gradients and our own step's parameters and statistics are compared with the
  measured noise allowed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax import convert
from cast_jax.models import build_model
from cast_jax.models.moco import MoCo
from cast_jax.train import optim
from cast_jax.train.moco import MoCoObjective, momentum_branch_params
from conftest import (checkpoint_path, fast_jit, golden_folder_params, golden_state_as_flax, load_meta,
                      require_golden, spec_from_meta)

MOCO_FOLDERS = golden_folder_params('moco', needs=('train_step.npz',))
# Ours and the original are two float32 computations, each within the measured noise of exact arithmetic, and a
# few samples estimate the noise's maximum from below: 2 x 2.
SAFETY = 4.0
# float32 evaluations of the reference that sample the noise (head_noise).
NOISE_SAMPLES = 4
# Gradients that are exactly zero in exact arithmetic (e.g. the bias feeding a BatchNorm over the batch) come out
# as float32 rounding in the original: allowed up to this fraction of the largest gradient (the golden DeiT step
# uses the same floor).
NOISE_FLOOR = 1e-6
BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # PyTorch's BatchNorm1d defaults, as MoCo-v3 builds its heads
# Whole-step gradients that are zero in exact arithmetic because a head BatchNorm removes what they change (the
# final norm's bias: a shift shared by the batch) are what is left of a batch sum that cancels: float32 rounding
# of its terms, which the BatchNorm's backward pass divides by the batch's spread, at least sqrt(BN_EPS). So they
# may reach float32's eps / sqrt(BN_EPS) (4e-5) of the largest gradient, in either implementation.
STRUCTURAL_ZERO_FLOOR = float(np.finfo(np.float32).eps) / np.sqrt(BN_EPS)


def flat(tree):
  return {k: np.asarray(v) for k, v in convert.flatten(tree).items()}


def name(path):
  return '/'.join(path)


def reference_mlp(params, stats, x):
  """MoCo-v3's ``_build_mlp`` in train mode, every operation in x's dtype (the port's BatchNorm computes in
  float32 whatever it is given, so it cannot serve as the float64 reference).

  Linear (no bias) -> BatchNorm over the batch -> ReLU per hidden layer; the last BatchNorm has no affine and no
  ReLU follows. params / stats: flax trees named like the port's (layers_0, layers_1, layers_3, ...).
  Returns (output, updated running statistics: unbiased variance, PyTorch momentum).
  """
  new_stats = {}
  index = 0
  while f'layers_{index}' in params:
    x = x @ params[f'layers_{index}']['kernel']
    bn = f'layers_{index + 1}'
    mean = x.mean(axis=0)
    var = jnp.square(x - mean).mean(axis=0)
    count = x.shape[0]
    new_stats[bn] = {'mean': (1 - BN_MOMENTUM) * stats[bn]['mean'] + BN_MOMENTUM * mean,
                     'var': (1 - BN_MOMENTUM) * stats[bn]['var'] + BN_MOMENTUM * var * count / (count - 1)}
    x = (x - mean) / jnp.sqrt(var + BN_EPS)
    if bn in params:
      x = x * params[bn]['scale'] + params[bn]['bias']
    index += 3
    if f'layers_{index}' in params:
      x = jnp.maximum(x, 0)
  return x, new_stats


def reference_nce(q, k, temperature):
  """MoCo-v3's contrastive loss: InfoNCE over the batch with the diagonal as positives, times 2T."""
  normalize = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  logits = normalize(q) @ normalize(k).T / temperature
  return (jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)).mean() * (2 * temperature)


def reference_heads(r, dtype, perturbation=None):
  """The heads' part of the step in ``dtype`` from our encoder's features: loss, q, k, head gradients, the
  gradient at the encoder output and the heads' updated statistics.

  perturbation: (f1, f2, m1, m2) added to the features (online views, then momentum views).
  """
  temperature = r['meta']['temperature']
  variables = r['variables']
  cast = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64), dtype), tree)
  heads = cast({k: variables['params'][k] for k in ('projector', 'predictor')})
  stats = cast({k: variables['batch_stats'][k] for k in ('projector', 'predictor')})
  momentum_projector = cast(r['momentum_params']['projector'])
  momentum_stats = cast(r['momentum_batch_stats']['projector'])
  features = [np.asarray(f, np.float64) for f in r['features'] + r['momentum_features']]
  if perturbation is not None:
    features = [f + np.asarray(d, np.float64) for f, d in zip(features, perturbation)]
  f1, f2, m1, m2 = cast(features)
  targets = cast((r['golden']['k1'], r['golden']['k2']))

  def loss_fn(heads, f1, f2):
    z1, proj_stats = reference_mlp(heads['projector'], stats['projector'], f1)
    q1, pred_stats = reference_mlp(heads['predictor'], stats['predictor'], z1)
    z2, proj_stats = reference_mlp(heads['projector'], proj_stats, f2)
    q2, pred_stats = reference_mlp(heads['predictor'], pred_stats, z2)
    loss = reference_nce(q1, targets[1], temperature) + reference_nce(q2, targets[0], temperature)
    return loss, dict(q1=q1, q2=q2, stats={'projector': proj_stats, 'predictor': pred_stats})

  (loss, aux), (grads, c1, c2) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(heads, f1, f2)
  k1, key_stats = reference_mlp(momentum_projector, momentum_stats, m1)
  k2, key_stats = reference_mlp(momentum_projector, key_stats, m2)
  as64 = lambda x: np.asarray(x, np.float64)
  return dict(loss=as64(loss), q1=as64(aux['q1']), q2=as64(aux['q2']), k1=as64(k1), k2=as64(k2),
              cotangent=np.concatenate([as64(c1), as64(c2)]),
              grads={p: as64(g) for p, g in convert.flatten(grads).items()},
              stats={'batch_stats': {p: as64(v) for p, v in convert.flatten(aux['stats']).items()},
                     'momentum_batch_stats': {('projector',) + p: as64(v)
                                              for p, v in convert.flatten(key_stats).items()}})


def relative(a, b) -> float:
  """max |a - b| relative to max |b| (1 where b is all zero)."""
  return float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-30)


@functools.lru_cache(maxsize=None)
def head_noise(folder):
  """(float64 reference, measured float32 noise of each of its quantities).

  The noise of a quantity is its largest deviation from the float64 reference over float32 evaluations at: our
  features; the features of the reordered batch (another float32 rounding of the same encoder, golden_step);
  ours plus that difference with random signs (NOISE_SAMPLES in all). Relative to each array's largest value;
  for the BatchNorm statistics, to max(1, |x|max) as the README scales outputs.
  """
  r = golden_step(folder)
  ours = r['features'] + r['momentum_features']
  rounding = [np.asarray(b, np.float64) - np.asarray(a, np.float64) for a, b in zip(ours, r['reordered_features'])]
  rng = np.random.default_rng(0)
  perturbations = [None, rounding] + [[d * rng.choice([-1.0, 1.0], d.shape) for d in rounding]
                                      for _ in range(NOISE_SAMPLES - 2)]
  with jax.enable_x64(True):
    exact = reference_heads(r, jnp.float64)
    samples = [reference_heads(r, jnp.float32, p) for p in perturbations]
  noise = {key: max(relative(s[key], exact[key]) for s in samples)
           for key in ('loss', 'q1', 'q2', 'k1', 'k2', 'cotangent')}
  noise['grads'] = {p: max(relative(s['grads'][p], g) for s in samples) for p, g in exact['grads'].items()}
  noise['stats'] = {c: {p: max(float(np.abs(s['stats'][c][p] - v).max()) for s in samples)
                        / max(1.0, float(np.abs(v).max())) for p, v in tree.items()}
                    for c, tree in exact['stats'].items()}
  noise['features'] = max(relative(b, a) for a, b in zip(ours, r['reordered_features']))
  # The heads' rounding reaches the encoder only through the gradient at its output: each sample's deviation
  # there, pushed through our encoder's backward pass, is how far every encoder gradient moves with it. This also
  # covers gradients that are zero in exact arithmetic (e.g. the final norm's bias: the projector's BatchNorm
  # removes any shift shared by the batch), which no relative measure can.
  batch_size = r['features'][0].shape[0]
  noise['encoder'] = {}
  for sample in samples:
    deviation = sample['cotangent'] - exact['cotangent']
    for path, g in r['encoder_gradients'](deviation[:batch_size], deviation[batch_size:]).items():
      noise['encoder'][path] = max(noise['encoder'].get(path, 0.0), float(np.abs(g).max()))
  return exact, noise


def step_noise(r, noise, path):
  """How far our whole-step gradient of ``path`` may be from the original's: the README's 1e-4 of the tensor's
  largest value, plus SAFETY times the measured noise: the heads' rounding (relative, for a head gradient; for an
  encoder gradient, absolute, carried by the gradient at the encoder's output: head_noise) and the whole step's
  rounding sampled by the reordered batch (golden_step), plus STRUCTURAL_ZERO_FLOOR of the largest gradient."""
  largest = max(float(np.abs(g).max()) for g in r['golden_grads'].values())
  scale = float(np.abs(r['golden_grads'][path]).max())
  if path in noise['grads']:
    heads = SAFETY * noise['grads'][path] * scale
  else:
    heads = SAFETY * noise['encoder'][path]
  return 1e-4 * scale + heads + SAFETY * r['step_rounding'][path] + STRUCTURAL_ZERO_FLOOR * largest


@functools.lru_cache(maxsize=None)
def golden_step(folder):
  """Everything the tests compare, computed once per folder."""
  root = require_golden(folder)
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
  batch_size = inputs['image'].shape[0]
  lr, momentum = float(golden['lr']), float(golden['momentum'])
  labels = optim.trainable_labels(spec, variables['params'])
  optimizer = optim.adamw(lr, labels, weight_decay=0.1, decay_mask=optim.decay_all)
  objective = MoCoObjective(model=build_model(spec), optimizer=optimizer,
                            momentum_fn=lambda step: jnp.float32(momentum), temperature=meta['temperature'])
  state = objective.init_state(variables, jax.random.PRNGKey(0))
  golden_keys = {'k1': jnp.asarray(golden['k1']), 'k2': jnp.asarray(golden['k2'])}
  golden_grads = golden_state_as_flax(golden, spec, 'grad/', require_all=False)['params']

  def step(state, batch, keys):
    grads, aux = objective.gradients(state, batch, target_keys=keys)
    new_state, _ = objective.apply_gradients(state, grads, aux)
    return new_state, grads, aux

  def encoder_vjp(params, batch_stats, batch, cotangents):
    """Encoder features of both views (BatchNorm statistics threaded) and the gradients of
    <features_v, cotangent_v> summed over the views. params: the momentum branch's tree (no predictor), so the
    online and the momentum encoder share one compiled function."""

    def features(params):
      out1, stats = objective._forward(params, batch_stats, batch['view1'], batch['superpixels1'],
                                       jax.random.PRNGKey(0), method=MoCo.project)
      out2, _ = objective._forward(params, stats, batch['view2'], batch['superpixels2'], jax.random.PRNGKey(0),
                                   method=MoCo.project)
      return out1['features'], out2['features']

    feats, vjp = jax.vjp(features, params)
    return feats, vjp(cotangents)[0]

  def update_from(grads, state):
    updates, _ = optimizer.update(grads, state.opt_state, state.params)
    return jax.tree_util.tree_map(lambda p, u: p + u, state.params, updates)

  step = fast_jit(step)
  new_state, grads, aux = step(state, batch, golden_keys)
  # The same step on the batch in reverse order (keys reversed with it): identical in exact arithmetic, but the
  # encoder's BatchNorm sums run in another order. How far its gradients move is a sample of the float32 rounding
  # of the whole step (the encoder's, as the heads amplify it), per tensor (step_noise).
  reverse = {k: v[::-1] for k, v in batch.items()}
  _, grads_reordered, _ = step(state, reverse, {k: v[::-1] for k, v in golden_keys.items()})
  reordered_grads = flat(grads_reordered)
  step_rounding = {p: float(np.abs(g - reordered_grads[p]).max()) for p, g in flat(grads).items()}
  encoder_vjp = jax.jit(encoder_vjp)
  online = momentum_branch_params(state.params)
  zeros = (jnp.zeros((batch_size, spec.size()['embed_dim'])),) * 2
  (f1, f2), _ = encoder_vjp(online, state.batch_stats, batch, zeros)
  # The keys' encoder: the momentum parameters after the EMA, its own statistics.
  (m1, m2), _ = encoder_vjp(aux['momentum_params'], state.ema_batch_stats, batch, zeros)
  # The same features with the batch in reverse order: the same numbers in exact arithmetic, but BatchNorm's
  # sums run in another order, so the difference is a sample of the encoder's float32 rounding at its output,
  # the noise another float32 implementation's features carry into the heads (head_noise).
  (r1, r2), _ = encoder_vjp(online, state.batch_stats, reverse, zeros)
  (s1, s2), _ = encoder_vjp(aux['momentum_params'], state.ema_batch_stats, reverse, zeros)
  reordered = tuple(np.asarray(x)[::-1] for x in (r1, r2, s1, s2))
  # The original's gradient at the encoder output: its projector's first-layer gradient is
  # G = sum_v F_v^T D_v with F_v our (B, D) features (equal to the original's within 1e-6) and D_v the
  # gradient at that layer's output, so D follows from a least-squares solve and D_v W^T is the cotangent.
  # The solve is exact only while the 2B feature rows are independent (2B <= D).
  features = np.concatenate([np.asarray(f1, np.float64), np.asarray(f2, np.float64)])
  encoder_grads = None
  if features.shape[0] <= features.shape[1]:
    g_first = golden_grads[('projector', 'layers_0', 'kernel')].astype(np.float64)
    delta = np.linalg.lstsq(features.T, g_first, rcond=None)[0]  # (2B, hidden)
    w_first = np.asarray(variables['params']['projector']['layers_0']['kernel'], np.float64)
    cot = (delta @ w_first.T).astype(np.float32)
    _, encoder_grads = encoder_vjp(online, state.batch_stats, batch,
                                   (jnp.asarray(cot[:batch_size]), jnp.asarray(cot[batch_size:])))
    encoder_grads = flat(encoder_grads)
  def encoder_gradients(c1, c2):
    """Our encoder's gradients (flat) for cotangents c1, c2 at its output, e.g. a change of that gradient."""
    cotangents = (jnp.asarray(c1, jnp.float32), jnp.asarray(c2, jnp.float32))
    return {p: g for p, g in flat(encoder_vjp(online, state.batch_stats, batch, cotangents)[1]).items()
            if p[0] == 'encoder'}

  full_golden_grads = jax.tree_util.tree_map(jnp.zeros_like, state.params)
  full_golden_grads = jax.tree_util.tree_map_with_path(
      lambda p, z: jnp.asarray(golden_grads.get(tuple(k.key for k in p), z)), full_golden_grads)
  params_from_golden_grads = jax.jit(update_from)(full_golden_grads, state)
  return dict(meta=meta, spec=spec, features=(np.asarray(f1), np.asarray(f2)),
              momentum_features=(np.asarray(m1), np.asarray(m2)), momentum_params=aux['momentum_params'],
              momentum_batch_stats=state.ema_batch_stats, reordered_features=reordered,
              step_rounding=step_rounding, encoder_gradients=encoder_gradients,
              variables=variables, golden=golden, labels=flat(labels), lr=lr, new_state=new_state,
              grads=flat(grads), aux=aux, golden_grads=golden_grads, encoder_grads=encoder_grads,
              params_from_golden_grads=flat(params_from_golden_grads),
              after=golden_state_as_flax(golden, spec, 'after/', require_all=True))


@pytest.mark.parametrize('folder', MOCO_FOLDERS)
def test_float64_reference_is_the_ports_heads(folder):
  """The noise measurement is only meaningful if the reference computes what the port computes: our step's
  float32 head gradients, keys and statistics agree with the float64 reference within the measured noise."""
  r = golden_step(folder)
  exact, noise = head_noise(folder)
  print(f'{folder}: measured float32 noise: encoder features {noise["features"]:.2g}; heads\' gradients up to '
        f'{max(noise["grads"].values()):.2g} of a tensor\'s largest, gradient at the encoder output '
        f'{noise["cotangent"]:.2g}, keys {max(noise["k1"], noise["k2"]):.2g}, loss {noise["loss"]:.2g}')
  assert set(exact['grads']) == {p for p in r['grads'] if p[0] != 'encoder'}
  for path, g in exact['grads'].items():
    err = relative(r['grads'][path], g)
    tol = 1e-4 + SAFETY * noise['grads'][path]
    assert err <= tol, f'grad {name(path)}: {err:.3g} > {tol:.3g}'
  for key in ('loss', 'q1', 'q2', 'k1', 'k2'):
    err = relative(np.asarray(r['aux'][key]), exact[key])
    assert err <= 1e-5 + SAFETY * noise[key], f'{key}: {err:.3g} (noise {noise[key]:.3g})'
  got = {'batch_stats': flat(r['new_state'].batch_stats), 'momentum_batch_stats': flat(r['new_state'].ema_batch_stats)}
  for collection, tree in exact['stats'].items():
    for path, value in tree.items():
      err = float(np.abs(got[collection][path] - value).max()) / max(1.0, float(np.abs(value).max()))
      tol = 1e-5 + SAFETY * noise['stats'][collection][path]
      assert err <= tol, f'{collection}/{name(path)}: {err:.3g} > {tol:.3g}'


@pytest.mark.parametrize('folder', MOCO_FOLDERS)
def test_loss_and_embeddings_match(folder):
  r = golden_step(folder)
  _, noise = head_noise(folder)
  golden = r['golden']
  loss, expected = float(r['aux']['loss']), float(golden['loss'])
  assert abs(loss - expected) <= (1e-5 + SAFETY * noise['loss']) * abs(expected), (loss, expected)
  for key in ('q1', 'q2', 'k1', 'k2'):
    expected = golden[key]
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(np.asarray(r['aux'][key]) - expected).max()) / scale
    tol = 1e-4 + SAFETY * noise[key] * float(np.abs(expected).max()) / scale
    assert err <= tol, f'{key}: {err:.3g} > {tol:.3g} (measured noise {noise[key]:.3g})'


@pytest.mark.parametrize('folder', MOCO_FOLDERS)
def test_encoder_gradients_match_given_the_originals_head(folder):
  r = golden_step(folder)
  if r['encoder_grads'] is None:
    pytest.skip(f'{folder}: 2 x batch {r["features"][0].shape[0]} feature rows exceed the width '
                f'{r["features"][0].shape[1]}, so the original\'s projector gradient does not determine its gradient '
                'at the encoder output; the whole-step comparison still covers the encoder')
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
  _, noise = head_noise(folder)
  heads = {p: g for p, g in r['golden_grads'].items() if p[0] != 'encoder'}
  assert set(heads) == {p for p in r['grads'] if p[0] != 'encoder'}
  for path, expected in heads.items():
    err = relative(r['grads'][path], expected)
    tol = 1e-4 + SAFETY * noise['grads'][path]
    assert err <= tol, f'grad {name(path)}: {err:.3g} of its largest value > {tol:.3g}'
  # Whole-step gradients of the encoder: within the noise of the gradient at its output.
  largest = max(float(np.abs(g).max()) for g in r['golden_grads'].values())
  worst = max(relative(r['grads'][p], g) for p, g in r['golden_grads'].items()
              if np.abs(g).max() > 1e-3 * largest)  # tensors that are not float32 noise themselves
  print(f'{folder}: whole-step gradients differ from the original by up to {worst:.2%} of a tensor\'s largest '
        '(tensors above 1e-3 of the largest gradient)')
  ratios = {}
  for path, expected in r['golden_grads'].items():
    err, tol = float(np.abs(r['grads'][path] - expected).max()), step_noise(r, noise, path)
    ratios[path] = err / tol
    assert err <= tol, f'grad {name(path)}: {err:.3g} > {tol:.3g}'
  worst = max(ratios, key=ratios.get)
  print(f'{folder}: whole-step gradients use up to {ratios[worst]:.0%} of their tolerance ({name(worst)})')


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
  _, noise = head_noise(folder)
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
        clear = np.abs(g) > step_noise(r, noise, path)
        err = float(np.max(np.where(clear, np.abs(actual - value), 0)))
        assert err <= 1e-5, f'{label}: {err:.3g}'
      else:
        scale = max(1.0, float(np.abs(value).max()))
        err = float(np.abs(actual - value).max()) / scale
        if collection == 'momentum_params':
          tol = 1e-5
        elif path[0] in ('projector', 'predictor'):  # statistics of the heads' BatchNorms: measured noise
          tol = 1e-4 + SAFETY * noise['stats'][collection][path]
        else:
          tol = 1e-4
        assert err <= tol, f'{label}: {err:.3g} > {tol:.3g}'
