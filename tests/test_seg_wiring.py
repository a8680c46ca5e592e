"""``train_and_evaluate`` in this process on ``configs/seg_demo.py:test``: the segmentation trainer, the mIoU
evaluator and the run folder wired together (as tests/test_train_wiring.py for the other trainers).

The :test shrink trains 6 steps of 8 on 44 PartWorld images, so the 6th batch is the epoch's short one (4 real
rows, 4 padding rows whose labels are all ignored); mIoU is measured on all 6 validation images before training
and at the end. The second run starts from a ``cast_deit`` workdir (the supervised demo's :test run), as the
original starts from the DeiT checkpoint.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cast_jax.evaluate.__main__ import evaluate_checkpoint
from cast_jax.train import loop
from cast_jax.train.config_lib import load_config_file
from conftest import REPO_ROOT

EVALUATED = {'miou/miou', 'miou/macc', 'miou/aacc', 'miou/num_examples'}


def seg_test_config():
  return load_config_file(REPO_ROOT / 'configs' / 'seg_demo.py:test')


def records(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def check(workdir, last):
  logged = records(workdir)
  losses = [r['loss'] for r in logged if 'loss' in r]
  assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
  # The polynomial rate stepped every update over iter_max = 6 (= ceil(44 / 8) x 1 epoch): step k used
  # (base - min)(1 - k / 6)^0.9 + min.
  config = seg_test_config()
  expected = [(config.base_lr - config.min_lr) * (1 - k / 6) ** 0.9 + config.min_lr for k in range(6)]
  np.testing.assert_allclose([r['lr'] for r in logged if 'lr' in r], expected, rtol=1e-6)
  evaluations = [r for r in logged if 'miou/miou' in r]
  assert [r['step'] for r in evaluations] == [0, 6]
  for evaluation in evaluations:
    assert set(evaluation) - {'step'} == EVALUATED
    assert 0.0 <= evaluation['miou/miou'] <= 100.0 and 0.0 <= evaluation['miou/aacc'] <= 100.0
    assert evaluation['miou/num_examples'] == 6
  assert last['miou/miou'] == evaluations[-1]['miou/miou']
  return evaluations


def test_segmentation_trains_from_scratch_and_reports_miou(tmp_path):
  config = seg_test_config()
  assert config.trainer == 'segmentation' and config.partial_last_batch
  config.eval_at_start = True
  evaluations = check(tmp_path / 'seg', loop.train_and_evaluate(config, tmp_path / 'seg'))
  # python -m cast_jax.evaluate on the run folder: the same mIoU as the run's last evaluation.
  scalars, _ = evaluate_checkpoint(seg_test_config(), str(tmp_path / 'seg'), 'miou')
  assert scalars == {k: evaluations[-1][k] for k in EVALUATED}


@pytest.mark.slow
def test_segmentation_starts_from_a_deit_workdir(tmp_path, capsys):
  """Slow (two short runs, ~1 min): the DeiT demo's :test run, then the Segmenter from its workdir."""
  deit = load_config_file(REPO_ROOT / 'configs' / 'deit_demo.py:test')
  loop.train_and_evaluate(deit, tmp_path / 'deit')
  config = seg_test_config()
  config.init_checkpoint = str(tmp_path / 'deit')
  config.eval_at_start = True
  check(tmp_path / 'seg', loop.train_and_evaluate(config, tmp_path / 'seg'))
  out = capsys.readouterr().out
  assert 'initialised the encoder from' in out
  kept = out.split('kept fresh:')[1].splitlines()[0]
  assert 'block_fusion' in kept and 'decoder' in kept and 'encoder/blocks' not in kept


def test_short_last_batch_is_padded_with_ignored_rows():
  """Batch 6 of the :test epoch (44 = 5 x 8 + 4) has 4 padding rows: all-255 label maps, so the jitted loss of
  the padded batch equals the loss of its 4 real rows alone."""
  import jax

  from cast_jax.models.variants import ModelSpec
  from cast_jax.train import inputs, tasks
  from cast_jax.train.segmentation import masked_cross_entropy

  config = seg_test_config()
  spec = ModelSpec.from_config(config.model.to_dict())
  iterator = inputs.train_iterator(config.data, tasks.segmentation_train_recipe(config.data, spec), 8, config.seed,
                                   0, 1, partial_last_batch=True)
  batches = [next(iterator) for _ in range(6)]
  assert all(b['mask'].all() for b in batches[:5])
  last = batches[5]
  np.testing.assert_array_equal(last['mask'], [True] * 4 + [False] * 4)
  assert (last['label_map'][4:] == 255).all() and (last['label_map'][:4] != 255).any()
  assert last['label_map'].shape == (8, 64, 64) and last['superpixels'].shape == (8, 64, 64)
  logits = np.random.default_rng(0).standard_normal((8, 64, 64, 9)).astype(np.float32)
  loss = jax.jit(masked_cross_entropy, static_argnums=2)
  np.testing.assert_allclose(loss(logits, last['label_map'], 9), loss(logits[:4], last['label_map'][:4], 9),
                             rtol=1e-6)
