"""``type='classifier'``: top-1/top-5 of the model's own head over the whole evaluation split by default.

``ema=True`` evaluates the train state's weight EMA instead (the supervised trainer's ``classifier_ema``).
The best top-1 so far is kept here (the linear probe reports it, as MoCo-v3's ``main_lincls``) and picked up
again from the logged metrics when a run resumes.
"""

from __future__ import annotations

import numpy as np

from cast_jax.evaluate.knn import topk_accuracy
from cast_jax.evaluators.base import Evaluator, concatenate, evaluation_pass, register, variables_of


@register('classifier')
class ClassifierEvaluator(Evaluator):
  """Scalars: ``top1``, ``top5`` (with >= 5 classes), ``best_top1``, ``num_examples`` (rows scored)."""

  OPTIONS = {'ema': False}

  def __init__(self, name, entry, context):
    super().__init__(name, entry, context)
    if not context.classifier:
      raise ValueError(f'config.evals.{name} (type classifier) needs a model with a classification head; '
                       f'the {context.config.trainer!r} trainer\'s model has none: remove config.evals.{name}')
    self.best_top1 = 0.0

  def run(self, target, step):
    del step
    variables = variables_of(target, ema=bool(self.options['ema']))
    rows = [kept for _, _, kept in evaluation_pass(self.context, variables, self.split, self.num_examples,
                                                   self.batch_size, gather=('logits', 'label'))]
    scored = concatenate(rows)
    scalars = topk_accuracy(scored['logits'], scored['label'])
    self.best_top1 = max(self.best_top1, scalars['top1'])
    scalars.update(best_top1=self.best_top1, num_examples=int(len(scored['label'])))
    return scalars, {}

  def restore(self, history):
    key = f'{self.prefix}top1'
    # (NaN and inf are logged as strings: only finite numbers count.)
    logged = [float(r[key]) for r in history if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
    self.best_top1 = max([self.best_top1] + logged)
