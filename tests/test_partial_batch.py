"""A kept short last batch (PyTorch ``drop_last=False``): each epoch is padded to whole batches with ``mask`` False
rows, and the masked losses equal the original's mean over the real rows (and non-ignored pixels)."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from cast_jax.data.pipeline import PipelineConfig, make_dataset
from cast_jax.data.sources import ListSource
from cast_jax.train import losses, schedules, tasks


def _png(value: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buffer, 'PNG')
  return buffer.getvalue()


def _label(example, rng):
  return {'label': np.int32(example['label']), 'noise': np.float32(rng.random())}


SOURCE = ListSource([{'image': _png(i), 'label': i} for i in range(10)])


def _batches(config, count, index=0, processes=1):
  it = iter(make_dataset(SOURCE, _label, config, index, processes))
  return [next(it) for _ in range(count)]


def test_each_epoch_ends_with_its_short_batch_padded_and_masked():
  batches = _batches(PipelineConfig(batch_size=4, seed=3, pad_last_batch=True), 6)  # 2 epochs of ceil(10/4) = 3
  assert all(b['label'].shape == (4,) and b['mask'].dtype == bool for b in batches)
  assert [int(b['mask'].sum()) for b in batches] == [4, 4, 2] * 2
  epochs = []
  for first in (0, 3):
    rows = [(l, m) for b in batches[first:first + 3] for l, m in zip(b['label'].tolist(), b['mask'].tolist())]
    real = [l for l, m in rows if m]
    assert sorted(real) == list(range(10))  # every record once per epoch, none dropped
    assert [m for _, m in rows] == [True] * 10 + [False] * 2  # the padding is at the end of the epoch
    epochs.append(real)
  assert epochs[0] != epochs[1]  # reshuffled per epoch
  # Without the option the stream runs across epochs in full batches (the trainers' drop_last behaviour).
  plain = _batches(PipelineConfig(batch_size=4, seed=3), 3)
  assert all('mask' not in b for b in plain) and [b['label'].tolist() for b in plain[:2]] == \
      [b['label'].tolist() for b in batches[:2]]


def test_two_processes_read_blocks_of_the_same_padded_global_batches():
  single = _batches(PipelineConfig(batch_size=4, seed=1, pad_last_batch=True), 3)
  shards = [_batches(PipelineConfig(batch_size=2, seed=1, pad_last_batch=True), 3, p, 2) for p in range(2)]
  for k in range(3):
    for key in ('label', 'mask', 'noise'):
      np.testing.assert_array_equal(np.concatenate([shards[0][k][key], shards[1][k][key]]), single[k][key])


def test_the_schedule_counts_the_short_batch():
  schedule = schedules.Schedule.from_lengths(10, 4, 2, partial_last_batch=True)
  assert (schedule.steps_per_epoch, schedule.total_steps) == (3, 6)
  config = ml_collections.ConfigDict({'trainer': 'supervised'})
  with pytest.raises(ValueError, match='supervised trainer drops the short last batch'):
    tasks.build_task(config, None, None, None, schedule)


def _torch_cross_entropy(logits, labels, ignore_index=255):
  """nn.CrossEntropyLoss(ignore_index) on (B, H, W, C) logits, written out in float64."""
  logits = logits.astype(np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  keep = labels != ignore_index
  picked = np.take_along_axis(logp, np.where(keep, labels, 0)[..., None], -1)[..., 0]
  return -picked[keep].sum() / keep.sum()


def test_masked_losses_equal_the_originals_mean_over_the_short_batch():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
  labels = rng.integers(0, 6, (4, 3, 5)).astype(np.int32)
  labels[0, 0, :3] = 255
  mask = np.array([True, True, True, False])
  padded_labels = labels.copy()
  padded_labels[3] = 1  # a padding row with ordinary labels: only the mask keeps it out
  short = _torch_cross_entropy(logits[:3], labels[:3])
  got = jax.jit(losses.cross_entropy_ignore)(logits, padded_labels, 255, mask)
  np.testing.assert_allclose(float(got), short, rtol=1e-6)
  assert abs(float(losses.cross_entropy_ignore(logits, padded_labels)) - short) > 1e-3  # the mask matters
  np.testing.assert_allclose(float(losses.cross_entropy_ignore(logits[:3], labels[:3])), short, rtol=1e-6)

  targets = rng.dirichlet(np.ones(6), 4).astype(np.float32)
  rows = logits[:, 0, 0]
  logp = rows - np.log(np.exp(rows.astype(np.float64)).sum(-1, keepdims=True))
  expected = float(np.mean(-(targets[:3] * logp[:3]).sum(-1)))
  np.testing.assert_allclose(float(jax.jit(losses.soft_cross_entropy)(rows, targets, mask)), expected, rtol=1e-6)
  np.testing.assert_allclose(float(losses.masked_mean(jnp.arange(4.0), mask)), 1.0)
  assert float(losses.masked_mean(jnp.arange(4.0), np.zeros(4, bool))) == 0.0  # an all-padding batch
  with pytest.raises(ValueError, match=r'mask must be \(batch,\) = \(4,\)'):
    losses.masked_mean(jnp.zeros((4, 2)), np.ones(3, bool))
  with pytest.raises(ValueError, match='must share every axis but the last'):
    losses.cross_entropy_ignore(logits, labels[:, 0])
