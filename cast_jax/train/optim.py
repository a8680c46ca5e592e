"""Optimizers with the original's treatment of frozen parameters and weight decay.

PyTorch never gives a ``requires_grad=False`` parameter a gradient, so its optimizer skips it: no update and
no weight decay. Here such parameters are routed to ``optax.set_to_zero`` and hold no optimizer state.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import optax

from cast_jax.models.variants import ModelSpec, is_frozen

TRAINABLE, FROZEN = 'trainable', 'frozen'


def _names(path) -> tuple[str, ...]:
  return tuple(getattr(k, 'key', getattr(k, 'name', str(k))) for k in path)


def trainable_labels(spec: ModelSpec, params) -> Any:
  """A tree like ``params`` with 'trainable' or 'frozen' at each leaf."""
  return jax.tree_util.tree_map_with_path(lambda p, _: FROZEN if is_frozen(spec, _names(p)) else TRAINABLE, params)


def head_only_labels(params, head: str = 'head') -> Any:
  """The linear probe: only the ``head`` subtree trains."""
  return jax.tree_util.tree_map_with_path(lambda p, _: TRAINABLE if _names(p)[0] == head else FROZEN, params)


def decay_all(params) -> Any:
  """MoCo-v3's AdamW: one parameter group, weight decay on every trainable parameter (biases, norms too)."""
  return jax.tree_util.tree_map(lambda _: True, params)


def decay_matrices(params, no_decay_names=('pos_embed', 'cls_token')) -> Any:
  """DeiT's (timm) rule: no decay for 1-D parameters, biases and the named position / cls tables."""

  def rule(path, leaf):
    names = _names(path)
    return leaf.ndim > 1 and names[-1] != 'bias' and not any(n in no_decay_names for n in names)

  return jax.tree_util.tree_map_with_path(rule, params)


def adamw(learning_rate, labels, weight_decay: float, decay_mask: Optional[Any] = None, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """PyTorch's AdamW (decoupled decay ``p -= lr * wd * p``, eps after sqrt(v_hat)) on the trainable leaves."""
  inner = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
  return optax.multi_transform({TRAINABLE: inner, FROZEN: optax.set_to_zero()}, labels)


def sgd(learning_rate, labels, momentum: float = 0.9, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """PyTorch SGD with momentum (the linear probe); decay added to the gradient as torch does."""
  chain = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  chain.append(optax.sgd(learning_rate, momentum=momentum))
  return optax.multi_transform({TRAINABLE: optax.chain(*chain), FROZEN: optax.set_to_zero()}, labels)


def count_trainable(params, labels) -> int:
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda p, l: p.size if l == TRAINABLE else 0,
                                                            params, labels))
  return int(sum(leaves))

