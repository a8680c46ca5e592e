"""benchmarks/side_by_side.py: alternating the two benchmark processes and pairing their results by round."""

import importlib.util
import json
import sys

import pytest

from conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location('side_by_side', REPO_ROOT / 'benchmarks' / 'side_by_side.py')
side_by_side = importlib.util.module_from_spec(spec)
spec.loader.exec_module(side_by_side)


def test_results_are_paired_by_round_in_alternating_order(monkeypatch, capsys):
  calls = []

  def fake_commands(args):  # each "benchmark" prints a log line and one JSON line; the original is half as fast
    out = {}
    for side, rate in (('cast_jax', 4.0), ('original', 2.0)):
      program = (f"import json; print('compiling...'); "
                 f"print(json.dumps({{'name': 'train_step', 'images_per_s': {rate}, 'batch': {args.batch}}}))")
      out[side] = [sys.executable, '-c', program]
    return out

  real_run = side_by_side.run
  monkeypatch.setattr(side_by_side, 'commands', fake_commands)
  monkeypatch.setattr(side_by_side, 'run', lambda command: calls.append(command[-1]) or real_run(command))
  assert side_by_side.main(['--cast-repo', 'CAST', '--torch-python', sys.executable, '--rounds', '3']) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r['round'], r['side']) for r in lines[:6]] == [
      (1, 'cast_jax'), (1, 'original'), (2, 'original'), (2, 'cast_jax'), (3, 'cast_jax'), (3, 'original')]
  summary = lines[6]
  assert summary == {'name': 'train_step', 'cast_jax_images_per_s': [4.0] * 3, 'original_images_per_s': [2.0] * 3,
                     'ratios': [2.0] * 3, 'median_ratio': 2.0}
  assert len(calls) == 6


def test_the_two_commands_share_the_measurement_flags():
  args = side_by_side.argparse.Namespace(only=['forward', 'train_step'], batch=8, repeats=2, threads=2,
                                         torch_python='/venv/python', cast_repo='/src/CAST')
  ours, theirs = side_by_side.commands(args).values()
  assert ours[1:] == ['-m', 'cast_jax.benchmark', '--only', 'forward', '--only', 'train_step', '--batch', '8',
                      '--repeats', '2']
  assert theirs[0] == '/venv/python' and theirs[-2:] == ['--threads', '2']
  assert theirs[2:] == ['--cast-repo', '/src/CAST', '--only', 'forward', '--only', 'train_step', '--batch', '8',
                        '--repeats', '2', '--threads', '2']


def test_a_failing_benchmark_process_is_an_error_with_its_stderr():
  with pytest.raises(RuntimeError, match=r'failed \(3\):\nno torch here'):
    side_by_side.run([sys.executable, '-c', "import sys; sys.stderr.write('no torch here'); sys.exit(3)"])
