"""CAST's graph pooling: sample centroid tokens, softly assign every token to them, pool.

Follows ``cast_models/graph_pool.py`` (docs/original_behaviour.md#graph-pooling). Parameter names mirror the
PyTorch module ``poolL.pool_block``: ``centroid_fc`` (an attention-only block with a learned ``bias``),
``fc1_0``/``fc1_1`` (LayerNorm, Linear) and ``fc2_0``/``fc2_1``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cast_jax.models.fps import farthest_point_sampling
from cast_jax.models.layers import TORCH_LN_EPS, VIT_LN_EPS, Attention, exact_gelu, l2_normalize, layer_norm

# Graph pooling always uses 12 heads, whatever the encoder's ``num_heads`` (as in the original).
POOL_NUM_HEADS = 12
# Cosine similarities are scaled by 5 before the softmax assignment (hard-coded in the original).
LOGIT_SCALE = 5.0


class PoolOutput(NamedTuple):
  cls: jax.Array  # (B, 1, D) updated class token
  centroids: jax.Array  # (B, K, D) the next level's tokens
  logits: jax.Array  # (B, N, K) assignment scores of every token to every centroid
  sampled_inds: jax.Array  # (B, K) int32, which input tokens seeded the centroids (FPS order)


def _masked_mean(x, weights):
  """Mean of x (B, N, C) over N with weights (B, N) in {0, 1}; an all-zero row gives zeros."""
  total = jnp.sum(x * weights[..., None], axis=1, keepdims=True)
  return total / jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1.0)[..., None]


class CentroidBlock(nn.Module):
  """``graph_pool.Block`` as used for ``centroid_fc``: attention only, then mean-centring plus a bias."""

  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, valid: Optional[jax.Array]):
    dim = x.shape[-1]
    h = x + Attention(POOL_NUM_HEADS, dtype=self.dtype, name='attn')(layer_norm(VIT_LN_EPS, 'norm', self.dtype)(x),
                                                                    valid)
    bias = self.param('bias', nn.initializers.normal(0.01), (dim,), jnp.float32)
    if valid is None:
      centre = jnp.mean(h, axis=1, keepdims=True)
    else:
      centre = _masked_mean(h, valid.astype(h.dtype))
    # The mean is over tokens (axis 1), empty ones included: it centres the set, not each vector.
    return h - centre + bias.astype(h.dtype)


class GraphPooling(nn.Module):
  """Pools N tokens into ``num_clusters`` centroids.

  Called with cls (B, 1, D), tokens (B, N, D), ``empty`` (B, N) True for zero tokens of empty superpixels
  (kept in every sum, but never sampled), and ``valid`` (B, N) or None: False for padding positions that do
  not exist in the original and are left out of everything.
  """

  num_clusters: int
  mlp_ratio: float = 4.0
  dropout: float = 0.1
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, cls, tokens, empty, valid=None, train: bool = False) -> PoolOutput:
    batch, num_tokens, dim = tokens.shape
    if self.num_clusters > num_tokens:
      raise ValueError(f'graph pooling to {self.num_clusters} clusters needs at least that many tokens; '
                       f'got {num_tokens}. Use more superpixels or fewer clusters.')
    weights = jnp.ones((batch, num_tokens), jnp.float32) if valid is None else valid.astype(jnp.float32)
    excluded = empty if valid is None else (empty | ~valid)

    # 1) Farthest point sampling on the raw features. Excluded tokens are replaced by the mean of the others
    #    and a mean token is prepended as the start point, so they have distance 0 and are never picked.
    tokens32 = tokens.astype(jnp.float32)
    mean = _masked_mean(tokens32, (~excluded).astype(jnp.float32))  # (B, 1, D)
    filled = jnp.where(excluded[..., None], mean, tokens32)
    picks = farthest_point_sampling(jnp.concatenate([mean, filled], axis=1), self.num_clusters + 1)
    sampled_inds = picks[:, 1:] - 1  # (B, K), indices into `tokens`

    # 2) Soft assignment: cosine similarity between mean-centred attended tokens and the sampled ones.
    node = CentroidBlock(dtype=self.dtype, name='centroid_fc')(tokens, valid).astype(jnp.float32)
    cent = jnp.take_along_axis(node, sampled_inds[..., None], axis=1)
    logits = LOGIT_SCALE * jnp.einsum('bnd,bkd->bnk', l2_normalize(node), l2_normalize(cent))
    assign = jax.nn.softmax(logits, axis=-1) * weights[..., None]  # padding contributes nothing

    # 3) Pool a widened projection of the tokens with the assignment, project back, add residuals.
    hidden = int(dim * self.mlp_ratio)
    g = layer_norm(TORCH_LN_EPS, 'fc1_0', self.dtype)(jnp.concatenate([cls, tokens], axis=1))
    g = exact_gelu(nn.Dense(hidden, dtype=self.dtype, name='fc1_1')(g))
    g = nn.Dropout(self.dropout)(g, deterministic=not train)
    g_cls, g_tokens = g[:, :1], g[:, 1:].astype(jnp.float32)
    pooled = jnp.einsum('bnk,bnc->bkc', assign, g_tokens) / jnp.sum(assign, axis=1)[..., None]
    o = layer_norm(TORCH_LN_EPS, 'fc2_0', self.dtype)(jnp.concatenate([g_cls.astype(pooled.dtype), pooled], axis=1))
    o = nn.Dense(dim, dtype=self.dtype, name='fc2_1')(o)
    centroids = o[:, 1:] + jnp.take_along_axis(tokens, sampled_inds[..., None], axis=1)
    return PoolOutput(cls=o[:, :1] + cls, centroids=centroids, logits=logits, sampled_inds=sampled_inds)
