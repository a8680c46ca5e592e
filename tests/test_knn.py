"""Weighted kNN evaluation: agreement with a brute-force reference, the vote weighting, validation, and
feature extraction with padded batches."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cast_jax.evaluate import knn
from cast_jax.evaluate.knn import extract_features, knn_accuracy, knn_predict


def reference_scores(train, labels, test, num_classes, k, temperature):
  """DINO's kNN scores by brute force in float64, one test row at a time."""
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  test = test / np.linalg.norm(test, axis=1, keepdims=True)
  k = min(k, len(train))
  scores = np.zeros((len(test), num_classes))
  for row, feature in enumerate(test):
    sims = train @ feature
    for neighbour in np.argsort(-sims)[:k]:
      scores[row, labels[neighbour]] += np.exp(sims[neighbour] / temperature)
  return scores


def random_problem(seed, num_train=40, num_test=37, dim=8, num_classes=6):
  rng = np.random.default_rng(seed)
  train = rng.standard_normal((num_train, dim)).astype(np.float32)
  labels = rng.integers(0, num_classes, num_train)
  test = rng.standard_normal((num_test, dim)).astype(np.float32)
  return train, labels, test


@pytest.mark.parametrize('k, temperature, chunk_size', [
    (1, 0.07, 7),  # 37 test rows: 6 chunks, the last one padded
    (5, 0.07, 256),  # one chunk, clipped to the 37 rows
    (20, 0.5, 10),
    (50, 0.03, 13),  # k > N = 40: every train feature votes
])
def test_matches_brute_force_reference(k, temperature, chunk_size):
  train, labels, test = random_problem(seed=k)
  scores = knn_predict(train, labels, test, num_classes=6, k=k, temperature=temperature, chunk_size=chunk_size)
  expected = reference_scores(train.astype(np.float64), labels, test.astype(np.float64), 6, k, temperature)
  assert scores.shape == (37, 6) and scores.dtype == np.float32
  # knn_predict divides each row by exp(max_sim / T) (overflow safety); undo that before comparing.
  test_n = test / np.linalg.norm(test, axis=1, keepdims=True)
  train_n = train / np.linalg.norm(train, axis=1, keepdims=True)
  row_scale = np.exp((test_n @ train_n.T).max(axis=1, keepdims=True) / temperature)
  np.testing.assert_allclose(scores * row_scale, expected, rtol=1e-4)
  np.testing.assert_array_equal(scores.argmax(1), expected.argmax(1))


def test_small_temperature_does_not_overflow():
  train, labels, test = random_problem(seed=3)
  scores = knn_predict(train, labels, test, num_classes=6, k=5, temperature=0.001)
  assert np.all(np.isfinite(scores)) and np.all(scores.max(1) >= 1.0)


def test_separable_clusters_are_classified_perfectly():
  rng = np.random.default_rng(0)
  num_classes, dim = 6, 16
  centres = np.eye(dim)[:num_classes] * 5.0

  def sample(n):
    labels = rng.integers(0, num_classes, n)
    return centres[labels] + 0.1 * rng.standard_normal((n, dim)), labels

  train, train_labels = sample(120)
  test, test_labels = sample(50)
  result = knn_accuracy(train, train_labels, test, test_labels, num_classes, k=10, chunk_size=16)
  assert result == {'top1': 100.0, 'top5': 100.0, 'num_test': 50}


def test_temperature_weighting_beats_majority_vote():
  # The test feature (1, 0) has one class-0 neighbour at cosine 1 and two class-1 neighbours at cosine 0.8;
  # class 2 lies opposite (cosine -1) and is never among the k = 3 neighbours. A majority vote says class 1;
  # with T = 0.07 the near neighbour's weight exp(1/0.07) ~ 1.6e6 outweighs 2 exp(0.8/0.07) ~ 1.9e5.
  train = np.array([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [-1.0, 0.0], [-1.0, 0.01]], np.float32)
  labels = np.array([0, 1, 1, 2, 2])
  test = np.array([[2.0, 0.0]], np.float32)  # normalised inside: its length does not matter

  majority = np.bincount(labels[np.argsort(-(train @ test[0]))[:3]], minlength=3)
  assert majority.argmax() == 1
  assert knn_predict(train, labels, test, num_classes=3, k=3, temperature=0.07).argmax() == 0
  # As T grows the weights flatten towards a plain vote, and the majority wins again.
  assert knn_predict(train, labels, test, num_classes=3, k=3, temperature=100.0).argmax() == 1


def test_accuracy_reports_top5_only_with_five_classes():
  train, labels, test = random_problem(seed=1, num_classes=4)
  test_labels = np.arange(37) % 4
  result = knn_accuracy(train, labels, test, test_labels, num_classes=4)
  assert set(result) == {'top1', 'num_test'} and result['num_test'] == 37
  scores = knn_predict(train, labels, test, num_classes=4)
  assert result['top1'] == pytest.approx(100.0 * np.mean(scores.argmax(1) == test_labels))

  train, labels, test = random_problem(seed=2, num_classes=10)
  result = knn_accuracy(train, labels, test, np.arange(37) % 10, num_classes=10, k=7)
  assert 0.0 <= result['top1'] <= result['top5'] <= 100.0


def test_chunks_share_one_compiled_function(monkeypatch):
  assert hasattr(knn._chunk_scores, 'lower'), '_chunk_scores should be jax.jit-wrapped'
  # Count traces (one per compilation) with the same jit settings around the undecorated function; this
  # needs no private jax API, so it runs on every jax version.
  traces, undecorated = [], knn._chunk_scores.__wrapped__

  def counted(*args, **kwargs):
    traces.append(1)
    return undecorated(*args, **kwargs)

  monkeypatch.setattr(knn, '_chunk_scores', jax.jit(counted, static_argnames=('k', 'num_classes')))
  train, labels, test = random_problem(seed=4, num_train=23, num_test=50, dim=5)
  knn_predict(train, labels, test, num_classes=6, k=4, chunk_size=9)  # 6 chunks, the last padded
  assert len(traces) == 1
  knn_predict(train, labels, test, num_classes=6, k=4, chunk_size=9, temperature=0.2)  # T is traced
  assert len(traces) == 1


@pytest.mark.parametrize('change, message', [
    (dict(train_labels=np.zeros(39, int)), 'train_labels must have shape'),
    (dict(train_labels=np.full(40, 6)), r'must lie in \[0, 6\)'),
    (dict(train_labels=np.full(40, -1)), r'must lie in \[0, 6\)'),
    (dict(train_labels=np.zeros(40, np.float32)), 'must be integers'),
    (dict(train_features=np.zeros((40, 8, 1))), 'train_features must be 2-D'),
    (dict(test_features=np.zeros(8)), 'test_features must be 2-D'),
    (dict(test_features=np.zeros((3, 7))), 'differ in dimension'),
    (dict(train_features=np.zeros((0, 8)), train_labels=np.zeros(0, int)), 'train_features is empty'),
    (dict(k=0), 'k must be >= 1'),
    (dict(temperature=0.0), 'temperature must be > 0'),
    (dict(chunk_size=0), 'chunk_size must be >= 1'),
])
def test_validation_errors(change, message):
  train, labels, test = random_problem(seed=0)
  args = dict(train_features=train, train_labels=labels, test_features=test, num_classes=6)
  args.update(change)
  with pytest.raises(ValueError, match=message):
    knn_predict(**args)


def test_accuracy_validates_test_labels():
  train, labels, test = random_problem(seed=0)
  with pytest.raises(ValueError, match='test_labels must have shape'):
    knn_accuracy(train, labels, test, np.zeros(36, int), num_classes=6)
  with pytest.raises(ValueError, match=r'test_labels must lie in \[0, 6\)'):
    knn_accuracy(train, labels, test, np.full(37, 9), num_classes=6)
  with pytest.raises(ValueError, match='test_features is empty'):
    knn_accuracy(train, labels, test[:0], np.zeros(0, int), num_classes=6)


def fake_apply(image, superpixels):
  """Features that identify the row: its image's first pixel, plus 100 when superpixels were given."""
  feats = image.reshape(image.shape[0], -1)[:, :2].astype(np.float32)
  return feats + (0.0 if superpixels is None else 100.0)


def test_extract_features_drops_padding_rows():
  images = np.arange(5 * 2 * 2).reshape(5, 2, 2)
  batches = [
      dict(image=images[:3], superpixels=np.zeros((3, 2, 2)), label=np.array([0, 1, 2]),
           mask=np.array([True, True, True])),
      # the last batch of an evaluation set, padded to the batch size with copies of row 0
      dict(image=np.concatenate([images[3:], images[:1]]), superpixels=np.zeros((3, 2, 2)),
           label=np.array([3, 4, 0]), mask=np.array([True, True, False])),
  ]
  features, labels = extract_features(fake_apply, batches)
  np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(features[:, 0], images.reshape(5, -1)[:, 0] + 100.0)


def test_extract_features_without_mask_or_superpixels():
  batches = [dict(image=np.ones((2, 3, 3)), label=np.array([1, 0])),
             dict(image=np.ones((2, 3, 3)), label=np.array([5, 5]), mask=np.array([1, 0]))]
  features, labels = extract_features(fake_apply, batches)
  assert features.shape == (3, 2) and np.all(features == 1.0)  # no superpixels: no +100
  np.testing.assert_array_equal(labels, [1, 0, 5])


@pytest.mark.parametrize('batch, message', [
    (dict(image=np.ones((2, 3)), label=np.array([0, 1]), mask=np.array([True])), r"'mask'\] must have shape"),
    (dict(image=np.ones((2, 3)), label=np.array([0, 1]), mask=np.array([0.5, 1.0])), 'must be boolean'),
    (dict(image=np.ones((2, 3)), label=np.array([[0, 1]])), "'label' must be 1-D"),
    (dict(image=np.ones((2, 3)), label=np.array([0.0, 1.0])), 'integer class ids'),
    (dict(image=np.ones((3, 3)), label=np.array([0, 1])), r'apply_fn must return \(2, D\)'),
])
def test_extract_features_validation(batch, message):
  with pytest.raises(ValueError, match=message):
    extract_features(fake_apply, [batch])
  with pytest.raises(ValueError, match='no batches'):
    extract_features(fake_apply, [])
