"""Optimizers with the original's treatment of frozen parameters, parameter groups and weight decay.

PyTorch never gives a ``requires_grad=False`` parameter a gradient, so its optimizer skips it: no update and
no weight decay. Here such parameters are routed to ``optax.set_to_zero`` and hold no optimizer state.

Two trees describe the parameters: the trainable mask ('trainable' / 'frozen' per leaf: whether it changes at
all) and the group labels (a ``Group`` name per leaf: its learning-rate multiplier and weight decay, as a
PyTorch param group). ``grouped`` routes every trainable leaf to its group's transformation.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cast_jax.models.variants import ModelSpec, is_frozen

TRAINABLE, FROZEN = 'trainable', 'frozen'


def _names(path) -> tuple[str, ...]:
  return tuple(getattr(k, 'key', getattr(k, 'name', str(k))) for k in path)


def trainable_labels(spec: ModelSpec, params) -> Any:
  """A tree like ``params`` with 'trainable' or 'frozen' at each leaf."""
  return jax.tree_util.tree_map_with_path(lambda p, _: FROZEN if is_frozen(spec, _names(p)) else TRAINABLE, params)


def _compiled(patterns: Sequence[str], field: str) -> list:
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as error:
      raise ValueError(f'{field} pattern {pattern!r} is not a regular expression: {error}') from None
  return compiled


def freeze_matching(labels, patterns: Sequence[str]) -> Any:
  """``labels`` (a trainable mask) with every leaf whose path matches one of ``patterns`` set to 'frozen'.

  A pattern is a regular expression matched at the start of the leaf's path below 'params', names joined by
  '/' (``'encoder/patch_embed'`` freezes the encoder's whole conv stem, as MoCo-v3's ``stop_grad_conv1`` freezes
  its ViT's patch projection). A pattern that matches no leaf raises, listing the top-level names: a typo must
  not leave everything training.
  """
  patterns = tuple(patterns or ())
  if not patterns:
    return labels
  compiled = _compiled(patterns, 'frozen_params')
  paths = [('/'.join(_names(p)), p) for p, _ in jax.tree_util.tree_flatten_with_path(labels)[0]]
  for pattern, regex in zip(patterns, compiled):
    if not any(regex.match(path) for path, _ in paths):
      tops = sorted({path.split('/')[0] for path, _ in paths})
      examples = [path for path, _ in paths[:6]]
      raise ValueError(f'frozen_params pattern {pattern!r} matches no parameter; paths look like {examples} '
                       f'(top-level names: {tops}); patterns match at the start of the path')
  return jax.tree_util.tree_map_with_path(
      lambda p, label: FROZEN if any(r.match('/'.join(_names(p))) for r in compiled) else label, labels)


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



# --------------------------------------------------------------------------------------------------------
# Parameter groups.


@dataclasses.dataclass(frozen=True)
class Group:
  """A PyTorch param group: the learning rate is ``lr_mult`` x the schedule's; ``weight_decay`` its own.
  ``start_step``: the group's rate is 0 for the updates before it (not a PyTorch notion; 0: from the start)."""

  lr_mult: float = 1.0
  weight_decay: float = 0.0
  start_step: int = 0


def group_labels(params, rule: Callable[[tuple[str, ...], Any], str]) -> Any:
  """A tree like ``params`` with ``rule(names, leaf)`` (a group name) at each leaf."""
  return jax.tree_util.tree_map_with_path(lambda p, leaf: rule(_names(p), leaf), params)


BASE_GROUP = 'base'


def multiplier_groups(params, multipliers: Mapping[str, float], weight_decay: float,
                      base_start_step: int = 0) -> tuple[Any, dict]:
  """Group labels and ``Group``s for ``config.lr_multipliers``: {pattern: lr multiplier}.

  A pattern is a regular expression matched at the start of the leaf's '/'-joined path below 'params' (as in
  ``freeze_matching``); a leaf takes the first pattern that matches, every other leaf the group 'base' (x1).
  All groups decay by ``weight_decay`` (MoCo-v3's single AdamW group). A pattern matching no leaf raises.
  ``base_start_step``: the 'base' group stays still (rate 0) for the updates before it.
  """
  patterns = list(multipliers)
  compiled = _compiled(patterns, 'lr_multipliers')
  paths = ['/'.join(_names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for pattern, regex in zip(patterns, compiled):
    if not any(regex.match(path) for path in paths):
      raise ValueError(f'lr_multipliers pattern {pattern!r} matches no parameter; paths look like {paths[:6]} '
                       f'(top-level names: {sorted({p.split("/")[0] for p in paths})}); patterns match at the '
                       'start of the path')
    if pattern == BASE_GROUP:
      raise ValueError(f'{BASE_GROUP!r} names the group of unmatched parameters; write the pattern differently')

  def rule(names, _):
    path = '/'.join(names)
    return next((pattern for pattern, regex in zip(patterns, compiled) if regex.match(path)), BASE_GROUP)

  groups = {BASE_GROUP: Group(1.0, weight_decay, int(base_start_step))}
  groups.update({pattern: Group(float(multipliers[pattern]), weight_decay) for pattern in patterns})
  return group_labels(params, rule), groups


def spml_group_rule(classifier: Sequence[str] = ('classifier',)) -> Callable[[tuple[str, ...], Any], str]:
  """SPML's four groups (segmentation/README.md "Optimizer"): 'backbone_weight', 'backbone_bias',
  'classifier_weight', 'classifier_bias'. Biases are leaves named ``bias`` (graph pooling's ``Block.bias``
  included); every other leaf (kernels, norm scales) is a weight. ``classifier``: top-level names of the head."""

  def rule(names, _):
    part = 'classifier' if names[0] in classifier else 'backbone'
    return f'{part}_{"bias" if names[-1] == "bias" else "weight"}'

  return rule


def spml_groups(weight_decay: float) -> dict[str, Group]:
  """Backbone weights x1 (decay), backbone biases x2 (no decay), classifier weights x10, biases x20."""
  return {'backbone_weight': Group(1.0, weight_decay), 'backbone_bias': Group(2.0, 0.0),
          'classifier_weight': Group(10.0, weight_decay), 'classifier_bias': Group(20.0, 0.0)}


def _is_trainable(label) -> bool:
  if isinstance(label, (bool, np.bool_)):
    return bool(label)
  if label not in (TRAINABLE, FROZEN):
    raise ValueError(f'a trainable mask holds True/False or {TRAINABLE!r}/{FROZEN!r} per leaf; got {label!r}')
  return label == TRAINABLE


def grouped(make: Callable[[Group], optax.GradientTransformation], groups: Mapping[str, Group], labels,
            trainable) -> optax.GradientTransformation:
  """``make(group)`` for the trainable leaves of each group, ``set_to_zero`` (no state) for the frozen ones.

  labels: group name per leaf; trainable: the trainable mask (bool or 'trainable'/'frozen' per leaf).
  """
  if FROZEN in groups:
    raise ValueError(f'{FROZEN!r} is reserved for frozen leaves; rename that group')
  unknown = sorted(set(jax.tree_util.tree_leaves(labels)) - set(groups))
  if unknown:
    raise ValueError(f'group labels {unknown} have no Group; defined: {sorted(groups)}')
  route = jax.tree_util.tree_map(lambda l, t: l if _is_trainable(t) else FROZEN, labels, trainable)
  transforms = {name: make(group) for name, group in groups.items()}
  transforms[FROZEN] = optax.set_to_zero()
  return optax.multi_transform(transforms, route)


def _scaled(learning_rate, mult: float, start_step: int = 0):
  if start_step:
    rate = learning_rate if callable(learning_rate) else (lambda _: learning_rate)
    return lambda step: jnp.where(step >= start_step, mult * rate(step), 0.0)
  if callable(learning_rate):
    return lambda step: mult * learning_rate(step)
  return mult * learning_rate


def adamw_groups(learning_rate, groups: Mapping[str, Group], labels, trainable, b1: float = 0.9,
                 b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """PyTorch AdamW over param groups: each group's lr = lr_mult x schedule, decoupled decay lr x wd x p."""
  return grouped(lambda g: optax.adamw(_scaled(learning_rate, g.lr_mult, g.start_step), b1=b1, b2=b2, eps=eps,
                                       weight_decay=g.weight_decay), groups, labels, trainable)


def sgd_groups(learning_rate, groups: Mapping[str, Group], labels, trainable, momentum: float = 0.9,
               nesterov: bool = False) -> optax.GradientTransformation:
  """``torch.optim.SGD`` over param groups: d = g + wd p; buf = m buf + d (buf = d at the first step);
  d = d + m buf with Nesterov, else buf; p -= lr_mult lr d. (The Segmenter: momentum 0.9, Nesterov, wd 0.)"""

  def make(g: Group):
    chain = [optax.add_decayed_weights(g.weight_decay)] if g.weight_decay else []
    chain.append(optax.sgd(_scaled(learning_rate, g.lr_mult), momentum=momentum or None, nesterov=nesterov))
    return optax.chain(*chain)

  return grouped(make, groups, labels, trainable)


class SpmlSgdState(NamedTuple):
  count: jax.Array  # int32 steps taken: the schedule's argument
  buffer: Any  # the momentum buffer, learning rate folded in


def spml_sgd(learning_rate, lr_mult: float = 1.0, weight_decay: float = 0.0,
             momentum: float = 0.9) -> optax.GradientTransformation:
  """SPML's ``lib.nn.optimizer.SGD`` (called with lr=1 and ``step(lr)``), one param group:
  d = g + wd p; buf = m buf + lr_mult lr d (buf starts at 0); p -= buf. Unlike torch's SGD the learning rate is
  inside the buffer, so a changed lr only scales new gradients."""

  def init(params):
    return SpmlSgdState(jnp.zeros((), jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    if weight_decay and params is None:
      raise ValueError('spml_sgd with weight decay needs the parameters: optimizer.update(grads, state, params)')
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    scale = jnp.asarray(lr_mult * lr, jnp.float32)
    if weight_decay:
      grads = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, grads, params)
    buffer = jax.tree_util.tree_map(lambda b, d: momentum * b + (scale * d).astype(b.dtype), state.buffer, grads)
    updates = jax.tree_util.tree_map(jnp.negative, buffer)
    return updates, SpmlSgdState(optax.safe_int32_increment(state.count), buffer)

  return optax.GradientTransformation(init, update)


def spml_sgd_groups(learning_rate, groups: Mapping[str, Group], labels, trainable,
                    momentum: float = 0.9) -> optax.GradientTransformation:
  """SPML's SGD over its param groups (``spml_groups``); frozen leaves (and ``cls_token``, in no group there)
  must be marked in ``trainable``."""
  return grouped(lambda g: spml_sgd(learning_rate, g.lr_mult, g.weight_decay, momentum), groups, labels, trainable)
