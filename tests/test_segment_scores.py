import numpy as np
import pytest

from cast_jax.evaluate.segment_scores import SegmentScore, majority_relabel


def test_majority_relabel_and_miou_by_hand():
  truth = np.array([[0, 0, 1, 1],
                    [0, 0, 1, 1]])
  segments = np.array([[5, 5, 5, 7],
                       [5, 5, 7, 7]])  # segment 5: three 0s and one 1 -> 0; segment 7: all 1
  np.testing.assert_array_equal(majority_relabel(segments, truth, 2), [[0, 0, 0, 1], [0, 0, 1, 1]])
  score = SegmentScore(2)
  score.update(segments, truth)
  # class 0: tp 4, union 5; class 1: tp 3, union 4
  assert score.miou() == pytest.approx((4 / 5 + 3 / 4) / 2 * 100)
  perfect = SegmentScore(2)
  perfect.update(np.arange(8).reshape(2, 4), truth)  # one segment per pixel
  assert perfect.miou() == 100.0
  single = SegmentScore(2)
  single.update(np.zeros((2, 4), int), truth)  # one segment: all pixels become the majority (tie -> 0)
  assert single.miou() == pytest.approx((4 / 8 + 0) / 2 * 100)


def test_errors():
  with pytest.raises(ValueError, match='same shape'):
    majority_relabel(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)
  with pytest.raises(ValueError, match=r'\[0, 2\)'):
    majority_relabel(np.zeros((2, 2), int), np.full((2, 2), 2), 2)
  with pytest.raises(ValueError, match='no pixels'):
    SegmentScore(3).miou()


def test_kmeans_separates_clear_clusters():
  from cast_jax.evaluate.score_hierarchy import kmeans

  rng = np.random.default_rng(0)
  centres = np.eye(4) * 5
  points = np.concatenate([c + 0.1 * rng.standard_normal((10, 4)) for c in centres])
  ids = kmeans(points, 4, seed=1)
  groups = ids.reshape(4, 10)
  assert all(len(set(g)) == 1 for g in groups) and len(set(groups[:, 0])) == 4


def test_score_hierarchy_on_a_converted_checkpoint(tmp_path):
  """CAST's levels and the superpixels scored on two PartWorld images (the golden plain-CAST MoCo weights)."""
  from cast_jax import convert
  from cast_jax.evaluate.score_hierarchy import score
  from conftest import checkpoint_path, golden_folder, load_meta, require_golden, spec_from_meta

  require_golden()
  folder = golden_folder('moco', seg_arch=False)
  meta = load_meta(folder)
  conversion = convert.convert_checkpoint(checkpoint_path(folder), spec=spec_from_meta(meta))
  path = tmp_path / 'converted.npz'
  convert.save_converted(conversion, path)
  rows = {r['segments']: r for r in score(str(path), None, num_images=2, num_segments=None, seed=0)}
  levels = [f'cast_level{l} ({k})' for l, k in enumerate(meta['num_clusters'], start=1)]
  assert list(rows) == ['superpixels'] + levels
  for row in rows.values():
    assert 0 < row['object_miou'] <= 100 and 0 < row['part_miou'] <= 100 and row['num_images'] == 2
  # The superpixels (num_superpixels of them) fit the masks better than the coarsest level's few segments.
  assert meta['num_superpixels'] > meta['num_clusters'][-1]
  assert rows['superpixels']['part_miou'] > rows[levels[-1]]['part_miou']


def test_score_hierarchy_renders_with_the_runs_palette(tmp_path):
  """A run trained on palette='class' is scored on images of that palette; a .npz on the default 'random'."""
  import json

  from cast_jax.evaluate.score_hierarchy import run_palette

  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps({'data': {'palette': 'class'}}))
  assert run_palette(str(run)) == 'class'
  (run / 'config.json').write_text(json.dumps({'data': {}}))  # a run from before the option
  assert run_palette(str(run)) == 'random'
  assert run_palette(str(tmp_path / 'converted.npz')) == 'random'
