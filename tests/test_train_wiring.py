"""``train_and_evaluate`` in this process on every trainer's ``:test`` config (as flax's
examples/imagenet/train_test.py): the loop, the task, the evaluators of ``config.evals`` and the run folder
wired together, without the subprocess tests' command line (tests/test_trainer.py keeps those: resume,
devices, processes).

The linear probe starts from the MoCo run's workdir, as a user's probe starts from their pretraining.
"""

from __future__ import annotations

import json
import math
import pathlib

import pytest

from cast_jax.train import loop
from cast_jax.train.config_lib import load_config_file
from conftest import REPO_ROOT


def test_config(name: str):
  return load_config_file(REPO_ROOT / 'configs' / f'{name}.py:test')


test_config.__test__ = False  # a helper, not a test


def records(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def check_run(workdir: pathlib.Path, last: dict, evaluated: set[str], eval_steps=(6,)) -> dict:
  """Six finite losses, evaluations at ``eval_steps`` (the last one at the last step) holding exactly
  ``evaluated``; returns the last one."""
  logged = records(workdir)
  losses = [r['loss'] for r in logged if 'loss' in r]
  assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
  assert math.isfinite(last['loss']) and last['loss'] == losses[-1]
  evaluations = [r for r in logged if set(r) - {'step'} and all('/' in k for k in set(r) - {'step'})]
  assert [r['step'] for r in evaluations] == list(eval_steps), 'evaluations at eval_steps (eval_every_steps=6)'
  assert all(set(evaluation) - {'step'} == evaluated for evaluation in evaluations)
  assert {k: last[k] for k in evaluated} == {k: evaluations[-1][k] for k in evaluated}
  assert (workdir / 'config.json').is_file()
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['4', '6']
  return evaluations[-1]


@pytest.fixture(scope='module')
def moco_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('moco')
  config = test_config('demo')
  config.eval_at_start = True  # as the demo itself: the untrained network is evaluated first
  return workdir, loop.train_and_evaluate(config, workdir)


def test_moco_trains_and_runs_knn_and_pictures(moco_run):
  workdir, last = moco_run
  evaluation = check_run(workdir, last, {'knn/top1', 'knn/top5', 'knn/num_examples'}, eval_steps=(0, 6))
  assert 0.0 <= evaluation['knn/top1'] <= evaluation['knn/top5'] <= 100.0
  assert evaluation['knn/num_examples'] == 16  # the whole validation split of the :test shrink
  assert sorted(p.name for p in (workdir / 'pictures').iterdir()) == ['hierarchy_first_batch_0000000.png',
                                                                      'hierarchy_first_batch_0000006.png']


def test_supervised_trains_and_runs_classifier_its_ema_knn_and_pictures(tmp_path):
  workdir = tmp_path / 'deit'
  last = loop.train_and_evaluate(test_config('deit_demo'), workdir)
  evaluation = check_run(workdir, last, {
      'knn/top1', 'knn/top5', 'knn/num_examples',
      'classifier/top1', 'classifier/top5', 'classifier/best_top1', 'classifier/num_examples',
      'classifier_ema/top1', 'classifier_ema/top5', 'classifier_ema/best_top1', 'classifier_ema/num_examples'})
  for name in ('classifier', 'classifier_ema'):
    assert 0.0 <= evaluation[f'{name}/top1'] <= evaluation[f'{name}/top5'] <= 100.0
    assert evaluation[f'{name}/best_top1'] == evaluation[f'{name}/top1']  # the first evaluation is the best
    assert evaluation[f'{name}/num_examples'] == 16
  assert (workdir / 'pictures' / 'hierarchy_first_batch_0000006.png').is_file()


def test_linear_probe_from_the_moco_workdir(moco_run, tmp_path):
  source, _ = moco_run
  config = test_config('lincls_demo')
  config.init_checkpoint = str(source)
  workdir = tmp_path / 'probe'
  last = loop.train_and_evaluate(config, workdir)
  evaluation = check_run(workdir, last, {'classifier/top1', 'classifier/top5', 'classifier/best_top1',
                                         'classifier/num_examples'})  # its kNN runs only on demand
  assert 0.0 <= evaluation['classifier/top1'] <= evaluation['classifier/best_top1'] <= 100.0
  assert evaluation['classifier/num_examples'] == 16
  assert not (workdir / 'pictures').exists()  # the probe draws none
  # Resumed (from the step-6 checkpoint) for two more steps, the probe's best top-1 counts the evaluations
  # logged up to the checkpoint, not those after it: add a better one at step 3 and a lost one at step 7.
  with (workdir / 'metrics.jsonl').open('a') as f:
    f.write(json.dumps({'step': 3, 'classifier/top1': 93.75}) + '\n')
    f.write(json.dumps({'step': 7, 'classifier/top1': 100.0}) + '\n')
  config.total_steps = 8
  resumed = loop.train_and_evaluate(config, workdir)
  assert resumed['classifier/top1'] < 93.75
  assert resumed['classifier/best_top1'] == 93.75
  assert [r['step'] for r in records(workdir) if 'classifier/top1' in r] == [6, 3, 7, 8]
