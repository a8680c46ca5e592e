"""SPML pieces without fixtures: the chunked (and sharded) top-k, votes, majority labels, the loss reductions, the
benchmark counts and the errors on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax.evaluate import spml_retrieval as sr
from cast_jax.models.spml import classifier_from_torch, spml_loss


def _unit(rng, shape):
  x = rng.standard_normal(shape).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_chunked_topk_equals_a_full_sort_and_never_returns_padding():
  rng = np.random.default_rng(0)
  protos, labels = _unit(rng, (53, 8)), rng.integers(0, 5, 53)
  memory = sr.Memory(protos, labels, chunk=16, top_k=20)
  assert memory.prototypes.shape[0] == 64 and memory.size == 53 and memory.valid.sum() == 53
  queries = _unit(rng, (7, 8))
  values, got = sr.topk_labels(jnp.asarray(queries), memory.prototypes, memory.labels, memory.valid, k=20, chunk=16)
  sims = queries @ protos.T
  order = np.argsort(-sims, axis=1)[:, :20]
  np.testing.assert_allclose(np.asarray(values), np.take_along_axis(sims, order, 1), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got), labels[order])
  # Padding rows hold zero vectors (similarity 0): with all-negative similarities they would win if not masked.
  neg = sr.Memory(-np.abs(protos), labels, chunk=16)
  _, got = sr.topk_labels(jnp.asarray(np.abs(queries)), neg.prototypes, neg.labels, neg.valid, k=20, chunk=16)
  assert (np.asarray(got) >= 0).all()


def test_sharded_topk_over_four_host_devices_matches_one_device():
  code = textwrap.dedent("""
      import numpy as np, jax
      from cast_jax.evaluate import spml_retrieval as sr
      assert len(jax.devices()) == 4
      rng = np.random.default_rng(1)
      p = rng.standard_normal((90, 6)).astype(np.float32); p /= np.linalg.norm(p, axis=1, keepdims=True)
      q = p[:5] + 0.1
      labels = rng.integers(0, 4, 90)
      mesh = jax.sharding.Mesh(np.array(jax.devices()), ('memory',))
      sharded = sr.Memory(p, labels, chunk=8, multiple_of=4)
      assert sharded.prototypes.shape[0] % 32 == 0
      pred, lab, val = sr.retrieve(q, sharded, 4, mesh=mesh)
      ref = sr.retrieve(q, sr.Memory(p, labels, chunk=8), 4)
      np.testing.assert_array_equal(np.asarray(lab), np.asarray(ref[1]))
      np.testing.assert_array_equal(np.asarray(pred), np.asarray(ref[0]))
      np.testing.assert_allclose(np.asarray(val), np.asarray(ref[2]), atol=1e-6)
      print('OK')
  """)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]


def test_votes_and_majority_labels_break_ties_to_the_smaller_label():
  pred, margin = sr.majority_vote(jnp.asarray([[2, 1, 2, 1], [3, 3, 0, 1]]), 4)
  assert np.asarray(pred).tolist() == [1, 3] and np.asarray(margin).tolist() == [0, 1]
  level4 = jnp.asarray([[0, 0, 1, 1], [2, 2, 2, 0]])
  labels = jnp.asarray([[3, 255, 255, 255], [1, 2, 255, 3]])
  got = sr.majority_labels(level4, labels, num_segments=4, num_classes=4)
  # seg 0: {3, 255, 3} -> 3; seg 1: {255, 255} -> 255; seg 2: {1, 2, 255} tie -> 1; seg 3: empty -> 0.
  assert np.asarray(got).tolist() == [3, 255, 1, 0]
  emb = jnp.asarray(_unit(np.random.default_rng(0), (2, 4, 3)))
  protos, present = sr.segment_prototypes(emb, level4, num_segments=4)
  assert np.asarray(present).tolist() == [True, True, True, False]
  want = np.asarray(emb[1, 0] + emb[1, 1] + emb[1, 2])
  np.testing.assert_allclose(np.asarray(protos[2]), want / np.linalg.norm(want), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(protos[3]), 0.0)


def test_benchmark_counts_and_miou():
  gt = np.array([[0, 1, 1, 255], [2, 2, 7, 0]])
  pred = np.array([[0, 1, 2, 1], [2, 0, 1, 0]])
  tp_fn, tp_fp, tp = sr.iou_counts(pred, gt, 3)
  assert tp_fn.tolist() == [2, 2, 2] and tp_fp.tolist() == [3, 1, 2] and tp.tolist() == [2, 1, 1]
  iou, miou, acc = sr.miou_from_counts(tp_fn, tp_fp, tp)
  np.testing.assert_allclose(iou, [200 / 3, 50, 100 / 3], rtol=1e-9)
  np.testing.assert_allclose(miou, (200 / 3 + 50 + 100 / 3) / 3, rtol=1e-9)
  np.testing.assert_allclose(acc, 4 / 6, rtol=1e-9)


def test_bad_input_is_refused_with_a_clear_message():
  with pytest.raises(ValueError, match=r'label ids \[21\] are outside \[0, 21\)'):
    sr.check_labels(np.array([[0, 21, 255]]), 21)
  with pytest.raises(ValueError, match='no label map'):
    sr.check_labels(None, 21, 'train/2007_000032.jpg')
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match='memory is empty'):
    sr.Memory(_unit(rng, (5, 4)), np.full(5, 255))
  with pytest.raises(ValueError, match='fewer than top_k=20'):
    sr.Memory(_unit(rng, (19, 4)), np.zeros(19))
  with pytest.raises(ValueError, match='multiple of chunk=16'):
    sr.topk_labels(jnp.zeros((2, 4)), jnp.zeros((40, 4)), jnp.zeros(40, jnp.int32), jnp.ones(40, bool), k=20, chunk=16)
  with pytest.raises(ValueError, match='missing'):
    classifier_from_torch({'semantic_classifier.0.weight': np.zeros((4, 4, 1, 1))})


def test_loss_ignores_255_and_ids_beyond_the_classes_and_offers_the_per_gpu_mean():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((4, 2, 2, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, (4, 4, 4)))
  labels = labels.at[0, 0, 0].set(255).at[1, 1, 1].set(7).at[2].set(255)
  loss = jax.jit(spml_loss, static_argnums=(2, 3, 4))
  from cast_jax.models.spml import resize_logits
  logp = np.asarray(jax.nn.log_softmax(resize_logits(logits, (4, 4)), -1))
  lab = np.asarray(labels)
  valid = lab < 3
  per = -np.take_along_axis(logp, np.where(valid, lab, 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss(logits, labels, 3, 'global', 1), per[valid].mean(), rtol=1e-5)
  # Two "GPUs" of two images: the mean of the per-part means (the empty part 2 of image 2 weighs like the rest).
  parts = [per[:2][valid[:2]].mean(), per[2:][valid[2:]].mean()]
  np.testing.assert_allclose(loss(logits, labels, 3, 'per_group_mean', 2), np.mean(parts), rtol=1e-5)
  assert abs(np.mean(parts) - per[valid].mean()) > 1e-3  # the two reductions differ: the test tells them apart
  with pytest.raises(ValueError, match='divisible'):
    spml_loss(logits, labels, 3, 'per_group_mean', 3)
