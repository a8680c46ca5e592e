"""cast_jax.superpixels.quality on synthetic maps whose scores are known by hand, and its command on PartWorld."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cast_jax.superpixels import quality


def _halves(height: int, width: int, column: int) -> np.ndarray:
  labels = np.zeros((height, width), np.int32)
  labels[:, column:] = 1
  return labels


def test_perfect_map_scores_perfectly():
  truth = _halves(20, 30, 12)
  truth[3:8, 20:25] = 2
  assert quality.boundary_recall(truth, truth) == 1.0
  assert quality.undersegmentation_error(truth, truth) == 0.0
  assert quality.achievable_accuracy(truth, truth) == 1.0
  assert quality.fragments(truth) == 1.0


def test_one_segment_over_two_halves():
  truth = _halves(10, 10, 5)
  one = np.zeros((10, 10), np.int32)
  # Each half leaks min(50, 50) = 50 pixels: (50 + 50) / 100.
  assert quality.undersegmentation_error(one, truth) == 1.0
  assert quality.boundary_recall(one, truth) == 0.0
  assert quality.achievable_accuracy(one, truth) == 0.5


def test_undersegmentation_counts_the_smaller_side():
  truth = _halves(10, 10, 5)  # 50 | 50
  sp = _halves(10, 10, 7)  # segment 0 covers 70 pixels: 50 of truth 0, 20 of truth 1
  # truth 0: S0 leaks min(50, 20) = 20. truth 1: S0 min(20, 50) = 20, S1 min(30, 0) = 0. Total 40 / 100.
  assert quality.undersegmentation_error(sp, truth) == pytest.approx(0.4)
  assert quality.achievable_accuracy(sp, truth) == pytest.approx(0.8)


@pytest.mark.parametrize('shift,expected', [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.5), (4, 0.0), (-2, 1.0),
                                            (-3, 0.5), (-4, 0.0)])
def test_boundary_recall_tolerance(shift, expected):
  """Truth edge between columns 9|10 (boundary pixels 9 and 10); superpixel edge moved by ``shift`` columns. At
  shift 3 its pixels are 12 and 13: column 10 is 2 px away, column 9 is 3 px away, so half the truth is found."""
  truth = _halves(16, 24, 10)
  sp = _halves(16, 24, 10 + shift)
  assert quality.boundary_recall(sp, truth, tolerance=2) == expected


def test_boundary_recall_partial():
  truth = _halves(10, 20, 10)
  sp = np.zeros((10, 20), np.int32)
  # The vertical edge exists in rows 0..3; the horizontal one (pixels in rows 3 and 4) reaches rows 5 and 6 within
  # 2 px: truth rows 0..6 of 10 are found.
  sp[:4, 10:] = 1
  assert quality.boundary_recall(sp, truth, tolerance=2) == pytest.approx(7 / 10)


def test_fragments_counts_disconnected_pieces():
  sp = np.zeros((6, 6), np.int32)
  sp[:, 2:4] = 1  # id 0 in two pieces (left and right of id 1)
  assert quality.fragments(sp) == pytest.approx(3 / 2)


def test_shape_mismatch_is_refused():
  with pytest.raises(ValueError, match='differ in shape'):
    quality.undersegmentation_error(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))


def test_command_on_partworld(capsys):
  assert quality.main(['--num-images', '2', '--settings', '64:16']) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [row['method'] for row in rows] == ['seeds', 'skimage_slic', 'jax_slic', 'jax_slic_unconnected']
  for row in rows:
    assert 0.5 < row['boundary_recall'] <= 1.0 and 0.0 <= row['undersegmentation_error'] < 0.5
    assert 1 <= row['segments'] <= 16 and row['fragments'] >= 1.0
  assert rows[1]['fragments'] == rows[2]['fragments'] == 1.0  # both SLICs enforce connectivity
