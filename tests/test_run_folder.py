"""cast_jax.run_folder: the workdir layout, finished checkpoints, and reading weights from a workdir or an .npz."""

from __future__ import annotations

import numpy as np
import orbax.checkpoint as ocp
import pytest

from cast_jax import run_folder
from cast_jax.run_folder import RunFolder, RunFolderError
from cast_jax.torch_pickle import CheckpointError


def _model_config():
  from cast_jax.train.config_lib import load_config_file

  return load_config_file('configs/demo.py:test').model.to_dict()


def _save_state(run: RunFolder, step: int, state) -> None:
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(run.checkpoint_dir(step) / run_folder.STATE_ITEM, state)


def test_paths(tmp_path):
  run = RunFolder(tmp_path / 'w')
  assert run.config_path == tmp_path / 'w' / 'config.json'
  assert run.metrics_path.name == 'metrics.jsonl' and run.tensorboard_dir.name == 'tensorboard'
  assert run.picture_path('val/hierarchy', 6) == tmp_path / 'w' / 'pictures' / 'val_hierarchy_0000006.png'
  assert run.checkpoint_dir(12) == tmp_path / 'w' / 'checkpoints' / '12'
  assert RunFolder('relative').root.is_absolute()  # orbax refuses relative paths
  assert not (tmp_path / 'w').exists()  # naming paths creates nothing


def test_read_config_and_metrics(tmp_path):
  run = RunFolder(tmp_path)
  with pytest.raises(RunFolderError, match='no config.json'):
    run.read_config()
  assert not run.is_run() and run.read_metrics() == []
  run.write_config({'a': 1, 'p': tmp_path})
  assert run.is_run() and run.read_config() == {'a': 1, 'p': str(tmp_path)}
  run.metrics_path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": "nan"}\n')
  assert run.read_metrics() == [{'step': 1, 'loss': 0.5}, {'step': 2, 'loss': 'nan'}]


def test_only_finished_checkpoints_count_and_variables_load(tmp_path):
  run = RunFolder(tmp_path)
  run.write_config({'model': _model_config()})
  assert run.latest_step() is None
  state = {'params': {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}, 'batch_stats': {'m': np.ones(2)},
           'ema_params': {'w': np.full((2, 3), 7.0, np.float32)}, 'ema_batch_stats': {'m': np.zeros(2)}}
  _save_state(run, 4, state)
  # A save cut short: orbax's temporary folder, and a step folder without its state.
  (run.checkpoints_dir / '8.orbax-checkpoint-tmp-1234' / 'state').mkdir(parents=True)
  (run.checkpoints_dir / '9').mkdir()
  assert run.finished_steps() == [4] and run.latest_step() == 4
  np.testing.assert_array_equal(run.read_state()['params']['w'], state['params']['w'])
  with pytest.raises(RunFolderError, match='no finished checkpoint of step 8'):
    run.read_state(8)

  spec, variables = run_folder.load_variables(tmp_path)
  assert spec.kind == 'cast' and spec.embed_dim == 24
  np.testing.assert_array_equal(variables['params']['w'], state['params']['w'])
  np.testing.assert_array_equal(variables['batch_stats']['m'], np.ones(2))
  _, ema = run_folder.load_variables(tmp_path, use_ema=True)
  np.testing.assert_array_equal(ema['params']['w'], state['ema_params']['w'])
  # init_from keeps its name for the same reader.
  from cast_jax.train import init_from

  assert init_from.load_variables is run_folder.load_variables


def test_load_variables_says_what_is_missing(tmp_path):
  with pytest.raises(CheckpointError, match='neither a converted .npz'):
    run_folder.load_variables(tmp_path)
  run = RunFolder(tmp_path)
  run.write_config({'model': _model_config()})
  run.checkpoints_dir.mkdir()
  with pytest.raises(RunFolderError, match='holds no finished checkpoint'):
    run_folder.load_variables(tmp_path)
  _save_state(run, 2, {'params': {'w': np.zeros(2, np.float32)}, 'batch_stats': {}})
  with pytest.raises(RunFolderError, match='no ema_params'):
    run_folder.load_variables(tmp_path, use_ema=True)


def test_load_variables_reads_a_converted_npz(tmp_path):
  from cast_jax.convert import Conversion, save_converted
  from cast_jax.models.variants import ModelSpec

  spec = ModelSpec.from_config(_model_config())
  variables = {'params': {'w': np.ones((2, 2), np.float32)}, 'batch_stats': {'m': np.zeros(3, np.float32)}}
  path = tmp_path / 'weights.npz'
  save_converted(Conversion(spec=spec, variables=variables, ignored=[], source_info={}), path)
  loaded_spec, loaded = run_folder.load_variables(path)
  assert loaded_spec == spec and sorted(loaded) == ['batch_stats', 'params']
  np.testing.assert_array_equal(loaded['params']['w'], variables['params']['w'])
  np.testing.assert_array_equal(loaded['batch_stats']['m'], variables['batch_stats']['m'])
