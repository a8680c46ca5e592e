"""Scores of unsupervised segments against ground-truth masks: majority labelling, then mIoU.

Each segment takes the most frequent ground-truth class among its pixels; the relabelled map is compared
with the ground truth through a confusion matrix accumulated over images, and the IoU is averaged over the
classes present in the ground truth. More segments can only score higher under this rule (one segment per
pixel is perfect), so compare levels with the same number of segments, e.g. against k-means baselines.
"""

from __future__ import annotations

import numpy as np


def majority_relabel(segments: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
  """segments, truth: (H, W) int -> (H, W) int: each segment painted with its majority true class."""
  segments = np.asarray(segments)
  truth = np.asarray(truth)
  if segments.shape != truth.shape:
    raise ValueError(f'segments {segments.shape} and ground truth {truth.shape} must have the same shape')
  if truth.min() < 0 or truth.max() >= num_classes:
    raise ValueError(f'ground-truth classes must be in [0, {num_classes}); got [{truth.min()}, {truth.max()}]')
  ids, dense = np.unique(segments, return_inverse=True)
  counts = np.zeros((len(ids), num_classes), np.int64)
  np.add.at(counts, (dense.ravel(), truth.ravel()), 1)
  return counts.argmax(axis=1)[dense].reshape(truth.shape)


class SegmentScore:
  """Accumulates the confusion matrix of majority-relabelled segments over images."""

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.confusion = np.zeros((num_classes, num_classes), np.int64)

  def update(self, segments: np.ndarray, truth: np.ndarray) -> None:
    predicted = majority_relabel(segments, truth, self.num_classes)
    np.add.at(self.confusion, (np.asarray(truth).ravel(), predicted.ravel()), 1)

  def miou(self) -> float:
    """Mean IoU in percent over the classes that occur in the ground truth."""
    tp = np.diag(self.confusion).astype(np.float64)
    union = self.confusion.sum(0) + self.confusion.sum(1) - tp
    present = self.confusion.sum(1) > 0
    if not present.any():
      raise ValueError('no pixels scored yet')
    return float(np.mean(tp[present] / union[present]) * 100)
