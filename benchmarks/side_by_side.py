r"""cast_jax and the original PyTorch CAST timed in alternation, so a shared machine's slow phases fall on both.

    python benchmarks/side_by_side.py --cast-repo /path/to/CAST --torch-python /tmp/torchenv/bin/python \
        --only train_step --only deit_train_step --only forward --rounds 3

Each round runs ``python -m cast_jax.benchmark`` and ``benchmarks/original_pytorch.py`` once each, with the same
``--only``, ``--batch`` and ``--repeats`` (the original with ``--threads``), in the order AB, BA, AB, ... Each
process prints one JSON line per measurement (images per second after a warm-up step); this script pairs them
by round and prints, per measurement, every round's images/s on both sides, each round's ratio and the median
ratio (README "Speed"). ``--torch-python`` is an interpreter with torch and timm 0.4.12 (not a dependency of
cast_jax); the original's checkout is ``--cast-repo``. ``--cpu-devices 1 --cpu-devices 2`` times cast_jax once per
count in every round (``cast_jax.benchmark --cpu-devices``: the CPU as that many devices, the step data
parallel); the side of a count other than 1 is named ``cast_jax_cpu_devices_<n>``. ``--without-hugepages`` adds,
for each count, a side run with ``CAST_JAX_MALLOC_HUGEPAGES=0`` (``<side>_no_hugepages``: glibc's 4 KiB pages
for XLA's buffers, ``cast_jax.malloc_hugepages``); ``--original-hugepages`` adds the original run with the same
glibc tunable (``original_hugepages``), to show what the tunable alone does to it. Ratios are always against
the original as it ships.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
from typing import Optional

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent


def parse_results(stdout: str) -> dict[str, float]:
  """{measurement name: images per second} from a benchmark's JSON lines; other lines are ignored."""
  results = {}
  for line in stdout.splitlines():
    line = line.strip()
    if not line.startswith('{'):
      continue
    row = json.loads(line)
    if 'name' in row and 'images_per_s' in row:
      results[row['name']] = float(row['images_per_s'])
  return results


def cast_side(cpu_devices: int) -> str:
  return 'cast_jax' if cpu_devices == 1 else f'cast_jax_cpu_devices_{cpu_devices}'


NO_HUGEPAGES = {'CAST_JAX_MALLOC_HUGEPAGES': '0'}
HUGEPAGES = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}


def commands(args) -> dict[str, tuple[list[str], dict[str, str]]]:
  """{side: (command, environment variables it gets on top of this process's)}."""
  only = [flag for name in args.only for flag in ('--only', name)]
  common = ['--batch', str(args.batch), '--repeats', str(args.repeats)]
  ours = {}
  for count in getattr(args, 'cpu_devices', None) or [1]:
    devices = [] if count == 1 else ['--cpu-devices', str(count)]
    command = [sys.executable, '-m', 'cast_jax.benchmark', *only, *common, *devices]
    ours[cast_side(count)] = (command, {})
    if getattr(args, 'without_hugepages', False):
      ours[f'{cast_side(count)}_no_hugepages'] = (command, NO_HUGEPAGES)
  original = [args.torch_python, str(HERE / 'original_pytorch.py'), '--cast-repo', args.cast_repo, *only,
              *common, '--threads', str(args.threads)]
  sides = {**ours, 'original': (original, {})}
  if getattr(args, 'original_hugepages', False):
    sides['original_hugepages'] = (original, HUGEPAGES)
  return sides


def run(command: list[str], extra_env: Optional[dict[str, str]] = None) -> dict[str, float]:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
  env.update(extra_env or {})
  done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
  if done.returncode != 0:
    raise RuntimeError(f'{" ".join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}')
  return parse_results(done.stdout)


def summarize(rounds: list[dict[str, dict[str, float]]]) -> list[dict]:
  """Per cast_jax side and measurement: each round's images/s on that side and the original's, each round's
  ratio (cast_jax / original), the median."""
  rows = []
  for side in [side for side in rounds[0] if side != 'original']:
    for name in [name for name in rounds[0][side] if name in rounds[0]['original']]:
      ours = [r[side][name] for r in rounds]
      theirs = [r['original'][name] for r in rounds]
      ratios = [a / b for a, b in zip(ours, theirs)]
      row = {'name': name} if side == 'cast_jax' else {'name': name, 'side': side}
      rows.append({**row, f'{side}_images_per_s': ours, 'original_images_per_s': theirs,
                   'ratios': [round(r, 3) for r in ratios], 'median_ratio': round(statistics.median(ratios), 3)})
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--cast-repo', required=True, help='checkout of github.com/twke18/CAST')
  parser.add_argument('--torch-python', required=True, help='a Python with torch and timm 0.4.12')
  parser.add_argument('--only', action='append', default=None,
                      help='measurements both scripts have (forward, train_step, deit_train_step, ...); repeatable')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2, help="the original's torch.set_num_threads")
  parser.add_argument('--cpu-devices', type=int, action='append', default=None,
                      help='cast_jax.benchmark --cpu-devices; repeat to time several counts each round (default 1)')
  parser.add_argument('--without-hugepages', action='store_true',
                      help='also time cast_jax with CAST_JAX_MALLOC_HUGEPAGES=0 (4 KiB pages for its buffers)')
  parser.add_argument('--original-hugepages', action='store_true',
                      help="also time the original with GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
  args = parser.parse_args(argv)
  args.only = args.only or ['train_step']
  if args.rounds < 1:
    parser.error('--rounds must be at least 1')
  order = list(commands(args).items())
  rounds = []
  for index in range(args.rounds):
    results = {}
    for side, (command, extra_env) in (order if index % 2 == 0 else order[::-1]):
      results[side] = run(command, extra_env)
      print(json.dumps({'round': index + 1, 'side': side, **results[side]}), flush=True)
    rounds.append(results)
  for row in summarize(rounds):
    print(json.dumps(row), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
