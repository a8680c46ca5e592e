"""Building blocks shared by every CAST variant.

Each layer reproduces the PyTorch module it replaces (timm 0.4.x ViT blocks, CAST's ConvStem, PyTorch
BatchNorm) closely enough that the published weights give the same numbers. Names of submodules mirror the
PyTorch state-dict names (``norm1``, ``attn/qkv``, ``proj_0``...) so that checkpoint import is a mechanical
renaming; see ``cast_jax.convert``.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cast_jax.models import conv

# timm's ViT uses LayerNorm(eps=1e-6); the GraphPooling MLP norms, BatchNorm and the decoder use PyTorch's
# default 1e-5 (see docs/original_behaviour.md#layernorm-eps).
VIT_LN_EPS = 1e-6
TORCH_LN_EPS = 1e-5


def l2_normalize(x, eps: float = 1e-12):
  """``torch.nn.functional.normalize`` over the last axis: x / max(||x||, eps); all-zero rows stay zero."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def exact_gelu(x):
  """PyTorch's ``nn.GELU()``: the erf form, not the tanh approximation."""
  return nn.gelu(x, approximate=False)


def layer_norm(eps: float, name: str | None = None, dtype=None) -> nn.LayerNorm:
  # Normalization statistics stay in float32 even under bfloat16 compute.
  return nn.LayerNorm(epsilon=eps, name=name, dtype=dtype, param_dtype=jnp.float32)


class BatchNorm(nn.Module):
  """PyTorch-semantics BatchNorm over every axis but the last (channels-last).

  Differences from ``flax.linen.BatchNorm`` that matter for reproducing PyTorch:
  the running variance is updated with the *unbiased* batch variance, the momentum is PyTorch's
  (new = (1 - m) * old + m * batch), and an optional ``mask`` excludes padded rows from the statistics.

  Under ``jax.jit`` with a batch sharded over devices the reductions are global, which is SyncBN.
  """

  momentum: float = 0.1
  epsilon: float = 1e-5
  use_affine: bool = True

  @nn.compact
  def __call__(self, x, train: bool, mask: Optional[jax.Array] = None):
    """x: (..., C). mask: broadcastable to x.shape[:-1], True where a row counts."""
    features = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    running_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))
    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      if mask is None:
        count = jnp.asarray(x32.size // features, jnp.float32)
        mean = jnp.mean(x32, axis=axes)
        var = jnp.mean(jnp.square(x32 - mean), axis=axes)
      else:
        weights = jnp.broadcast_to(mask, x.shape[:-1]).astype(jnp.float32)[..., None]
        count = jnp.sum(weights)
        mean = jnp.sum(x32 * weights, axis=axes) / jnp.maximum(count, 1.0)
        var = jnp.sum(jnp.square(x32 - mean) * weights, axis=axes) / jnp.maximum(count, 1.0)
      if not self.is_initializing():
        unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
        running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
        running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
    else:
      mean, var = running_mean.value, running_var.value
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.use_affine:
      scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
      bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
      y = y * scale + bias
    return y.astype(x.dtype)


class ConvStem(nn.Module):
  """CAST's patch embedding: four 3x3 convs (stride 2, 2, 2, 1) with BN+ReLU, then a 1x1 conv.

  Input (B, H, W, 3) normalized RGB, output (B, H/8, W/8, embed_dim). Channels double from
  embed_dim/8. Padding is explicit (1, 1): 'SAME' would pad (0, 1) for stride 2 on even sizes.
  Submodule names follow the PyTorch ``nn.Sequential`` indices (``proj_0`` conv, ``proj_1`` BN, ...).
  """

  embed_dim: int
  num_stride2_convs: int = 3  # 3 gives stride 8 (CAST); 4 gives stride 16 (MoCo-v3 vit_conv_*)
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool = False, sample_mask=None):
    """x: (B, H, W, 3). sample_mask: optional (B,) bool, True for the images whose pixels the train-mode
    BatchNorm statistics count (a padded batch's real rows); None counts every image."""
    channels = self.embed_dim // 8
    bn_mask = None if sample_mask is None else sample_mask[:, None, None]
    strides = [2] * self.num_stride2_convs + [1] * (4 - self.num_stride2_convs)
    index = 0
    for layer, stride in enumerate(strides):
      out_channels = channels * 2 ** layer
      x = nn.Conv(out_channels, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=False,
                  dtype=self.dtype, conv_general_dilated=conv.conv_general_dilated, name=f'proj_{index}')(x)
      x = BatchNorm(name=f'proj_{index + 1}')(x, train=train, mask=bn_mask)
      x = nn.relu(x)
      index += 3
    return nn.Conv(self.embed_dim, (1, 1), use_bias=True, dtype=self.dtype,
                   conv_general_dilated=conv.conv_general_dilated, name=f'proj_{index}')(x)


class Attention(nn.Module):
  """timm multi-head self-attention; qkv channels are laid out [q | k | v], each split into heads."""

  num_heads: int
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, key_mask: Optional[jax.Array] = None):
    """x: (B, N, D). key_mask: (B, N) bool, False for tokens that must not be attended to."""
    batch, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, dtype=self.dtype, name='qkv')(x)
    # Heads go next to the batch axis before the two batched matmuls: XLA's CPU backend runs
    # 'bhqd,bhkd' about twice as fast as the same contraction with heads between the token axes.
    qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, hd)
    logits = jnp.einsum('bhqd,bhkd->bhqk', q * head_dim ** -0.5, k)
    logits = logits.astype(jnp.float32)
    if key_mask is not None:
      logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bhkd->bhqd', weights, v).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
    return nn.Dense(dim, dtype=self.dtype, name='proj')(out)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example (timm ``DropPath``)."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Mlp(nn.Module):
  hidden_dim: int
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    x = exact_gelu(nn.Dense(self.hidden_dim, dtype=self.dtype, name='fc1')(x))
    return nn.Dense(dim, dtype=self.dtype, name='fc2')(x)


class Block(nn.Module):
  """timm 0.4.x pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, key_mask=None, train: bool = False):
    dim = x.shape[-1]
    drop = DropPath(self.drop_path)
    y = Attention(self.num_heads, dtype=self.dtype, name='attn')(
        layer_norm(VIT_LN_EPS, 'norm1', self.dtype)(x), key_mask)
    x = x + drop(y, deterministic=not train)
    y = Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, name='mlp')(layer_norm(VIT_LN_EPS, 'norm2', self.dtype)(x))
    return x + drop(y, deterministic=not train)
