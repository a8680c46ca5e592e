"""The MoCo step's agreement metrics (pos_cos, neg_cos, key_spread), which tell a loss falling because views
are matched apart from a loss falling because the keys collapse."""

from __future__ import annotations

import jax
import numpy as np

from cast_jax.train.moco import agreement_metrics

metrics = jax.jit(agreement_metrics)


def test_matched_orthogonal_views_give_cosine_one_to_the_positive_and_zero_to_the_rest():
  keys = np.eye(8, dtype=np.float32)[:4] * 3.0  # 4 orthogonal keys in 8 dimensions; length does not matter
  out = {k: float(v) for k, v in metrics(keys, keys, keys, keys).items()}
  assert abs(out['pos_cos'] - 1) < 1e-6 and abs(out['neg_cos']) < 1e-6
  # sqrt(8) x mean over dimensions of the batch std: 4 dims hold one 1 and three 0 (std sqrt(3) / 4), 4 are 0.
  assert abs(out['key_spread'] - np.sqrt(8) * (4 * np.sqrt(3) / 4) / 8) < 1e-6


def test_queries_are_paired_with_the_other_views_keys():
  rng = np.random.default_rng(0)
  k1, k2 = rng.normal(size=(2, 16, 32)).astype(np.float32)
  # q1 matches k2 exactly, q2 points away from k1: the mean over both directions is (1 + -1) / 2.
  out = metrics(k2, -k1, k1, k2)
  assert abs(float(out['pos_cos'])) < 1e-6
  out = metrics(k2, k1, k1, k2)
  assert abs(float(out['pos_cos']) - 1) < 1e-6
  assert abs(float(out['neg_cos'])) < 0.1  # random directions in 32 dimensions


def test_collapsed_keys_have_no_spread():
  same = np.tile(np.arange(1, 9, dtype=np.float32), (6, 1))
  out = metrics(same, same, same, same)
  assert abs(float(out['key_spread'])) < 1e-6
  assert abs(float(out['neg_cos']) - 1) < 1e-6 and abs(float(out['pos_cos']) - 1) < 1e-6
