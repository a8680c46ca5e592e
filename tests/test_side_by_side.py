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
      out[side] = ([sys.executable, '-c', program], {})
    return out

  real_run = side_by_side.run
  monkeypatch.setattr(side_by_side, 'commands', fake_commands)
  monkeypatch.setattr(side_by_side, 'run',
                      lambda command, env: calls.append(command[-1]) or real_run(command, env))
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
  (ours, our_env), (theirs, their_env) = side_by_side.commands(args).values()
  assert our_env == {} and their_env == {}
  assert ours[1:] == ['-m', 'cast_jax.benchmark', '--only', 'forward', '--only', 'train_step', '--batch', '8',
                      '--repeats', '2']
  assert theirs[0] == '/venv/python' and theirs[-2:] == ['--threads', '2']
  assert theirs[2:] == ['--cast-repo', '/src/CAST', '--only', 'forward', '--only', 'train_step', '--batch', '8',
                        '--repeats', '2', '--threads', '2']


def test_hugepage_sides_differ_only_in_their_environment():
  args = side_by_side.argparse.Namespace(only=['train_step'], batch=8, repeats=2, threads=2, cpu_devices=[1, 2],
                                         torch_python='/venv/python', cast_repo='/src/CAST',
                                         without_hugepages=True, original_hugepages=True)
  sides = side_by_side.commands(args)
  assert list(sides) == ['cast_jax', 'cast_jax_no_hugepages', 'cast_jax_cpu_devices_2',
                         'cast_jax_cpu_devices_2_no_hugepages', 'original', 'original_hugepages']
  assert sides['cast_jax_no_hugepages'] == (sides['cast_jax'][0], {'CAST_JAX_MALLOC_HUGEPAGES': '0'})
  assert sides['cast_jax_cpu_devices_2_no_hugepages'][0][-2:] == ['--cpu-devices', '2']
  assert sides['original_hugepages'] == (sides['original'][0], {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'})


def test_the_extra_environment_reaches_the_benchmark_process():
  program = "import json, os; print(json.dumps({'name': 'x', 'images_per_s': float(os.environ['RATE'])}))"
  assert side_by_side.run([sys.executable, '-c', program], {'RATE': '2.5'}) == {'x': 2.5}


def test_a_failing_benchmark_process_is_an_error_with_its_stderr():
  with pytest.raises(RuntimeError, match=r'failed \(3\):\nno torch here'):
    side_by_side.run([sys.executable, '-c', "import sys; sys.stderr.write('no torch here'); sys.exit(3)"])
