"""Checkpointer: orbax's current API (preservation policy, handler registry) with grain's iterator handler."""

from __future__ import annotations

import grain
import jax
import numpy as np
import pytest

from cast_jax.run_folder import RunFolder
from cast_jax.train.checkpoint import Checkpointer, abstract_with_shardings


def _iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())


def _state(value):
  return {'w': np.full((2, 3), value, np.float32), 'step': np.int32(value)}


def test_save_restore_keeps_the_newest_and_resumes_the_iterator(tmp_path):
  iterator = _iterator()
  with Checkpointer(tmp_path, keep=2) as checkpointer:
    for step in (1, 2, 3):
      next(iterator)
      checkpointer.save(step, _state(step), iterator)
  expected_next = next(iterator)  # what follows the position saved at step 3
  run = RunFolder(tmp_path)
  assert run.finished_steps() == [2, 3]
  assert (run.checkpoint_dir(3) / 'data' / 'process_0-of-1.json').is_file()

  fresh = _iterator()
  with Checkpointer(tmp_path, keep=2) as checkpointer:
    assert checkpointer.latest_step() == 3
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = abstract_with_shardings(_state(0), jax.tree_util.tree_map(lambda _: sharding, _state(0)))
    state = checkpointer.restore(3, abstract, fresh)
  np.testing.assert_array_equal(state['w'], _state(3)['w'])
  np.testing.assert_array_equal(next(fresh), expected_next)


def test_resuming_with_another_process_count_says_so(tmp_path):
  iterator = _iterator()
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(1, _state(1), iterator)
  data = RunFolder(tmp_path).checkpoint_dir(1) / 'data'
  (data / 'process_0-of-1.json').rename(data / 'process_0-of-2.json')
  with Checkpointer(tmp_path) as checkpointer:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = abstract_with_shardings(_state(0), jax.tree_util.tree_map(lambda _: sharding, _state(0)))
    with pytest.raises(ValueError, match=r"\['process_0-of-2.json'\].*number of processes"):
      checkpointer.restore(1, abstract, _iterator())


def test_keep_must_be_positive(tmp_path):
  with pytest.raises(ValueError, match='at least 1'):
    Checkpointer(tmp_path, keep=0)
