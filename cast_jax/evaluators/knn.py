"""``type='knn'``: weighted kNN top-1/top-5 of the backbone's features (k 20, T 0.07, cosine, as DINO).

The test side is the evaluator's ``split`` / ``num_examples``; the bank of labelled neighbours is
``num_train`` examples of ``train_split`` (default ``config.data.train_split``), spread evenly over it.
"""

from __future__ import annotations

from cast_jax.evaluate.knn import knn_accuracy
from cast_jax.evaluators.base import Evaluator, concatenate, evaluation_pass, register, variables_of


@register('knn')
class KnnEvaluator(Evaluator):
  """Scalars: ``top1``, ``top5`` (with >= 5 classes), ``num_examples`` (test rows scored)."""

  OPTIONS = {'train_split': '', 'num_train': -1, 'k': 20, 'temperature': 0.07, 'num_classes': 1000}

  def __init__(self, name, entry, context):
    super().__init__(name, entry, context)
    self.train_split = self.options['train_split'] or context.config.data.train_split

  def _features(self, variables, split: str, count: int):
    rows = [kept for _, _, kept in evaluation_pass(self.context, variables, split, count, self.batch_size)]
    return concatenate(rows)

  def run(self, target, step):
    del step
    variables = variables_of(target)
    test = self._features(variables, self.split, self.num_examples)
    train = self._features(variables, self.train_split, self.options['num_train'])
    result = knn_accuracy(train['features'], train['label'], test['features'], test['label'],
                          num_classes=self.options['num_classes'], k=self.options['k'],
                          temperature=self.options['temperature'])
    scalars = {'top1': result['top1']}
    if 'top5' in result:
      scalars['top5'] = result['top5']
    scalars['num_examples'] = int(result['num_test'])
    return scalars, {}
