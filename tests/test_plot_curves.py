"""The curve plot reads metrics.jsonl like the trainer writes it and draws each run's line where it belongs."""

import json

import numpy as np
import pytest

from cast_jax import plot_curves


def _write_run(folder, records):
  folder.mkdir()
  (folder / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in records) + '\n')
  return folder


def test_read_curve_sorts_steps_and_keeps_the_last_value_of_a_repeated_step(tmp_path):
  run = _write_run(tmp_path / 'run', [{'step': 0, 'knn/top1': 10.0}, {'step': 20, 'loss': 3.0},
                                      {'step': 40, 'knn/top1': 30.0}, {'step': 40, 'knn/top1': 35.0},
                                      {'step': 20, 'knn/top1': 20.0}])
  steps, values = plot_curves.read_curve(run, 'knn/top1')
  np.testing.assert_array_equal(steps, [0, 20, 40])
  np.testing.assert_array_equal(values, [10.0, 20.0, 35.0])


def test_missing_metric_and_missing_folder_say_what_is_wrong(tmp_path):
  run = _write_run(tmp_path / 'run', [{'step': 0, 'loss': 1.0}])
  with pytest.raises(ValueError, match="no 'knn/top1'"):
    plot_curves.read_curve(run, 'knn/top1')
  with pytest.raises(FileNotFoundError, match='metrics.jsonl'):
    plot_curves.read_curve(tmp_path / 'nowhere', 'loss')


def test_plot_draws_a_rising_line_rising_and_in_its_colour(tmp_path):
  steps = np.array([0, 100, 200])
  picture = plot_curves.plot([('up', steps, np.array([0.0, 50.0, 100.0]))], size=(400, 300))
  assert picture.shape == (300, 400, 3) and picture.dtype == np.uint8
  colour = np.array(plot_curves.COLOURS[0])
  ys, xs = np.nonzero(np.all(picture == colour, axis=-1))
  inside = xs > 64 + 40  # leave out the legend's sample line in the top left corner
  # The line goes up to the right: pixels further right sit higher (smaller row index).
  assert np.corrcoef(xs[inside], ys[inside])[0, 1] < -0.95


def test_main_writes_a_png_with_two_runs(tmp_path):
  a = _write_run(tmp_path / 'a', [{'step': s, 'knn/top1': 10.0 + s / 10} for s in (0, 100, 200)])
  b = _write_run(tmp_path / 'b', [{'step': s, 'knn/top1': 12.0} for s in (0, 100, 200)])
  out = tmp_path / 'plot.png'
  plot_curves.main(['--run', f'cast={a}', '--run', f'vit={b}', '--metric', 'knn/top1', '--out', str(out),
                    '--reference', '12.5'])
  from PIL import Image
  picture = np.asarray(Image.open(out))
  for colour in plot_curves.COLOURS[:2]:
    assert np.all(picture == np.array(colour), axis=-1).sum() > 50
  with pytest.raises(SystemExit, match='NAME=RUN_FOLDER'):
    plot_curves.main(['--run', str(a), '--metric', 'loss', '--out', str(out)])


def test_progress_axis_ends_runs_of_different_lengths_at_the_same_x(tmp_path):
  """``--x progress``: a 100-step and a 300-step run both end at x = 1, at the plot's right edge."""
  short = _write_run(tmp_path / 'short', [{'step': s, 'knn/top1': 20.0} for s in (0, 50, 100)])
  long = _write_run(tmp_path / 'long', [{'step': s, 'knn/top1': 80.0} for s in (0, 150, 300)]
                    + [{'step': 300, 'loss': 1.0}])
  assert plot_curves.last_step(long) == 300
  out = tmp_path / 'progress.png'
  plot_curves.main(['--run', f'short={short}', '--run', f'long={long}', '--metric', 'knn/top1', '--x', 'progress',
                    '--out', str(out)])
  from PIL import Image  # pylint: disable=import-outside-toplevel
  picture = np.asarray(Image.open(out).convert('RGB'))
  right_edges = []
  for colour in plot_curves.COLOURS[:2]:
    ys, xs = np.nonzero(np.all(picture == np.array(colour), axis=-1))
    right_edges.append(xs.max())
  assert abs(right_edges[0] - right_edges[1]) <= 1, right_edges
  # Plotted against steps instead, the short run would end a third of the way along.
  plot_curves.main(['--run', f'short={short}', '--run', f'long={long}', '--metric', 'knn/top1', '--out', str(out)])
  picture = np.asarray(Image.open(out).convert('RGB'))
  ys, xs = np.nonzero(np.all(picture == np.array(plot_curves.COLOURS[0]), axis=-1))
  assert xs.max() < right_edges[1] - 200
