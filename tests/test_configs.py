"""Every config in configs/: it loads, its docstring opens with its command, it builds a valid model, and
its ``:test`` form builds the tiny model (shapes only, nothing compiled)."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import pytest

from cast_jax.models.variants import build_model
from cast_jax.train.loop import model_spec
from cast_jax.train.schedules import Schedule
from conftest import REPO_ROOT

# Retrieval configs (``*_retrieval.py``) train nothing: they are the defaults of spml_retrieval_main
# (tests/test_spml_wiring.py checks them).
CONFIGS = sorted(p.stem for p in (REPO_ROOT / 'configs').glob('*.py') if not p.stem.endswith('_retrieval'))


def load(name):
  spec = importlib.util.spec_from_file_location(name, REPO_ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_recipe_of_the_issue_has_a_config():
  assert {'moco_cast_s', 'moco_cast_sd', 'moco_cast_b', 'moco_vit_s', 'moco_vit_b', 'moco_cast_s_in100',
          'moco_cast_seg_s_coco', 'demo', 'deit_cast_s', 'deit_cast_b', 'lincls_cast_s'} <= set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds(name):
  module = load(name)
  assert f'python -m cast_jax.main --config=configs/{name}.py' in module.__doc__.split('\n\n')[1]
  full = module.get_config()
  spec = model_spec(full)
  assert full.batch_size % 8 == 0 and full.num_epochs > full.warmup_epochs >= 0
  if name.startswith('lincls_') and not name.endswith('demo'):
    assert full.base_lr in (30.0, 0.8)
  if name.startswith('moco_') and name != 'moco_cast_s_in100' and 'coco' not in name:
    assert (full.num_epochs, full.warmup_epochs, full.base_lr, full.weight_decay) == (100, 10, 1.5e-4, 0.1)
    assert (full.batch_size, full.temperature, full.momentum) == (256, 0.2, 0.99)
  assert spec.moco == (full.trainer == 'moco')
  if full.trainer == 'supervised':
    assert (full.base_lr, full.weight_decay, full.label_smoothing, full.warmup_epochs) == (5e-4, 0.05, 0.1, 5) \
        or name.endswith('demo')
  if full.trainer == 'linear_probe':
    assert full.weight_decay == 0.0 and full.num_epochs == 90 or name.endswith('demo')
  tiny = module.get_config('test')
  tiny_spec = model_spec(tiny)
  assert tiny_spec.kind == spec.kind
  assert Schedule.from_config(tiny, 64).total_steps <= 10
  model = build_model(tiny_spec)
  size = tiny_spec.image_size
  shapes = jax.eval_shape(lambda x, s: model.init(jax.random.PRNGKey(0), x, s),
                          jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32),
                          jax.ShapeDtypeStruct((2, size, size), jnp.int32))
  assert 'params' in shapes
  with pytest.raises(ValueError, match='test'):
    module.get_config('tset')


def test_load_config_file_reads_a_command_line_config_name(tmp_path):
  from cast_jax.train.config_lib import load_config_file  # pylint: disable=import-outside-toplevel

  assert load_config_file(REPO_ROOT / 'configs' / 'demo.py:test') == load('demo').get_config('test')
  assert load_config_file(f'{REPO_ROOT}/configs/demo.py').total_steps == load('demo').get_config().total_steps
  with pytest.raises(FileNotFoundError, match='not found'):
    load_config_file(tmp_path / 'missing.py')
  (tmp_path / 'empty.py').write_text('X = 1\n')
  with pytest.raises(ValueError, match='defines no get_config'):
    load_config_file(tmp_path / 'empty.py')


@pytest.mark.parametrize('arg', [None, 'test'])
@pytest.mark.parametrize('name', CONFIGS)
def test_evals_build_and_classifiers_score_the_whole_split(name, arg):
  """Every config.evals entry is a valid evaluator; top-1 is measured on all of the evaluation split (the
  published ImageNet numbers are on all 50,000 images), and the kNN keeps its own bank of training images."""
  from cast_jax import evaluators  # pylint: disable=import-outside-toplevel
  from cast_jax.train.sharding import make_mesh  # pylint: disable=import-outside-toplevel

  config = load(name).get_config(arg)
  context = evaluators.EvalContext(config, None, make_mesh(1), uses_superpixels=True,
                                   classifier=config.trainer != 'moco')
  built = {ev.name: ev for ev in evaluators.build(config, context)}
  classifiers = [ev for ev in built.values() if ev.type_name == 'classifier']
  assert bool(classifiers) == (config.trainer not in ('moco', 'segmentation', 'spml_finetune'))
  assert all(ev.num_examples == -1 and ev.every_steps == config.eval_every_steps for ev in classifiers)
  assert [ev.options['ema'] for ev in classifiers] == ([False, True] if config.trainer == 'supervised' else
                                                      [False] * len(classifiers))
  if 'knn' in built:
    knn = built['knn']
    assert knn.every_steps == (config.eval_every_steps if config.trainer == 'moco' or name == 'deit_demo' else 0)
    if arg is None and config.data.name != 'partworld':
      assert (knn.num_examples, knn.options['num_train']) in ((10000, 50000), (10000, -1))
    if config.data.name == 'partworld':
      assert knn.num_examples == -1 and knn.options['num_classes'] == 8
      assert knn.options['num_train'] == (2048 if arg is None else 32)
  assert ('hierarchy' in built) == (config.trainer not in ('linear_probe', 'segmentation', 'spml_finetune'))
  # The Segmenter is scored by dense mIoU on the whole split, and only it.
  assert [ev.num_examples for ev in built.values() if ev.type_name == 'miou'] == (
      [-1] if config.trainer == 'segmentation' else [])
  # SPML's fine-tuning by SPML's benchmark on the whole split, and only it.
  assert [ev.num_examples for ev in built.values() if ev.type_name == 'spml_miou'] == (
      [-1] if config.trainer == 'spml_finetune' else [])
