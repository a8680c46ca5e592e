"""On-device superpixels (``data.superpixels_on_device``): the host ships pixels, the jitted step makes the maps.

The MoCo ``:test`` config with ``data.superpixels='jax_slic'`` and ``superpixels_on_device=True``: its host batches
hold uint8 views and no maps; the maps the jitted step feeds the model equal jax_slic run separately on the same
views; a short run in this process trains and evaluates (kNN, pictures) with them.

The Segmenter's ``seg_demo:test`` likewise: its recipe ships the x255-wrapped pixels its superpixel function would
have been handed, its jitted step equals the step on the host's jax_slic maps of those pixels, and the ``miou``
evaluator (whole images and sliding windows) scores the same confusion with maps made in its jitted forward.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from cast_jax import evaluators, sliding_window
from cast_jax.data import augment, recipes, segmentation as segmentation_data, supervised as supervised_data
from cast_jax.data.partworld import PartWholeDataset
from cast_jax.models.moco import MoCo
from cast_jax.superpixels import compute_superpixels, compute_superpixels_batch, invert_uint8, jax_slic, preset
from cast_jax.train import device_superpixels, loop, schedules, sharding, tasks
from cast_jax.train.config_lib import load_config_file
from conftest import REPO_ROOT
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
    ('segmentation', 'segmentation', "needs data.superpixels='jax_slic'"),
    ('jax_slic', 'spml_finetune', 'not \'spml_finetune\''),
])
def test_bad_requests_say_what_to_change(superpixels, trainer, message):
  config = on_device_config()
  config.data.superpixels = superpixels
  config.trainer = trainer
  with pytest.raises(ValueError, match=message):
    device_superpixels.enabled(config)


def test_segmentation_recipe_refuses_seeds_on_device():
  """The Segmenter's own config (SEEDS, x255 wrap) with only the on-device switch: its recipe (as its task,
  through ``enabled``: test_bad_requests_say_what_to_change) says to pick jax_slic, before any data is read."""
  config = segmentation_config()
  config.data.superpixels = 'segmentation'
  config.data.superpixel_overrides = ml_collections.ConfigDict({'pixels_per_segment': 100, 'iterations': 4})
  with pytest.raises(ValueError, match="needs data.superpixels='jax_slic'"):
    tasks.segmentation_train_recipe(config.data, loop.model_spec(config))


# --- The Segmenter (trainer 'segmentation', evaluator 'miou') ---------------------------------------------------


def segmentation_config(on_device: bool = True):
  """``seg_demo:test`` (64 px crops of 44 PartWorld images, batch 8, 6 validation images) with jax_slic, 40
  segments (the :test's one per 100 pixels) and 4 iterations; the x255 wrap (``invert_quirk``) stays on."""
  config = load_config_file(REPO_ROOT / 'configs' / 'seg_demo.py:test')
  config.data.superpixels = 'jax_slic'
  config.data.superpixel_overrides = ml_collections.ConfigDict({'num_segments': 40, 'iterations': 4})
  config.data.superpixels_on_device = on_device
  assert config.data.invert_quirk
  return config


def segmentation_maps(pixels: np.ndarray) -> np.ndarray:
  """jax_slic of uint8 (B, 64, 64, 3) with segmentation_config's settings, run on its own."""
  return np.asarray(jax_slic.slic_batch(pixels, num_segments=40, iterations=4, compactness=10.0, connectivity=True))


def test_segmentation_recipe_ships_what_the_host_superpixel_fn_is_handed():
  """Same example, same draws: the on-device recipe's 'superpixel_pixels' is exactly the array the host recipe
  hands its superpixel function (the padded crop's x255-wrapped ``superpixel_view``), and image and label map are
  unchanged."""
  example = {'image': PartWholeDataset(1, image_size=64)[0]['image'],
             'label_map': np.random.default_rng(1).integers(0, 9, (64, 64)).astype(np.uint8)}
  handed = []

  def recording_fn(pixels):
    handed.append(pixels.copy())
    return np.zeros(pixels.shape[:2], np.int32)

  settings = dict(crop_size=48, img_scale=(96, 64), ratio_range=(0.8, 1.2), cat_max_ratio=1.0)
  host = segmentation_data.SegmentationTrain(recording_fn, **settings)(example, np.random.default_rng(3))
  device = segmentation_data.SegmentationTrain(None, **settings)(example, np.random.default_rng(3))
  assert set(device) == {'image', 'label_map', 'superpixel_pixels'} and len(handed) == 1
  assert device['superpixel_pixels'].dtype == np.uint8 and device['superpixel_pixels'].shape == (48, 48, 3)
  np.testing.assert_array_equal(device['superpixel_pixels'], handed[0])
  np.testing.assert_array_equal(device['image'], host['image'])
  np.testing.assert_array_equal(device['label_map'], host['label_map'])
  # The wrap: the pixels are the negation (mod 256) of the de-normalised crop, not the crop itself.
  plain = segmentation_data.superpixel_view(device['image'], invert_quirk=False)
  np.testing.assert_array_equal(device['superpixel_pixels'], (256 - plain.astype(np.int32)) % 256)
  assert (plain != device['superpixel_pixels'])[plain % 128 != 0].all()  # only 0 and 128 are their own negation


@pytest.mark.slow
def test_segmenter_step_with_on_device_superpixels_equals_the_step_on_host_maps():
  """seg_demo:test with jax_slic: the on-device task's host batches carry pixels and no maps; its jitted step
  equals the plain objective's step given the host recipe's maps, which are jax_slic of those same pixels.

  Slow (two Segmenter train steps compiled, ~2 min on the loaded CPU). The steps compile with :test's cheap XLA
  code (fast_compile), under which jax_slic can move a few pixels against the host's default-compiled maps
  (test_miou_on_device_superpixels_equal_host_maps); on these 8 crops it moves none, so the steps agree."""
  config, host_config = segmentation_config(), segmentation_config(on_device=False)
  spec, task, variables = build(config)
  _, host_task, _ = build(host_config)
  mask = ('mask',)  # :test keeps each epoch's short batch (partial_last_batch)
  assert task.batch_keys == ('image', device_superpixels.PIXELS_KEY, 'label_map') + mask
  assert host_task.batch_keys == ('image', 'superpixels', 'label_map') + mask
  assert isinstance(task.objective, device_superpixels.OnDeviceSuperpixels)
  assert not isinstance(host_task.objective, device_superpixels.OnDeviceSuperpixels)

  batch = next(task.make_iterator(8, 0, 1))
  host_batch = next(host_task.make_iterator(8, 0, 1))
  assert 'superpixels' not in batch and batch[device_superpixels.PIXELS_KEY].dtype == np.uint8
  assert batch[device_superpixels.PIXELS_KEY].shape == (8, 64, 64, 3)
  for key in ('image', 'label_map', 'mask'):
    np.testing.assert_array_equal(batch[key], host_batch[key])
  maps = segmentation_maps(batch[device_superpixels.PIXELS_KEY])
  np.testing.assert_array_equal(host_batch['superpixels'], maps)  # the host path segments the same pixels
  assert maps.max() > 20, 'a real segmentation, not a constant map'

  init = loop._jit(host_task.objective.init_state, config)

  def step(which, host_batch):
    state = init(variables, jax.random.PRNGKey(0))
    return loop._jit(which.objective.train_step, config)(state, {k: host_batch[k] for k in which.batch_keys})

  state, metrics = step(task, batch)
  host_state, host_metrics = step(host_task, host_batch)
  assert math.isfinite(float(metrics['loss'])) and int(state.step) == 1
  np.testing.assert_allclose(float(metrics['loss']), float(host_metrics['loss']), rtol=1e-6)
  for got, want in zip(jax.tree_util.tree_leaves((state.params, state.batch_stats)),
                       jax.tree_util.tree_leaves((host_state.params, host_state.batch_stats))):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  # The step moved the weights (so the comparison above is not of two untouched copies).
  before = jax.tree_util.tree_leaves(variables['params'])
  assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(before, jax.tree_util.tree_leaves(
      state.params)))


class SuperpixelStandIn:
  """A Segmenter stand-in whose scores depend on the maps: class (id mod 9) of each pixel's superpixel, plus a
  small pixelwise term; so the mIoU of two runs agrees only if their maps do."""

  def apply(self, variables, images, superpixels, train=False):
    del variables, train
    return {'masks': 2.0 * jax.nn.one_hot(superpixels % 9, 9) + 0.1 * images[..., :1]}


def miou_confusion(config, **options):
  # XLA's default CPU code on both sides: jax_slic's k-means is sensitive to float rounding, and :test's cheap
  # code generation (fast_compile) moves a few pixels (13 of 16384 on these images) against the host's maps.
  config.fast_compile = False
  config.evals.miou.update(options)
  context = evaluators.EvalContext(config, SuperpixelStandIn(), sharding.make_mesh(1), uses_superpixels=True)
  (evaluator,) = evaluators.build(config, context)
  return evaluator, evaluator.confusion({'params': {}})


@pytest.mark.parametrize('options', [{}, dict(window=48, stride=16, window_batch=3)],
                         ids=['whole_images', 'sliding_windows'])
def test_miou_on_device_superpixels_equal_host_maps(options):
  """The 6 validation images whole (64 px, batches of 4) or as 4 windows of 48 px each (groups of 3, the last
  padded): jax_slic maps made in the jitted forward score the same confusion as the host's maps."""
  evaluator, on_device = miou_confusion(segmentation_config(), **options)
  host_evaluator, host = miou_confusion(segmentation_config(on_device=False), **options)
  assert evaluator.on_device and not host_evaluator.on_device
  assert on_device.sum() == 6 * 64 * 64  # every pixel of the 6 images labelled and counted once
  np.testing.assert_array_equal(on_device, host)
  # The maps matter: the host path with the wrap switched off (other pixels, other maps) counts otherwise.
  unwrapped = segmentation_config(on_device=False)
  unwrapped.data.invert_quirk = False
  _, other = miou_confusion(unwrapped, **options)
  assert not np.array_equal(other, host)


def test_sliding_window_pixels_in_makes_the_host_maps():
  """``sliding_window_inference(pixels_in=True)``: the apply function receives each window's wrapped uint8
  pixels; the maps it makes of them (jax_slic) are the maps the host path computes with the wrap flag."""
  image = segmentation_data.normalize(np.asarray(PartWholeDataset(1, image_size=96)[0]['image']))[:80]
  config = preset('jax_slic', num_segments=30, iterations=4, invert_uint8=True)
  settings = sliding_window.SlidingWindow(window=48, stride=32, window_batch=2, superpixels=config)
  make = jax.jit(lambda p: jax_slic.slic_batch(p, num_segments=30, iterations=4, compactness=10.0,
                                              connectivity=True))
  handed = []

  def with_pixels(images, pixels):
    handed.append(pixels)
    maps = make(pixels)
    return jax.nn.one_hot(maps % 5, 5) + images[..., :1], maps

  def with_maps(images, maps):
    return jax.nn.one_hot(maps % 5, 5) + images[..., :1]

  device = sliding_window.sliding_window_inference(with_pixels, image, settings, pixels_in=True)
  host = sliding_window.sliding_window_inference(with_maps, image, settings)
  assert len(device['anchors']) == 6 and device['window_superpixels'].max() > 10
  assert handed[0].dtype == np.uint8 and handed[0].shape == (2, 48, 48, 3)
  top, left = device['anchors'][0]
  crop = image[top:top + 48, left:left + 48]
  plain = sliding_window.denormalize_to_uint8(crop, settings.mean, settings.std).astype(np.int32)
  np.testing.assert_array_equal(handed[0][0], (-plain) % 256)  # the x255 wrap of the de-normalised window
  np.testing.assert_array_equal(device['window_superpixels'], host['window_superpixels'])
  np.testing.assert_array_equal(device['prediction'], host['prediction'])


def test_compute_superpixels_applies_the_wrap_for_jax_slic():
  """``invert_uint8`` is honoured by every method (it was SEEDS-only, so the sliding window's jax_slic maps were
  of unwrapped windows while the train recipe's were of wrapped crops)."""
  image = np.asarray(PartWholeDataset(1, image_size=64)[0]['image'])
  config = preset('jax_slic', num_segments=40, iterations=4)
  with_wrap = dataclasses.replace(config, invert_uint8=True)
  wrapped = compute_superpixels(image, with_wrap)
  np.testing.assert_array_equal(wrapped, compute_superpixels(invert_uint8(image), config))
  np.testing.assert_array_equal(compute_superpixels_batch(image[None], with_wrap)[0], wrapped)
  assert not np.array_equal(wrapped, compute_superpixels(image, config))


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


@pytest.mark.slow
def test_segmentation_test_config_trains_and_evaluates_with_on_device_superpixels(tmp_path):
  """Slow (~2 min): seg_demo:test with jax_slic on the device through ``train_and_evaluate``: 6 steps (the last
  with 4 padding rows) and mIoU of the 6 validation images before training and at the end."""
  config = segmentation_config()
  config.eval_at_start = True
  last = loop.train_and_evaluate(config, tmp_path)
  logged = records(tmp_path)
  losses = [r['loss'] for r in logged if 'loss' in r]
  assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
  evaluations = [r for r in logged if 'miou/miou' in r]
  assert [r['step'] for r in evaluations] == [0, 6] and evaluations[-1]['miou/num_examples'] == 6
  assert 0.0 <= last['miou/miou'] <= 100.0 and last['miou/miou'] == evaluations[-1]['miou/miou']
