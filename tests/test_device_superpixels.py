"""On-device superpixels (``data.superpixels_on_device``): the host ships pixels, the jitted step makes the maps.

The MoCo ``:test`` config with ``data.superpixels='jax_slic'`` and ``superpixels_on_device=True``: its host batches
hold uint8 views and no maps; the maps the jitted step feeds the model equal jax_slic run separately on the same
views; a short run in this process trains and evaluates (kNN, pictures) with them.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from cast_jax.data import augment, recipes, supervised as supervised_data
from cast_jax.data.partworld import PartWholeDataset
from cast_jax.models.moco import MoCo
from cast_jax.superpixels import jax_slic
from cast_jax.train import device_superpixels, loop, schedules, tasks
from test_train_wiring import records, test_config


def on_device_config(name: str = 'demo'):
  config = test_config(name)
  config.data.superpixels = 'jax_slic'
  config.data.superpixels_on_device = True
  return config


def expected_maps(pixels: np.ndarray) -> np.ndarray:
  """jax_slic of uint8 pixels with the :test config's overrides (36 segments, 4 iterations), run on its own."""
  return np.asarray(jax_slic.slic_batch(pixels, num_segments=36, iterations=4, compactness=10.0, connectivity=True))


def build(config):
  spec = loop.model_spec(config)
  model = loop.build_model(spec)
  variables = loop.initial_variables(config, spec, model)
  schedule = schedules.Schedule.from_config(config, 64)
  return spec, tasks.build_task(config, spec, model, variables['params'], schedule), variables


def test_moco_step_feeds_the_model_jax_slic_of_the_uint8_views():
  config = on_device_config()
  _, task, variables = build(config)
  assert task.batch_keys == ('view1', 'view2')
  assert isinstance(task.objective, device_superpixels.OnDeviceSuperpixels)
  batch = next(task.make_iterator(4, 0, 1))
  assert not any(key.startswith('superpixels') for key in batch), 'the host computes no maps'
  assert batch['view1'].dtype == np.uint8 and batch['view1'].shape == (4, 64, 64, 3)

  # Every call of the MoCo model inside the jitted step reports the images and maps it was given.
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, MoCo) and context.method_name in ('__call__', 'project'):
      jax.debug.callback(lambda x, s: seen.append((np.asarray(x), np.asarray(s))), args[0], args[1])
    return next_fun(*args, **kwargs)

  state = loop._jit(task.objective.init_state, config)(variables, jax.random.PRNGKey(0))
  host_batch = {k: batch[k] for k in task.batch_keys}
  with nn.intercept_methods(record):
    new_state, metrics = loop._jit(task.objective.train_step, config)(state, host_batch)
  jax.block_until_ready(metrics)
  assert math.isfinite(float(metrics['loss'])) and int(new_state.step) == 1
  assert len(seen) == 6  # k1, k2 (project); q1, q2 (__call__, which calls project)

  maps = {name: expected_maps(batch[name]) for name in ('view1', 'view2')}
  assert maps['view1'].max() > 20, 'a real segmentation, not a constant map'
  matched = []
  for images, superpixels in seen:
    name = next(n for n in maps if np.array_equal(superpixels, maps[n]))  # StopIteration: no map matched
    matched.append(name)
    np.testing.assert_allclose(images, augment.normalize(batch[name]), rtol=0, atol=2e-6)
  assert sorted(matched) == ['view1'] * 3 + ['view2'] * 3


def test_prepare_is_deterministic_and_keeps_given_maps():
  pixels = np.stack([PartWholeDataset(2, image_size=64)[i]['image'] for i in range(2)])
  fn = device_superpixels.superpixel_fn(on_device_config().data, max_segments=64)
  prepare = jax.jit(lambda b: device_superpixels.prepare(b, fn))
  first, second = prepare({'image': pixels}), prepare({'image': pixels})
  np.testing.assert_array_equal(first['superpixels'], second['superpixels'])
  np.testing.assert_array_equal(first['superpixels'], expected_maps(pixels))
  # A map already in the batch is kept; float images are not normalised again.
  given = {'image': augment.normalize(pixels), 'superpixels': np.zeros((2, 64, 64), np.int32)}
  out = prepare(given)
  np.testing.assert_array_equal(out['superpixels'], 0)
  np.testing.assert_array_equal(out['image'], given['image'])


def test_deit_recipe_ships_the_seeds_input_and_the_step_segments_it():
  """Supervised: the erased float image stays float, the map comes from ``superpixel_pixels`` (Mixup-free)."""
  example = PartWholeDataset(1, image_size=64)[0]
  recipe = supervised_data.SupervisedTrain(None, size=64, randaugment=None, erasing_prob=1.0, crop_scale=(0.5, 1))
  out = recipe(example, np.random.default_rng(0))
  assert set(out) == {'image', 'superpixel_pixels', 'label'} and out['image'].dtype == np.float32
  np.testing.assert_array_equal(out['superpixel_pixels'], augment.seeds_input(out['image']))
  fn = device_superpixels.superpixel_fn(on_device_config('deit_demo').data, max_segments=64)
  batch = {k: v[None] for k, v in out.items()}
  prepared = jax.jit(lambda b: device_superpixels.prepare(b, fn))(batch)
  assert set(prepared) == {'image', 'superpixels', 'label'}
  np.testing.assert_array_equal(prepared['superpixels'], expected_maps(batch['superpixel_pixels']))
  np.testing.assert_array_equal(prepared['image'], batch['image'])


def test_supervised_and_probe_tasks_take_pixel_batches():
  config = on_device_config('deit_demo')
  _, task, _ = build(config)
  assert task.batch_keys == ('image', 'superpixel_pixels', 'targets')
  assert isinstance(task.objective, device_superpixels.OnDeviceSuperpixels)
  eval_recipe = recipes.CenterCropEval(None, size=64, resize=64, superpixels_from_normalized=True)
  out = eval_recipe(PartWholeDataset(1, image_size=64)[0])
  assert out['image'].dtype == np.uint8 and 'superpixel_pixels' in out and 'superpixels' not in out


@pytest.mark.parametrize('superpixels, trainer, message', [
    ('moco', 'moco', "needs data.superpixels='jax_slic'"),
    ('jax_slic', 'segmentation', 'not \'segmentation\''),
])
def test_bad_requests_say_what_to_change(superpixels, trainer, message):
  config = on_device_config()
  config.data.superpixels = superpixels
  config.trainer = trainer
  with pytest.raises(ValueError, match=message):
    device_superpixels.enabled(config)


def test_default_stays_seeds_on_the_host():
  config = test_config('demo')
  assert config.data.superpixels_on_device is False and config.data.superpixels == 'moco'
  _, task, _ = build(config)
  assert task.batch_keys == ('view1', 'view2', 'superpixels1', 'superpixels2')
  assert not isinstance(task.objective, device_superpixels.OnDeviceSuperpixels)


@pytest.mark.slow
def test_moco_test_config_trains_and_evaluates_with_on_device_superpixels(tmp_path):
  config = on_device_config()
  config.total_steps = 3
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  last = loop.train_and_evaluate(config, tmp_path)
  losses = [r['loss'] for r in records(tmp_path) if 'loss' in r]
  assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
  assert 0.0 <= last['knn/top1'] <= last['knn/top5'] <= 100.0 and last['knn/num_examples'] == 16
  assert (tmp_path / 'pictures' / 'hierarchy_first_batch_0000003.png').is_file()
