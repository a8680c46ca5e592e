"""cast_jax.evaluators: the classifier scores the whole split by default, kNN and the EMA twin read what they
should, the best top-1 survives a resume, a new type plugs in by registering, and bad entries fail clearly.

A one-layer stand-in model (features = mean colour, logits = a Dense of it) keeps the jitted forward cheap,
while the data path is the real one: PartWorld, centre crops, padded and masked evaluation batches.
"""

from __future__ import annotations

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cast_jax import evaluators
from cast_jax.evaluators.base import Evaluator, register
from cast_jax.train import inputs, sharding
from cast_jax.train.config_lib import eval_entry

NUM_CLASSES = 8


class MeanColourClassifier(nn.Module):
  """(B, H, W, 3) -> {'features' (B, 3) mean colour, 'logits' (B, 8)}; ignores superpixels."""

  @nn.compact
  def __call__(self, images, superpixels, train=False):
    del superpixels, train
    features = images.mean(axis=(1, 2))
    return {'features': features, 'logits': nn.Dense(NUM_CLASSES)(features)}


def small_config(num_eval: int, **evals) -> ml_collections.ConfigDict:
  """PartWorld (64 px, centre-cropped to 32) with ``num_eval`` validation images, evaluation batches of 8."""
  config = ml_collections.ConfigDict()
  config.trainer = 'supervised'
  config.eval_every_steps = 4
  config.eval_batch_size = 8
  config.data = ml_collections.ConfigDict(dict(
      name='partworld', train_split='train', eval_split='validation', image_size=32, eval_resize_ratio=1.0,
      num_train_examples=24, num_eval_examples=num_eval, source_image_size=64, seed=0, read_threads=1,
      superpixels='moco', superpixel_overrides={'num_segments': 16, 'iterations': 2}))
  config.evals = ml_collections.ConfigDict(evals)
  return config


def context_for(config, classifier=True) -> evaluators.EvalContext:
  return evaluators.EvalContext(config, MeanColourClassifier(), sharding.make_mesh(1), uses_superpixels=False,
                                classifier=classifier)


def constant_class_params(cls: int) -> dict:
  """A head that predicts ``cls`` for every image (zero kernel, bias one-hot)."""
  return {'Dense_0': {'kernel': jnp.zeros((3, NUM_CLASSES)), 'bias': jax.nn.one_hot(cls, NUM_CLASSES)}}


def split_labels(config, split='validation') -> np.ndarray:
  source = inputs.make_source(config.data, split)
  return np.array([source[i]['label'] for i in range(len(source))])


def test_the_classifier_scores_every_example_of_the_split_by_default():
  config = small_config(12, classifier=eval_entry('classifier'))  # 12 = one full batch of 8 and a padded one
  (classifier,) = evaluators.build(config, context_for(config))
  labels = split_labels(config)
  assert len(labels) == 12 and len(set(labels.tolist())) > 1
  for cls in (int(labels[0]), int(labels[-1])):
    scalars, images = classifier.run({'params': constant_class_params(cls)}, step=4)
    assert scalars['num_examples'] == 12 and images == {}
    assert scalars['top1'] == pytest.approx(100.0 * np.mean(labels == cls))
    assert scalars['top5'] >= scalars['top1']


def test_num_examples_limits_the_classifier_to_an_even_subset():
  config = small_config(12, classifier=eval_entry('classifier', num_examples=5))
  (classifier,) = evaluators.build(config, context_for(config))
  cls = int(split_labels(config)[0])
  scalars, _ = classifier.run({'params': constant_class_params(cls)}, step=1)
  subset = split_labels(config)[[i * 12 // 5 for i in range(5)]]  # inputs._EvenSubset's choice
  assert scalars['num_examples'] == 5 and scalars['top1'] == pytest.approx(100.0 * np.mean(subset == cls))


def test_the_ema_twin_reads_the_states_ema_and_each_keeps_its_best():
  config = small_config(12, classifier=eval_entry('classifier'), classifier_ema=eval_entry('classifier', ema=True))
  plain, ema = evaluators.build(config, context_for(config), names=['classifier', 'classifier_ema'])
  labels = split_labels(config)
  common = int(np.bincount(labels).argmax())
  rare = next(c for c in range(NUM_CLASSES) if 0 < np.mean(labels == c) < np.mean(labels == common))
  state = types.SimpleNamespace(params=constant_class_params(rare), batch_stats={},
                                ema_params=constant_class_params(common), ema_batch_stats={})
  first, _ = plain.run(state, step=4)
  first_ema, _ = ema.run(state, step=4)
  assert first['top1'] == pytest.approx(100.0 * np.mean(labels == rare))
  assert first_ema['top1'] == pytest.approx(100.0 * np.mean(labels == common))
  assert first_ema['top1'] > first['top1']
  # A worse evaluation later: top1 drops, best_top1 stays.
  state.ema_params = constant_class_params(rare)
  second_ema, _ = ema.run(state, step=8)
  assert second_ema['top1'] == first['top1'] and second_ema['best_top1'] == first_ema['top1']
  assert evaluators.with_prefix(ema, second_ema)['classifier_ema/best_top1'] == first_ema['top1']
  # A state without an EMA, or plain variables, cannot feed the EMA twin.
  with pytest.raises(ValueError, match='keeps no weight EMA'):
    ema.run(types.SimpleNamespace(params={}, batch_stats={}, ema_params=None, ema_batch_stats=None), step=1)
  with pytest.raises(ValueError, match='--ema'):
    ema.run({'params': constant_class_params(0)}, step=1)


def test_a_resumed_classifier_keeps_the_best_it_logged():
  config = small_config(12, classifier=eval_entry('classifier'))
  (classifier,) = evaluators.build(config, context_for(config))
  history = [{'step': 4, 'loss': 1.0}, {'step': 4, 'classifier/top1': 91.5}, {'step': 8, 'classifier/top1': 50.0},
             {'step': 8, 'top1': 99.0},  # another evaluator's (or an old run's) key is not ours
             {'step': 9, 'classifier/top1': 'nan'}]  # how the writer logs a NaN
  classifier.restore(history)
  scalars, _ = classifier.run({'params': constant_class_params(0)}, step=12)
  assert scalars['top1'] < 91.5 and scalars['best_top1'] == 91.5


def test_knn_with_the_split_itself_as_the_bank_is_perfect():
  # k=1 over the evaluated split itself: each image's nearest neighbour is itself (the mean colours differ).
  config = small_config(12, knn=eval_entry('knn', k=1, num_classes=NUM_CLASSES, train_split='validation'))
  (knn,) = evaluators.build(config, context_for(config, classifier=False))
  scalars, images = knn.run({'params': constant_class_params(0)}, step=4)
  assert scalars == {'top1': 100.0, 'top5': 100.0, 'num_examples': 12} and images == {}


def test_knn_bank_size_is_its_own():
  config = small_config(12, knn=eval_entry('knn', num_examples=-1, num_train=24, k=30, num_classes=NUM_CLASSES))
  (knn,) = evaluators.build(config, context_for(config, classifier=False))
  # With k above the bank size every training image votes; with a zero head the features are the colours.
  scalars, _ = knn.run({'params': constant_class_params(0)}, step=4)
  assert scalars['num_examples'] == 12 and 0.0 <= scalars['top1'] <= scalars['top5'] <= 100.0
  assert knn.train_split == 'train' and knn.options['num_train'] == 24


def test_cadence_defaults_to_eval_every_steps_zero_never_and_always_the_last_step():
  config = small_config(4, knn=eval_entry('knn'), classifier=eval_entry('classifier'))
  config.evals.classifier.every_steps = 3
  config.evals.knn.every_steps = 0
  knn, classifier = evaluators.build(config, context_for(config), names=['knn', 'classifier'])
  assert [s for s in range(1, 11) if classifier.due(s, last_step=10)] == [3, 6, 9, 10]
  assert not any(knn.due(s, last_step=10) for s in range(1, 11))
  config.evals.knn.every_steps = None  # back to config.eval_every_steps (4)
  (knn,) = evaluators.build(config, context_for(config), names=['knn'])
  assert [s for s in range(1, 11) if knn.due(s, last_step=10)] == [4, 8, 10]
  assert knn.prefix == 'knn/' and knn.batch_size == 8 and knn.split == 'validation'


@register('test_row_count')
class RowCount(Evaluator):
  """A new type in a test module: counts the rows of its split, with no change to the loop or the package."""

  OPTIONS = {'scale': 1}

  def run(self, target, step):
    rows = sum(int(np.sum(batch['mask'])) for batch, _, _ in evaluators.base.evaluation_pass(
        self.context, evaluators.variables_of(target), self.split, self.num_examples, self.batch_size, gather=()))
    return {'rows': rows * self.options['scale'], 'step': step}, {}


def test_a_new_type_registers_itself_and_gets_its_prefix():
  config = small_config(10, dense=dict(type='test_row_count', scale=2, prefix='seg_'))
  (dense,) = evaluators.build(config, context_for(config))
  scalars, _ = dense.run({'params': constant_class_params(0)}, step=7)
  assert evaluators.with_prefix(dense, scalars) == {'seg_rows': 20, 'seg_step': 7}


@pytest.mark.parametrize('entry, message', [
    (dict(type='mIoU'), "not an evaluator type; the types are"),
    (dict(type='knn', neighbours=5), r"unknown option\(s\) \['neighbours'\] for type 'knn'"),
    (dict(type='knn', batch_size=-8), 'positive multiple of the number of devices'),
])
def test_bad_entries_say_what_is_wrong(entry, message):
  config = small_config(4, bad=entry)
  with pytest.raises(ValueError, match=message):
    evaluators.build(config, context_for(config))


def test_a_classifier_needs_a_model_with_a_head_and_names_must_exist():
  config = small_config(4, classifier=eval_entry('classifier'))
  with pytest.raises(ValueError, match='needs a model with a classification head'):
    evaluators.build(config, context_for(config, classifier=False))
  with pytest.raises(ValueError, match=r"no evaluator 'knn' in config.evals \(it has \['classifier'\]\)"):
    evaluators.build(config, context_for(config), names=['knn'])


def test_the_evaluate_command_names_evaluators_of_the_config():
  from cast_jax.evaluate.__main__ import evaluate_checkpoint, evaluator_names  # pylint: disable=import-outside-toplevel
  from cast_jax.train.config_lib import load_config_file  # pylint: disable=import-outside-toplevel
  from conftest import REPO_ROOT  # pylint: disable=import-outside-toplevel

  assert evaluator_names('both') == ['knn', 'classifier']
  assert evaluator_names(' knn, hierarchy ,knn') == ['knn', 'hierarchy']
  with pytest.raises(ValueError, match='names no evaluator'):
    evaluator_names(' , ')
  config = load_config_file(REPO_ROOT / 'configs' / 'demo.py:test')  # MoCo: knn and hierarchy, no classifier
  with pytest.raises(ValueError, match=r"\['classifier'\] not in config.evals of this config \(it has"):
    evaluate_checkpoint(config, 'unused.npz', evaluator='both')
