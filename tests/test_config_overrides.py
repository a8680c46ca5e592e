"""A misspelt ``--config.X`` override names the unknown field and the close names (not a bare AttributeError)."""

from __future__ import annotations

import subprocess
import sys

from cast_jax.train import config_lib
from conftest import REPO_ROOT


def test_misspelt_override_names_the_field_and_close_names(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'cast_jax.main', '--config=configs/demo.py:test',
                         f'--workdir={tmp_path}', '--config.no_such=1', '--config.batchsize=4',
                         '--config.data.superpixel=slic'],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  err = proc.stderr
  assert 'Traceback' not in err and "AttributeError" not in err, err
  assert '--config.no_such: the config configs/demo.py:test has no field no_such (fields there: ' in err, err
  assert 'batch_size' in err.split('--config.no_such')[1].splitlines()[0]  # the fields are listed
  assert '--config.batchsize: the config configs/demo.py:test has no field batchsize (close names: batch_size' in err
  assert 'has no field data.superpixel (close names: data.superpixels' in err, err
  assert not any(tmp_path.iterdir()), 'nothing may run before the overrides are right'


def test_unknown_field_message():
  config = config_lib.load_config_file(REPO_ROOT / 'configs' / 'demo.py')
  assert config_lib.unknown_field_message(config, 'batch_size') is None
  assert config_lib.unknown_field_message(config, 'data.superpixels') is None
  assert 'close names: base_lr' in config_lib.unknown_field_message(config, 'lr')  # the same name, other depth
  assert config_lib.unknown_field_message(config, 'data.superpixels.x') == (
      'data.superpixels is a str, not a group of fields, so data.superpixels.x does not exist')
  # Good overrides parse as before (the check only runs when absl's parsing fails).
  assert config_lib.explain_bad_overrides(['prog', '--config', str(REPO_ROOT / 'configs' / 'demo.py'),
                                             '--config.batch_size=2']) is None
