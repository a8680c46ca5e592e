"""The MoCo-v3 wrapper: an encoder with the projector as its head, plus the predictor.

The base branch is ``encoder -> projector -> predictor``; the momentum branch uses the same module with the
momentum parameters (which hold only ``encoder`` and ``projector``) through :meth:`MoCo.project`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from cast_jax.models.heads import MoCoMLP


class MoCo(nn.Module):
  """encoder: a module returning {'features': (B, D), ...}; dim / mlp_dim: MoCo's 256 / 4096."""

  encoder: nn.Module
  dim: int = 256
  mlp_dim: int = 4096
  dtype: Any = None

  def setup(self):
    self.projector = MoCoMLP(3, self.mlp_dim, self.dim, dtype=self.dtype)
    self.predictor = MoCoMLP(2, self.mlp_dim, self.dim, dtype=self.dtype)

  def project(self, images, superpixels=None, train: bool = False):
    """The momentum branch: encoder outputs plus 'projection' (B, dim)."""
    out = dict(self.encoder(images, superpixels, train=train))
    out['projection'] = self.projector(out['features'], train=train)
    return out

  def __call__(self, images, superpixels=None, train: bool = False):
    """The base branch: encoder outputs plus 'projection' and 'prediction' (B, dim)."""
    out = self.project(images, superpixels, train=train)
    out['prediction'] = self.predictor(out['projection'], train=train)
    return out
