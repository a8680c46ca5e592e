"""Evaluators: named, configured in ``config.evals``, run by the training loop and by ``cast_jax.evaluate``.

    evaluators = build(config, EvalContext(config, model, mesh, uses_superpixels, classifier=True))
    for ev in evaluators:
      if ev.due(step, total_steps):
        scalars, images = ev.run(state, step)   # keys are logged as ev.prefix + key

Types: 'knn' (kNN top-1 of the features), 'classifier' (top-1 of the head, optionally of the weight EMA, with a
best-so-far), 'hierarchy_pictures', 'miou' (a Segmenter's dataset-level mIoU), 'spml_miou'
(an SPML fine-tuned model, SPML's benchmark). A new type registers itself with ``@register`` in a module imported below.
"""

from __future__ import annotations

from cast_jax.evaluators import classifier, knn, miou, pictures, spml_miou  # noqa: F401  (each registers its type)
from cast_jax.evaluators.base import REGISTRY, EvalContext, Evaluator, register, to_uint8, variables_of


def build(config, context: EvalContext, names=None) -> list[Evaluator]:
  """The evaluators of ``config.evals`` in their order (only ``names``, in that order, when given)."""
  entries = config.get('evals') or {}
  if names is None:
    names = list(entries.keys())
  evaluators = []
  for name in names:
    if name not in entries:
      raise ValueError(f'no evaluator {name!r} in config.evals (it has {sorted(entries.keys())})')
    entry = entries[name]
    type_name = entry.get('type', name)
    if type_name not in REGISTRY:
      raise ValueError(f'config.evals.{name}.type={type_name!r} is not an evaluator type; the types are '
                       f'{sorted(REGISTRY)}')
    evaluators.append(REGISTRY[type_name](name, entry, context))
  return evaluators


def with_prefix(evaluator: Evaluator, values: dict) -> dict:
  """``{evaluator.prefix + key: value}``: the names under which the loop and the CLI report them."""
  return {f'{evaluator.prefix}{key}': value for key, value in values.items()}


__all__ = ['REGISTRY', 'EvalContext', 'Evaluator', 'build', 'register', 'to_uint8', 'variables_of', 'with_prefix']
