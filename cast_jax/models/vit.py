"""The baseline the paper compares against: MoCo-v3's ``vit_conv_small`` / ``vit_conv_base``.

A ViT on a regular patch grid: a conv stem with four stride-2 convs (patch 16), a fixed 2-D sin-cos position
table with a zero class slot (``pos_embed`` (1, 1 + grid^2, D), frozen), timm blocks, final LayerNorm, the
class token as the embedding. It takes plain images; the superpixel argument is accepted and ignored so that
trainers can call every encoder the same way.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cast_jax.models.layers import VIT_LN_EPS, Block, ConvStem, layer_norm
from cast_jax.models.resize import sincos_position_table

VIT_STEM_STRIDE = 16


class ConvViT(nn.Module):
  """images (B, H, W, 3) -> {'features': (B, D), 'patch_tokens': (B, H/16 * W/16, D), 'logits'?}."""

  embed_dim: int = 384
  depth: int = 11
  num_heads: int = 12
  mlp_ratio: float = 4.0
  pos_grid: int = 14
  num_classes: int = 0
  drop_path_rate: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, images, superpixels=None, train: bool = False):
    del superpixels
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be (batch, height, width, 3); got shape {images.shape}')
    grid = (images.shape[1] // VIT_STEM_STRIDE, images.shape[2] // VIT_STEM_STRIDE)
    if grid != (self.pos_grid, self.pos_grid):
      raise ValueError(f'images of {images.shape[1:3]} give a {grid} patch grid; this model expects '
                       f'{self.pos_grid * VIT_STEM_STRIDE}px images (pos_grid={self.pos_grid}).')
    if self.dtype is not None:
      images = images.astype(self.dtype)
    x = ConvStem(self.embed_dim, num_stride2_convs=4, dtype=self.dtype, name='patch_embed')(images, train=train)
    batch = x.shape[0]
    x = x.reshape(batch, -1, self.embed_dim)
    table = np.concatenate([np.zeros((1, self.embed_dim), np.float32),
                            sincos_position_table(self.pos_grid, self.pos_grid, self.embed_dim)])
    pos = self.param('pos_embed', lambda _: jnp.asarray(table)[None])  # frozen
    cls = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, self.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, self.embed_dim)), x], axis=1)
    x = x + pos.astype(x.dtype)
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, float(rates[i]), dtype=self.dtype, name=f'blocks_{i}')(x, train=train)
    x = layer_norm(VIT_LN_EPS, 'norm', self.dtype)(x)
    out = {'features': x[:, 0], 'patch_tokens': x[:, 1:]}
    if self.num_classes:
      out['logits'] = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x[:, 0]).astype(jnp.float32)
    return out
