"""Farthest point sampling with DGL's ``farthest_point_sampler`` semantics.

The original calls ``dgl.geometry.farthest_point_sampler(points, K + 1, start_idx=0)`` on float64 points. Per
batch element it starts from index 0, keeps for every point the squared Euclidean distance to the nearest
point picked so far, and next picks the point with the largest such distance; on ties the lowest index wins
(DGL scans with a strict '>'). ``jnp.argmax`` returns the first maximum, so the tie rule carries over.

Distances are taken as a sum of squared differences, never through |a|^2 + |b|^2 - 2ab, so float32 keeps
the relative precision needed to reproduce the original's picks (float64 is used when x64 is enabled).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def farthest_point_sampling(points, num_samples: int, start_index: int = 0):
  """Indices of ``num_samples`` points picked by farthest point sampling.

  Args:
    points: (B, N, C) float. Not differentiated (the picks are discrete).
    num_samples: static number of picks, including the start point; at most N.
    start_index: the first pick of every batch element.

  Returns:
    (B, num_samples) int32, in pick order; column 0 is ``start_index``.
  """
  batch, num_points, _ = points.shape
  if num_samples > num_points:
    raise ValueError(f'cannot sample {num_samples} points from {num_points}')
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  points = jax.lax.stop_gradient(points).astype(dtype)

  def sq_dist_to(index):
    picked = jnp.take_along_axis(points, index[:, None, None], axis=1)  # (B, 1, C)
    return jnp.sum(jnp.square(points - picked), axis=-1)  # (B, N)

  first = jnp.full((batch,), start_index, jnp.int32)
  picks = jnp.zeros((batch, num_samples), jnp.int32).at[:, 0].set(first)
  min_dist = jnp.full((batch, num_points), jnp.inf, dtype)

  def step(t, carry):
    picks, min_dist = carry
    min_dist = jnp.minimum(min_dist, sq_dist_to(picks[:, t - 1]))
    nxt = jnp.argmax(min_dist, axis=-1).astype(jnp.int32)
    return picks.at[:, t].set(nxt), min_dist

  picks, _ = jax.lax.fori_loop(1, num_samples, step, (picks, min_dist))
  return picks
