"""The MoCo-v3 objective of the original (``suppix_utils/builder.py``), as a train step.

Per step, with base parameters theta_b and momentum parameters theta_m (encoder + projector):

    q1 = predictor(base(x1)); q2 = predictor(base(x2))       # separate forwards: BN statistics per view
    theta_m <- m * theta_m + (1 - m) * theta_b                # BEFORE the keys, with the pre-step theta_b
    k1 = momentum(x1); k2 = momentum(x2)                      # no gradient, no predictor
    loss = ctr(q1, k2) + ctr(q2, k1),  ctr(q, k) = 2T * CE(normalize(q) normalize(k)^T / T, diagonal)

Both branches run in training mode (batch-statistic BN, dropout on). Under a sharded ``jit`` the batch axis
is global, so the B x B logits and the BN statistics cover the whole batch without explicit collectives.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from cast_jax.models.layers import l2_normalize
from cast_jax.models.moco import MoCo
from cast_jax.train.state import GradientStep, TrainState, ema

BATCH_KEYS = ('view1', 'view2', 'superpixels1', 'superpixels2')


def contrastive_loss(q, k, temperature: float):
  """q, k: (B, dim). InfoNCE with the diagonal as positives, scaled by 2T as the original."""
  logits = l2_normalize(q.astype(jnp.float32)) @ l2_normalize(k.astype(jnp.float32)).T / temperature
  labels = jnp.arange(logits.shape[0])
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() * (2.0 * temperature)


def agreement_metrics(q1, q2, k1, k2) -> dict[str, Any]:
  """What the loss alone does not tell apart, averaged over both directions (q1 with k2, q2 with k1):

  pos_cos: mean cosine of a query with its own key (the positive pair);
  neg_cos: mean cosine of a query with the other keys of the batch;
  key_spread: how spread the keys are, sqrt(dim) x the per-dimension standard deviation over the batch of
    the unit keys, averaged over dimensions (about 1 for keys spread evenly over the sphere, 0 collapsed).

  The loss falls below chance only when pos_cos pulls away from neg_cos; a loss falling towards chance while
  the two stay together means the keys are collapsing (key_spread falling), not that views are being matched.
  """
  pos, neg, spread = [], [], []
  for q, k in ((q1, k2), (q2, k1)):
    qn, kn = l2_normalize(q.astype(jnp.float32)), l2_normalize(k.astype(jnp.float32))
    cos = qn @ kn.T
    size = cos.shape[0]
    diagonal = jnp.trace(cos)
    pos.append(diagonal / size)
    neg.append((cos.sum() - diagonal) / max(size * (size - 1), 1))
    spread.append(jnp.sqrt(kn.shape[1]) * kn.std(axis=0).mean())
  mean = lambda values: (values[0] + values[1]) / 2
  return dict(pos_cos=mean(pos), neg_cos=mean(neg), key_spread=mean(spread))


def momentum_branch_params(params):
  """The parameters the momentum encoder mirrors: everything but the predictor."""
  return {k: v for k, v in params.items() if k != 'predictor'}


@dataclasses.dataclass(frozen=True)
class MoCoObjective(GradientStep):
  """model: a ``MoCo`` module. optimizer: optax (frozen leaves masked). momentum_fn: step -> m.
  temperature: T of the contrastive loss."""

  model: MoCo
  optimizer: optax.GradientTransformation
  momentum_fn: Callable[[Any], Any]
  temperature: float = 0.2
  learning_rate_fn: Callable[[Any], Any] | None = None  # only reported in the metrics

  def init_state(self, variables, rng) -> TrainState:
    """variables: 'params', 'batch_stats' and optionally 'momentum_params' / 'momentum_batch_stats' (as a
    converted checkpoint holds them). Without them the momentum encoder starts as a copy of the base."""
    params = variables['params']
    batch_stats = variables.get('batch_stats', {})
    momentum_params = variables.get('momentum_params', momentum_branch_params(params))
    momentum_stats = variables.get('momentum_batch_stats', momentum_branch_params(batch_stats))
    copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)
    return TrainState(step=jnp.zeros((), jnp.int32), params=copy(params), batch_stats=copy(batch_stats),
                      opt_state=self.optimizer.init(params), rng=jnp.asarray(rng),
                      ema_params=copy(momentum_params), ema_batch_stats=copy(momentum_stats))

  def _forward(self, params, batch_stats, images, superpixels, rng, method=None):
    out, updates = self.model.apply({'params': params, 'batch_stats': batch_stats}, images, superpixels,
                                    train=True, mutable=['batch_stats'], rngs={'dropout': rng}, method=method)
    return out, updates['batch_stats']

  def gradients(self, state: TrainState, batch, target_keys=None):
    """(grads, aux): aux holds loss, q1, q2, k1, k2, momentum and the updated statistics / momentum params.

    target_keys: optional {'k1', 'k2'} (B, dim) used as the contrastive targets instead of the momentum
    branch's own keys (which are still computed and returned). Keys carry no gradient, so this conditions the
    step on given targets; the parity test uses it where a fixture's keys are ill-conditioned.
    """
    rng_q1, rng_q2, rng_k1, rng_k2 = state.step_rngs(4)
    momentum = self.momentum_fn(state.step)
    # The EMA of the pre-step parameters, then the keys: no gradient flows into this branch.
    momentum_params = ema(state.ema_params, jax.lax.stop_gradient(momentum_branch_params(state.params)), momentum)
    out_k1, momentum_stats = self._forward(momentum_params, state.ema_batch_stats, batch['view1'],
                                           batch['superpixels1'], rng_k1, method=MoCo.project)
    out_k2, momentum_stats = self._forward(momentum_params, momentum_stats, batch['view2'], batch['superpixels2'],
                                           rng_k2, method=MoCo.project)
    k1 = jax.lax.stop_gradient(out_k1['projection'])
    k2 = jax.lax.stop_gradient(out_k2['projection'])
    t1, t2 = (k1, k2) if target_keys is None else (target_keys['k1'], target_keys['k2'])

    def loss_fn(params):
      out_q1, stats = self._forward(params, state.batch_stats, batch['view1'], batch['superpixels1'], rng_q1)
      out_q2, stats = self._forward(params, stats, batch['view2'], batch['superpixels2'], rng_q2)
      q1, q2 = out_q1['prediction'], out_q2['prediction']
      loss = contrastive_loss(q1, t2, self.temperature) + contrastive_loss(q2, t1, self.temperature)
      return loss, dict(q1=q1, q2=q2, batch_stats=stats)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    aux.update(loss=loss, k1=k1, k2=k2, momentum=momentum, momentum_params=momentum_params,
               momentum_batch_stats=momentum_stats)
    return grads, aux

  def apply_gradients(self, state: TrainState, grads, aux) -> tuple[TrainState, dict[str, Any]]:
    new_state = state.apply_optimizer(self.optimizer, grads, aux['batch_stats']).replace(
        ema_params=aux['momentum_params'], ema_batch_stats=aux['momentum_batch_stats'])
    agreement = agreement_metrics(aux['q1'], aux['q2'], aux['k1'], aux['k2'])
    return new_state, self.metrics(state, loss=aux['loss'], momentum=aux['momentum'], **agreement)
