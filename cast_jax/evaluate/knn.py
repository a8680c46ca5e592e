"""Weighted k-nearest-neighbour classification of frozen features, as DINO evaluates them.

    features, labels = extract_features(lambda image, sp: model_fn(image, sp), train_batches)
    test_features, test_labels = extract_features(..., test_batches)
    knn_accuracy(features, labels, test_features, test_labels, num_classes=1000)   # {'top1': .., 'top5': ..}

Every feature is L2-normalised; a test feature's neighbours are the k train features of highest cosine
similarity, and each neighbour votes for its class with weight exp(similarity / T). The predicted class is
the one with the largest summed weight.

The similarity matrix of the whole test set would take M x N floats (50k x 1.28M for ImageNet: 256 GB), so
test rows go through in chunks of a fixed size; the last chunk is padded so that every call of the jitted
chunk function has the same shapes and it compiles once. Memory is O(chunk_size x N).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cast_jax.models.layers import l2_normalize


@functools.partial(jax.jit, static_argnames=('k', 'num_classes'))
def _chunk_scores(test_chunk, train_features, train_labels, temperature, *, k: int, num_classes: int):
  """Summed neighbour votes of one chunk of test rows.

  Args:
    test_chunk: (C, D) float, not normalised.
    train_features: (N, D) float, already L2-normalised.
    train_labels: (N,) int32 in [0, num_classes).
    temperature: scalar float > 0 (traced, so changing it does not recompile).
    k: number of neighbours, 1 <= k <= N.
    num_classes: length of the score vectors.

  Returns:
    (C, num_classes) float32 scores: DINO's sum of exp(sim / T) over the k neighbours of each class,
    times exp(-max_sim / T) of the row (see ``knn_predict``).
  """
  test_chunk = l2_normalize(test_chunk)
  # HIGHEST: on TPU (and with TF32 on GPU) the default matmul rounds inputs to ~bf16, enough to swap
  # neighbours whose similarities differ in the third digit.
  sims = jnp.matmul(test_chunk, train_features.T, precision=jax.lax.Precision.HIGHEST)  # (C, N)
  top_sims, top_index = jax.lax.top_k(sims, k)  # (C, k), sorted descending
  # exp(sim / T) overflows float32 once sim / T > 88 (T < 0.0114 at sim = 1). Dividing a row by the weight
  # of its nearest neighbour keeps every weight in (0, 1] and leaves the ranking of classes unchanged.
  weights = jnp.exp((top_sims - top_sims[:, :1]) / temperature)  # (C, k)
  votes = jax.nn.one_hot(train_labels[top_index], num_classes, dtype=weights.dtype)  # (C, k, num_classes)
  return jnp.einsum('ck,ckn->cn', weights, votes, precision=jax.lax.Precision.HIGHEST)


def _as_features(name: str, x) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f'{name} must be 2-D (rows, dim); got shape {x.shape}')
  if x.dtype.kind not in 'fiub':
    raise ValueError(f'{name} must be numeric; got dtype {x.dtype}')
  return x.astype(np.float32, copy=False)


def _as_labels(name: str, labels, num_rows: int, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != num_rows:
    raise ValueError(f'{name} must have shape ({num_rows},) to match the features; got {labels.shape}')
  if labels.dtype.kind not in 'iu':
    raise ValueError(f'{name} must be integers; got dtype {labels.dtype}')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{name} must lie in [0, {num_classes}); got values in [{labels.min()}, {labels.max()}]')
  return labels.astype(np.int32)


def knn_predict(train_features, train_labels, test_features, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk_size: int = 256) -> np.ndarray:
  """Weighted kNN class scores of every test feature.

  Args:
    train_features: (N, D) float, N >= 1; normalised here.
    train_labels: (N,) int in [0, num_classes).
    test_features: (M, D) float; normalised here.
    num_classes: number of classes.
    k: neighbours per test row. Clipped to N: with fewer train features than k, every train feature is a
      neighbour, which is what "the k nearest" can mean then (``lax.top_k`` cannot return more than N).
    temperature: T of the exp(sim / T) vote weights; smaller T leans harder on the nearest neighbours.
    chunk_size: test rows per jitted call (clipped to M); bounds memory at about chunk_size x N floats.

  Returns:
    (M, num_classes) float32 numpy scores. Row m is DINO's score vector (sum over m's neighbours of
    class c of exp(sim / T)) divided by exp(s / T), s = m's largest similarity: a positive factor per row,
    so argmax and top-5 are DINO's, and no T > 0 overflows.
  """
  train = _as_features('train_features', train_features)
  test = _as_features('test_features', test_features)
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1; got {num_classes}')
  if train.shape[0] == 0:
    raise ValueError('train_features is empty: kNN needs at least one train feature')
  if train.shape[1] != test.shape[1]:
    raise ValueError(f'train and test features differ in dimension: {train.shape[1]} vs {test.shape[1]}')
  labels = _as_labels('train_labels', train_labels, train.shape[0], num_classes)
  if k < 1:
    raise ValueError(f'k must be >= 1; got {k}')
  if not temperature > 0:
    raise ValueError(f'temperature must be > 0; got {temperature}')
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1; got {chunk_size}')

  num_test = test.shape[0]
  if num_test == 0:
    return np.zeros((0, num_classes), np.float32)
  k = min(k, train.shape[0])
  chunk = min(chunk_size, num_test)
  padded = -(-num_test // chunk) * chunk
  # Zero rows normalise to zero vectors: harmless, and their scores are dropped below.
  test = np.pad(test, ((0, padded - num_test), (0, 0)))

  train_dev = l2_normalize(jnp.asarray(train))  # normalised once, reused by every chunk
  labels_dev = jnp.asarray(labels)
  temperature = jnp.float32(temperature)
  scores = [
      _chunk_scores(test[start:start + chunk], train_dev, labels_dev, temperature, k=k, num_classes=num_classes)
      for start in range(0, padded, chunk)
  ]
  # Dispatch is asynchronous: gather only after every chunk is queued.
  return np.concatenate([np.asarray(s) for s in scores])[:num_test]


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int, k: int = 20,
                 temperature: float = 0.07, chunk_size: int = 256) -> dict:
  """Top-1 (and top-5 when num_classes >= 5) accuracy in percent of ``knn_predict``'s scores.

  Args: as ``knn_predict``, plus test_labels (M,) int in [0, num_classes), M >= 1.

  Returns:
    {'top1': float, 'top5': float (only when num_classes >= 5), 'num_test': M}. Ties between classes go to
    the lower class index.
  """
  test = _as_features('test_features', test_features)
  if test.shape[0] == 0:
    raise ValueError('test_features is empty: accuracy needs at least one test feature')
  labels = _as_labels('test_labels', test_labels, test.shape[0], num_classes)
  scores = knn_predict(train_features, train_labels, test, num_classes, k=k, temperature=temperature,
                       chunk_size=chunk_size)
  return {**topk_accuracy(scores, labels), 'num_test': int(test.shape[0])}


def topk_accuracy(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Top-1 (and top-5 with >= 5 classes) accuracy in percent of (M, C) class scores against (M,) labels."""
  # A stable sort of -scores puts the lower index first among equal scores, as argmax does.
  ranked = np.argsort(-np.asarray(scores), axis=1, kind='stable')
  result = {'top1': float(np.mean(ranked[:, 0] == labels) * 100.0)}
  if ranked.shape[1] >= 5:
    result['top5'] = float(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1)) * 100.0)
  return result


def _valid_rows(mask, batch_size: int) -> np.ndarray:
  """The boolean (B,) row mask of a batch; integer or float masks must hold only 0 and 1."""
  mask = np.asarray(mask)
  if mask.shape != (batch_size,):
    raise ValueError(f"batch['mask'] must have shape ({batch_size},); got {mask.shape}")
  if mask.dtype != np.bool_:
    if mask.dtype.kind not in 'iuf' or not np.all((mask == 0) | (mask == 1)):
      raise ValueError(f"batch['mask'] must be boolean (or 0/1); got dtype {mask.dtype}")
    mask = mask.astype(bool)
  return mask


def extract_features(apply_fn: Callable[[Any, Optional[Any]], Any],
                     batches: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of every valid row of ``batches``.

  Args:
    apply_fn: ``apply_fn(image, superpixels) -> (B, D)`` features of one batch; ``superpixels`` is None for
      batches without that key. It sees the whole batch, padding included, so its shapes stay static.
    batches: dicts with 'image' (B, ...), 'label' (B,) int, optionally 'superpixels' (B, ...) and
      'mask' (B,) bool, True for real rows. Rows whose mask is False (the padding that completes the last
      batch of an evaluation set) are dropped; without a mask every row counts.

  Returns:
    (features (M, D) numpy in apply_fn's dtype, labels (M,) int64), M = number of valid rows.
  """
  features, labels = [], []
  for index, batch in enumerate(batches):
    label = np.asarray(batch['label'])
    if label.ndim != 1 or label.dtype.kind not in 'iu':
      raise ValueError(f"batch {index}: 'label' must be 1-D (B,) integer class ids; got {label.dtype} "
                       f'{label.shape}')
    feats = np.asarray(apply_fn(batch['image'], batch.get('superpixels')))
    if feats.ndim != 2 or feats.shape[0] != label.shape[0]:
      raise ValueError(f'batch {index}: apply_fn must return ({label.shape[0]}, D) features; got {feats.shape}')
    if 'mask' in batch:
      keep = _valid_rows(batch['mask'], label.shape[0])
      feats, label = feats[keep], label[keep]
    features.append(feats)
    labels.append(label.astype(np.int64))
  if not features:
    raise ValueError('extract_features got no batches')
  return np.concatenate(features), np.concatenate(labels)
