"""MoCo-v3 projector and predictor MLPs (``moco/builder.py: _build_mlp``).

Linear (no bias) -> BN -> ReLU for every hidden layer; the last Linear is followed by a BatchNorm without
affine parameters. Layer names follow the PyTorch ``nn.Sequential`` indices (``layers_0`` Linear,
``layers_1`` BN, ``layers_3`` Linear, ...), the ReLUs taking the indices in between.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cast_jax.models.layers import BatchNorm


class MoCoMLP(nn.Module):
  """(B, in) -> (B, out_dim). num_layers=3 for the projector, 2 for the predictor."""

  num_layers: int
  hidden_dim: int
  out_dim: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    index = 0
    for layer in range(self.num_layers):
      last = layer == self.num_layers - 1
      width = self.out_dim if last else self.hidden_dim
      x = nn.Dense(width, use_bias=False, dtype=self.dtype, name=f'layers_{index}')(x)
      x = BatchNorm(use_affine=not last, name=f'layers_{index + 1}')(x, train=train)
      if not last:
        x = nn.relu(x)
      index += 3
    return x.astype(jnp.float32)
