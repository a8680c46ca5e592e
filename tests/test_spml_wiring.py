"""``train_and_evaluate`` in this process on ``configs/spml_demo.py:test``: the spml_finetune trainer, SPML's
augmentation, its SGD groups on ``lr_poly`` and the spml_miou evaluator wired together (as
tests/test_seg_wiring.py for the Segmenter); then the pieces around it: the two loss reductions, the start from a
COCO-style MoCo ``cast_seg_pretrain`` checkpoint, and the retrieval config.

The :test shrink trains 6 steps of 8 on 48 PartWorld images (3 warm-up steps) and scores the 6 validation images
before training and at the end.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax import loading
from cast_jax.evaluate.__main__ import evaluate_checkpoint
from cast_jax.models.spml import spml_loss
from cast_jax.models.variants import ModelSpec, build_model
from cast_jax.train import loop, optim, schedules, spml_finetune, spml_step, tasks
from cast_jax.train.config_lib import load_config_file
from conftest import REPO_ROOT

EVALUATED = {'miou/miou', 'miou/pixel_acc', 'miou/num_examples'}


def spml_test_config():
  """The demo's :test size with SPML's own optimizer (the demo itself trains AdamW over the same groups)."""
  config = load_config_file(REPO_ROOT / 'configs' / 'spml_demo.py:test')
  config.optimizer, config.base_lr = 'spml_sgd', 1e-2
  return config


def leaves(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def random_variables(model, seed: int):
  """The model's variable tree (from shapes only: nothing is compiled or run) filled with N(0, 1) values."""
  shapes = jax.eval_shape(lambda: model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
                                             jnp.zeros((2, 64, 64, 3)), jnp.zeros((2, 64, 64), jnp.int32)))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(workdir, last metrics) of the :test run with the step-0 evaluation; shared by the tests below."""
  config = spml_test_config()
  config.eval_at_start = True
  workdir = tmp_path_factory.mktemp('spml') / 'run'
  return workdir, loop.train_and_evaluate(config, workdir)


def evaluations_of(workdir):
  logged = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return logged, [r for r in logged if 'miou/miou' in r]


def test_spml_finetune_trains_with_frozen_tables_and_reports_miou(trained):
  config = spml_test_config()
  assert config.trainer == 'spml_finetune' and config.model.spml_classes == 9
  assert (config.loss_reduction, config.loss_groups, config.warmup_steps) == ('per_group_mean', 4, 3)
  workdir, last = trained
  logged, evaluations = evaluations_of(workdir)
  losses = [r['loss'] for r in logged if 'loss' in r]
  assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
  assert losses[-1] < losses[0]  # the classifier at x10 / x20 learns the background prior within 6 steps
  # lr_poly over max_iteration 6 with 3 warm-up steps: min(base (0.1 (1 - k/3) + k/3), base (1 - k/6)^0.9).
  base = config.base_lr
  want = [min(base * (0.1 * (1 - k / 3) + k / 3), base * (1 - k / 6) ** 0.9) if k < 3 else base * (1 - k / 6) ** 0.9
          for k in range(6)]
  np.testing.assert_allclose([r['lr'] for r in logged if 'lr' in r], want, rtol=1e-6)
  assert [r['step'] for r in evaluations] == [0, 6]
  for evaluation in evaluations:
    assert set(evaluation) - {'step'} == EVALUATED
    assert 0.0 <= evaluation['miou/miou'] <= 100.0 and 0.0 < evaluation['miou/pixel_acc'] <= 100.0
    assert evaluation['miou/num_examples'] == 6
  assert last['miou/miou'] == evaluations[-1]['miou/miou']

  # cls_token (in no group) and the sin-cos tables never move; every other parameter does.
  spec = loop.model_spec(config)
  start = leaves(loop.initial_variables(config, spec, build_model(spec))['params'])
  saved_spec, saved = loading.load_variables(workdir)
  assert saved_spec.spml_classes == 9 and saved_spec.kind == 'cast_seg'
  end = leaves(saved['params'])
  assert set(start) == set(end)
  frozen = {name for name in start if name.split('/')[-1] in ('cls_token', 'pos_embed', 'pe_token')}
  assert {'encoder/cls_token', 'encoder/pos_embed'} <= frozen
  for name in frozen:
    np.testing.assert_array_equal(end[name], start[name], err_msg=name)
  moved = [name for name in start if name not in frozen and not np.array_equal(start[name], end[name])]
  assert len(moved) >= 0.9 * (len(start) - len(frozen)), sorted(set(start) - set(moved) - frozen)
  assert any(name.startswith('classifier/') for name in moved)



@pytest.mark.slow
def test_the_evaluate_command_scores_the_run_folder_as_the_run(trained):
  """Slow (the evaluation compiles again: ~17 s CPU, 194 s wall on the loaded 2-core machine it was measured on):
  python -m cast_jax.evaluate on the run folder gives the same numbers as the run's last evaluation."""
  workdir, _ = trained
  _, evaluations = evaluations_of(workdir)
  scalars, _ = evaluate_checkpoint(spml_test_config(), str(workdir), 'miou')
  assert scalars == {k: evaluations[-1][k] for k in EVALUATED}


def test_the_two_loss_reductions():
  """per_group_mean: the mean of each group's mean over its valid pixels (the original's 4 GPUs); global: the
  mean over every valid pixel. Rows with different numbers of valid pixels tell them apart."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((4, 2, 2, 3)), jnp.float32)
  labels = np.zeros((4, 2, 2), np.int32)
  labels[0] = [[0, 1], [2, 255]]  # 3 valid pixels
  labels[1] = [[1, 255], [255, 255]]  # 1 valid
  labels[2] = [[2, 2], [0, 7]]  # 7 >= n_cls: ignored like 255 -> 3 valid
  labels[3] = [[1, 0], [1, 0]]  # 4 valid
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  per_pixel = [[-logp[b, y, x, labels[b, y, x]] for y in range(2) for x in range(2) if labels[b, y, x] < 3]
               for b in range(4)]
  want_global = np.sum(np.concatenate(per_pixel)) / 11
  group_means = [np.mean(per_pixel[0] + per_pixel[1]), np.mean(per_pixel[2] + per_pixel[3])]
  np.testing.assert_allclose(spml_loss(logits, labels, 3, 'global'), want_global, rtol=1e-6)
  np.testing.assert_allclose(spml_loss(logits, labels, 3, 'per_group_mean', groups=2), np.mean(group_means),
                             rtol=1e-6)
  np.testing.assert_allclose(spml_loss(logits, labels, 3, 'per_group_mean', groups=4),
                             np.mean([np.mean(p) for p in per_pixel]), rtol=1e-6)
  assert abs(np.mean(group_means) - want_global) > 1e-3  # the example does separate them
  # One group is the global mean.
  np.testing.assert_allclose(spml_loss(logits, labels, 3, 'per_group_mean', groups=1), want_global, rtol=1e-6)


def test_the_config_chooses_the_reduction_and_bad_choices_fail_early():
  config = spml_test_config()
  spec = loop.model_spec(config)
  schedule = schedules.Schedule(6, 6)
  config.loss_reduction = 'mean'
  with pytest.raises(ValueError, match="choose one of \\('per_group_mean', 'global'\\)"):
    tasks.build_task(config, spec, None, None, schedule)
  config.loss_reduction, config.loss_groups = 'per_group_mean', 3
  with pytest.raises(ValueError, match='batch 8 into config.loss_groups=3'):
    tasks.build_task(config, spec, None, None, schedule)
  config.partial_last_batch = True
  with pytest.raises(ValueError, match='drops the short last batch'):
    tasks.build_task(config, spec, None, None, schedules.Schedule(6, 6, partial_last_batch=True))
  # The VOC recipe keeps the original's reduction.
  voc = load_config_file(REPO_ROOT / 'configs' / 'spml_cast_s_voc_finetune.py')
  assert (voc.loss_reduction, voc.loss_groups, voc.batch_size, voc.total_steps) == ('per_group_mean', 4, 16, 30000)
  assert (voc.base_lr, voc.momentum, voc.weight_decay, voc.warmup_steps, voc.seed) == (3e-3, 0.9, 1e-4, 100, 235)
  assert (voc.model.kind, voc.model.image_size, voc.model.spml_classes) == ('cast_seg', 512, 21)


def test_adamw_keeps_spmls_groups_frozen_tables_and_schedule_under_jit():
  """``config.optimizer='adamw'``: AdamW's first update is lr x mult x sign(grad) per element (m / sqrt(v) = +-1),
  so each group moves by its own multiple (x1 / x2 / x10 / x20) of the schedule's rate; cls_token and the tables stay."""
  config = spml_test_config()
  spec = loop.model_spec(config)
  params = random_variables(build_model(spec), seed=0)['params']
  lr0, wd = 1e-3, 1e-4
  optimizer, lr_fn = spml_step.spml_optimizer(params, spec, lr0, 100, warmup_iteration=0, weight_decay=wd,
                                              kind='adamw')
  grads = jax.tree_util.tree_map(lambda p: jnp.ones_like(p), params)

  @jax.jit
  def step(params, grads):
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return updates

  updates = leaves(step(params, grads))
  start = leaves(params)
  labels = leaves(optim.group_labels(params, optim.spml_group_rule()))
  mults = {'backbone_weight': (1.0, wd), 'backbone_bias': (2.0, 0.0), 'classifier_weight': (10.0, wd),
           'classifier_bias': (20.0, 0.0)}
  lr = float(lr_fn(0))
  assert lr == pytest.approx(lr0)
  seen = set()
  for name, update in updates.items():
    if name.split('/')[-1] in ('cls_token', 'pos_embed', 'pe_token'):
      np.testing.assert_array_equal(update, 0.0, err_msg=name)
      continue
    mult, decay = mults[str(labels[name])]
    seen.add(str(labels[name]))
    want = -lr * mult * (1.0 + decay * start[name])  # the Adam step plus the decoupled decay lr x mult x wd x p
    np.testing.assert_allclose(update, want, rtol=1e-4, atol=1e-9, err_msg=name)
  assert seen == set(mults)
  with pytest.raises(ValueError, match="config.optimizer must be one of \\('spml_sgd', 'adamw'\\)"):
    spml_step.spml_optimizer(params, spec, lr0, 100, kind='sgd')


def test_the_start_from_a_moco_cast_seg_pretrain_checkpoint(tmp_path):
  """The encoder of a (tiny, random) COCO-style MoCo ``cast_seg_pretrain`` checkpoint goes into the encoder, its
  28x28 table resampled to the model's grid; the projector is dropped; the classifier starts as PyTorch's."""
  from cast_jax.convert import Conversion, save_converted

  config = spml_test_config()
  spec = loop.model_spec(config)
  size = 224  # the pretrain stage's 28x28 grid
  source = ModelSpec(kind='cast_seg_pretrain', moco=True, embed_dim=spec.embed_dim, depth=spec.depth,
                     num_heads=spec.num_heads, num_clusters=spec.num_clusters, max_segments=spec.max_segments,
                     image_size=size, moco_dim=16, moco_mlp_dim=32)
  moco = random_variables(build_model(source), 1)
  save_converted(Conversion(source, dict(moco), [], {}), tmp_path / 'moco.npz')
  fresh = random_variables(build_model(spec), 0)
  config.init_checkpoint = str(tmp_path / 'moco.npz')
  started = tasks.starting_variables(config, spec, fresh)

  got, want = leaves(started['params']['encoder']), leaves(moco['params']['encoder'])
  assert set(got) == set(want)
  for name, value in got.items():
    if name == 'pos_embed':
      assert want[name].shape[1] == 28 * 28 and value.shape[1] == (spec.image_size // 8) ** 2
      np.testing.assert_allclose(value, loading.resample_position_table(want[name], value.shape), atol=1e-6)
    else:
      np.testing.assert_array_equal(value, want[name], err_msg=name)
  classifier = started['params']['classifier']
  hidden = classifier['semantic_classifier_0']['kernel']
  assert hidden.shape == (1, 1, spec.embed_dim, spec.embed_dim)
  bound = 1 / math.sqrt(spec.embed_dim)
  assert np.abs(hidden).max() <= bound and np.abs(hidden).max() > 0.8 * bound
  assert np.abs(classifier['semantic_classifier_3']['bias']).max() <= bound
  np.testing.assert_array_equal(classifier['semantic_classifier_1']['scale'], 1.0)
  np.testing.assert_array_equal(started['batch_stats']['classifier']['semantic_classifier_1']['var'], 1.0)
  # An SPML model itself is not an encoder to start from.
  with pytest.raises(ValueError, match='already holds an SPML model'):
    spml_finetune.start_spml(fresh, spec, spec, fresh)


def test_the_retrieval_config_gives_the_commands_defaults():
  from cast_jax.evaluate import spml_retrieval_main as cli

  path = REPO_ROOT / 'configs' / 'spml_cast_s_voc_retrieval.py'
  config = load_config_file(path)
  assert 'python -m cast_jax.evaluate.spml_retrieval_main --config=configs/spml_cast_s_voc_retrieval.py' in \
      config_doc(path)
  assert (config.num_classes, config.top_k, config.test_image_size, config.num_superpixels) == (21, 20, 512, 1024)
  args = cli.parse_args([f'--config={path}', '--checkpoint=c.npz', '--data_dir=d', '--memory_list=m.txt',
                         '--query_list=q.txt', '--top_k=5'])
  assert (args.checkpoint, args.top_k, args.num_classes, args.max_segments) == ('c.npz', 5, 21, 1024)
  with pytest.raises(SystemExit):  # argparse's error: the four paths are required one way or the other
    cli.parse_args([f'--config={path}', '--checkpoint=c.npz'])
  with pytest.raises(ValueError, match='no ":test" form'):
    load_config_file(f'{path}:test')


def config_doc(path) -> str:
  import importlib.util

  module_spec = importlib.util.spec_from_file_location('retrieval_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.__doc__
