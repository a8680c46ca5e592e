"""Losses that see a batch's ``mask``: a padded last batch gives the same value as the original's short batch.

PyTorch averages over the rows it has (and, with ``ignore_index``, over the pixels not ignored); a padded batch
of static shape holds extra rows with ``mask`` False, which must count neither in the sum nor in the divisor.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def _row_mask(mask, like):
  """(B,) -> broadcastable to ``like`` (B, ...)."""
  mask = jnp.asarray(mask, bool)
  if mask.ndim != 1 or mask.shape[0] != like.shape[0]:
    raise ValueError(f'mask must be (batch,) = ({like.shape[0]},); got {mask.shape}')
  return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def masked_mean(values, mask=None):
  """Mean of ``values`` (B, ...) over the rows with ``mask`` True (all rows when None); 0 for no row."""
  values = jnp.asarray(values, jnp.float32)
  if mask is None:
    return jnp.mean(values)
  weights = jnp.broadcast_to(_row_mask(mask, values), values.shape).astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def cross_entropy_ignore(logits, labels, ignore_index: int = 255, mask=None):
  """``nn.CrossEntropyLoss(ignore_index=...)`` on the real rows: the mean of -log softmax(logits)[label] over
  pixels whose label is not ``ignore_index`` (and, when given, whose row has ``mask`` True).

  logits: (B, ..., C) class axis last; labels: (B, ...) int. Labels outside [0, C) other than ``ignore_index``
  are an error in PyTorch; here they are counted as ignored, so map them to ``ignore_index`` beforehand.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels)
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f'logits {logits.shape} and labels {labels.shape} must share every axis but the last')
  valid = (labels != ignore_index) & (labels >= 0) & (labels < logits.shape[-1])
  if mask is not None:
    valid = valid & _row_mask(mask, labels)
  safe = jnp.where(valid, labels, 0)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  return jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def soft_cross_entropy(logits, targets, mask=None):
  """mean_b sum_c -t_bc log_softmax(z_b)_c over the rows with ``mask`` True (DeiT's loss, padded batches)."""
  per_row = optax.softmax_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32))
  return masked_mean(per_row, mask)
