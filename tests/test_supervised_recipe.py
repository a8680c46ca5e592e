"""The supervised DeiT recipe: RandAugment ops and sampling, random erasing and the SEEDS input it feeds,
Mixup/CutMix, repeated augmentation, and the assembled pipeline (docs/original_behaviour.md#deit-recipe)."""

from __future__ import annotations

import collections

import grain
import numpy as np
import pytest
from PIL import Image

from cast_jax.data import augment, randaugment, supervised
from cast_jax.data.sources import ListSource


def grid_superpixels(pixels: np.ndarray) -> np.ndarray:
  """A stand-in for SEEDS: a fixed 14 x 14 grid of ids (any size divisible by 14)."""
  cell = pixels.shape[0] // 14
  rows = np.arange(pixels.shape[0]) // cell
  return (rows[:, None] * 14 + rows[None, :]).astype(np.int32)


def red_channel(pixels: np.ndarray) -> np.ndarray:
  """A 'superpixel' function that reveals exactly which uint8 image it was given."""
  return pixels[..., 0].astype(np.int32)


def _image(seed=0, shape=(6, 4, 3)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------
# RandAugment ops against hand-computed results.


def test_point_ops_match_their_definitions():
  a = _image()
  img = Image.fromarray(a)
  wide = a.astype(np.int32)
  np.testing.assert_array_equal(np.asarray(randaugment.invert(img)), 255 - a)
  np.testing.assert_array_equal(np.asarray(randaugment.solarize(img, 100)), np.where(a >= 100, 255 - a, a))
  np.testing.assert_array_equal(np.asarray(randaugment.solarize(img, 256)), a)  # magnitude 0: no-op
  np.testing.assert_array_equal(np.asarray(randaugment.posterize(img, 1)), a & 0b10000000)
  np.testing.assert_array_equal(np.asarray(randaugment.posterize(img, 3)), a & 0b11100000)
  np.testing.assert_array_equal(np.asarray(randaugment.posterize(img, 0)), np.zeros_like(a))
  np.testing.assert_array_equal(np.asarray(randaugment.solarize_add(img, 99)),
                                np.where(wide < 128, np.minimum(wide + 99, 255), wide))


def test_rotate_90_on_a_non_square_image_fills_with_the_given_colour():
  a = _image(shape=(6, 4, 3))
  fill = (7, 200, 3)
  out = np.asarray(randaugment.rotate(Image.fromarray(a), 90.0, fill=fill))
  # Counter-clockwise about the centre (2, 3): output offset (dx, dy) reads input offset (-dy, dx). Pixel
  # centres land on pixel centres, so bicubic returns exact input values; rows 0 and 5 fall outside.
  expected = np.empty_like(a)
  for y in range(6):
    for x in range(4):
      dx, dy = x + 0.5 - 2, y + 0.5 - 3
      col, row = int(np.floor(2 - dy)), int(np.floor(3 + dx))
      expected[y, x] = a[row, col] if 0 <= row < 6 and 0 <= col < 4 else fill
  np.testing.assert_array_equal(out, expected)
  assert (out[0] == fill).all() and (out[5] == fill).all()


def test_translate_and_shear_move_content_and_fill_the_rest():
  a = _image(shape=(5, 10, 3))
  img = Image.fromarray(a)
  fill = (7, 200, 3)
  shifted = np.asarray(randaugment.translate_x_rel(img, 0.2, fill=fill))  # 0.2 * 10 = 2 pixels left
  np.testing.assert_array_equal(shifted[:, :8], a[:, 2:])
  assert (shifted[:, 8:] == fill).all()
  down = np.asarray(randaugment.translate_y_rel(img, -0.4, fill=fill))  # 2 pixels down
  np.testing.assert_array_equal(down[2:], a[:3])
  assert (down[:2] == fill).all()
  # PIL maps pixel centres: with shear 2, output centre (x + .5, y + .5) reads input x + .5 + (2y + 1), an
  # integer shift of 2y + 1 pixels per row.
  sheared = np.asarray(randaugment.shear_x(img, 2.0, fill=fill))
  for y in range(5):
    shift = 2 * y + 1
    np.testing.assert_array_equal(sheared[y, :10 - shift], a[y, shift:])
    assert (sheared[y, 10 - shift:] == fill).all()


def test_enhance_factor_one_is_identity():
  img = Image.fromarray(_image(shape=(8, 8, 3)))
  for kind in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
    np.testing.assert_array_equal(np.asarray(randaugment.enhance(img, kind, 1.0)), np.asarray(img))
  np.testing.assert_array_equal(np.asarray(randaugment.enhance(img, 'Brightness', 0.0)), 0)


def test_level_to_arg_matches_timm_increasing_mappings():
  rng = np.random.default_rng(0)
  assert randaugment.level_to_arg('PosterizeIncreasing', 9.0, rng) == 1  # 4 - int(3.6)
  assert randaugment.level_to_arg('PosterizeIncreasing', 10.0, rng) == 0
  assert randaugment.level_to_arg('PosterizeIncreasing', 7.4, rng) == 2
  assert randaugment.level_to_arg('SolarizeIncreasing', 9.0, rng) == 26  # 256 - int(230.4)
  assert randaugment.level_to_arg('SolarizeIncreasing', 0.0, rng) == 256
  assert randaugment.level_to_arg('SolarizeAdd', 9.0, rng) == 99
  assert randaugment.level_to_arg('Invert', 9.0, rng) is None
  expected = {'Rotate': 27.0, 'ShearX': 0.27, 'ShearY': 0.27, 'TranslateXRel': 0.405, 'TranslateYRel': 0.405}
  for name, value in expected.items():
    args = np.array([randaugment.level_to_arg(name, 9.0, rng) for _ in range(2000)])
    np.testing.assert_allclose(np.abs(args), value)
    assert 0.45 < np.mean(args > 0) < 0.55, f'{name}: both signs, equally likely'
  for name in ('ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing'):
    args = {round(randaugment.level_to_arg(name, 9.0, rng), 6) for _ in range(200)}
    assert args == {0.19, 1.81}


def test_every_op_runs_at_the_extreme_magnitudes():
  img = Image.fromarray(_image(shape=(16, 12, 3)))
  rng = np.random.default_rng(0)
  for name in randaugment.RAND_INCREASING_OPS:
    for level in (0.0, 9.0, 10.0):
      out = randaugment.apply_op(img, name, randaugment.level_to_arg(name, level, rng))
      assert out.mode == 'RGB' and out.size == img.size, name
  black = randaugment.apply_op(img, 'PosterizeIncreasing', randaugment.level_to_arg('PosterizeIncreasing', 10, rng))
  assert not np.asarray(black).any(), 'magnitude 10 keeps 0 bits, as the original Pillow did'


def test_defaults_are_rand_m9_mstd05_inc1_with_deits_fill_and_bicubic():
  ra = randaugment.RandAugment()
  assert (ra.num_layers, ra.magnitude, ra.magnitude_std, ra.prob) == (2, 9.0, 0.5, 0.5)
  assert ra.fill == tuple(min(255, round(255 * m)) for m in (0.485, 0.456, 0.406)) == (124, 116, 104)
  assert ra.resample == Image.BICUBIC
  assert len(ra.ops) == 15 and 'PosterizeIncreasing' in ra.ops and 'Posterize' not in ra.ops


def test_magnitude_is_normal_9_05_clipped_to_10():
  rng = np.random.default_rng(0)
  m = np.array([randaugment.sample_magnitude(rng) for _ in range(40000)])
  assert m.min() >= 0 and m.max() == 10.0
  assert abs(m.mean() - 8.996) < 0.01  # 9 minus the clipped upper tail
  assert abs(m.std() - 0.49) < 0.01
  assert abs(np.mean(m == 10.0) - 0.0228) < 0.004  # P(N(9, .5) >= 10)
  assert randaugment.sample_magnitude(rng, 12.0, 0.0) == 10.0


def test_two_ops_uniform_with_replacement_each_applied_half_the_time(monkeypatch):
  applied = []
  monkeypatch.setattr(randaugment, 'apply_op', lambda img, name, *args: applied.append(name) or img)
  ra = randaugment.RandAugment()
  rng = np.random.default_rng(0)
  img = Image.new('RGB', (4, 4))
  per_image = []
  for _ in range(6000):
    before = len(applied)
    ra(img, rng)
    per_image.append(len(applied) - before)
  counts = np.bincount(per_image, minlength=3) / len(per_image)
  np.testing.assert_allclose(counts, [0.25, 0.5, 0.25], atol=0.02)
  frequency = np.array([collections.Counter(applied)[name] for name in ra.ops]) / len(applied)
  np.testing.assert_allclose(frequency, 1 / 15, atol=0.015)


# ----------------------------------------------------------------------------------------------------------
# Random erasing and the SEEDS input.


def test_random_erasing_probability_and_box():
  rng = np.random.default_rng(0)
  zeros = np.zeros((32, 48, 3), np.float32)
  fractions = []
  for _ in range(4000):
    out = supervised.random_erasing(zeros, rng)
    erased = np.any(out != 0, axis=-1)
    if erased.any():
      rows, cols = np.nonzero(erased)
      h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
      assert erased.sum() == h * w and h < 32 and w < 48, 'one rectangle, smaller than the image'
      fractions.append(h * w / (32 * 48))
  assert abs(len(fractions) / 4000 - 0.25) < 0.02
  assert 0.015 < min(fractions) and max(fractions) < 0.36  # U(0.02, 1/3) up to rounding of the sides


def test_seeds_input_truncates_and_wraps_like_the_original():
  # De-normalized values -0.3 and 1.2 (erased noise can land there): -76.5 -> 180 and 306 -> 50.
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  target = np.array([[[-0.3, 1.2 + 1e-6, 0.5]]])
  normalized = ((target - mean) / std).astype(np.float32)
  np.testing.assert_array_equal(supervised.seeds_input(normalized)[0, 0], [180, 50, 127])
  # Ordinary pixels come back as themselves or one less (truncation after float round-off), never more.
  values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)[None]
  drop = values.astype(int) - supervised.seeds_input(augment.normalize(values))
  assert set(np.unique(drop)) <= {0, 1} and drop.any()


def test_train_recipe_erases_a_quarter_and_superpixels_see_the_erased_image():
  recipe = supervised.SupervisedTrain(red_channel, size=28, randaugment=None)
  example = {'image': np.full((40, 50, 3), 90, np.uint8), 'label': 5}
  constant = augment.normalize(np.full((1, 1, 3), 90, np.uint8))[0, 0]
  erased = 0
  for seed in range(1200):
    out = recipe(example, np.random.default_rng(seed))
    changed = np.any(out['image'] != constant, axis=-1)
    erased += bool(changed.any())
    np.testing.assert_array_equal(out['superpixels'], supervised.seeds_input(out['image'])[..., 0])
    if changed.any():  # the erased box reaches SEEDS, wrapped values included
      assert not np.array_equal(out['superpixels'][changed], np.full(changed.sum(), 90))
  assert abs(erased / 1200 - 0.25) < 0.04


def test_train_recipe_outputs_and_determinism():
  recipe = supervised.SupervisedTrain(grid_superpixels, size=56)
  example = {'image': _image(shape=(70, 90, 3)), 'label': 7}
  out = recipe(example, np.random.default_rng(3))
  assert out['image'].shape == (56, 56, 3) and out['image'].dtype == np.float32
  assert out['superpixels'].shape == (56, 56) and out['superpixels'].dtype == np.int32
  assert out['label'] == 7 and out['label'].dtype == np.int32
  again = recipe(example, np.random.default_rng(3))
  np.testing.assert_array_equal(out['image'], again['image'])
  other = recipe(example, np.random.default_rng(4))
  assert not np.array_equal(out['image'], other['image'])


def test_eval_recipe_is_bicubic_resize_256_center_224():
  recipe = supervised.supervised_eval(grid_superpixels)
  assert (recipe.size, recipe.resize, recipe.resample) == (224, 256, Image.BICUBIC)
  out = recipe({'image': _image(shape=(300, 400, 3)), 'label': 1})
  assert out['image'].shape == (224, 224, 3) and out['superpixels'].shape == (224, 224)


# ----------------------------------------------------------------------------------------------------------
# Mixup / CutMix.


def _batch(size=8, hw=16, num_classes=10):
  # Example i is constant i + 1, so a mixed pixel tells which examples it came from.
  image = np.broadcast_to(np.arange(1, size + 1, dtype=np.float32)[:, None, None, None], (size, hw, hw, 3)).copy()
  return {'image': image, 'label': np.arange(size, dtype=np.int32) % num_classes,
          'superpixels': np.random.default_rng(0).integers(0, 196, (size, hw, hw)).astype(np.int32)}


def test_smooth_one_hot_values():
  t = supervised.smooth_one_hot(np.array([2, 0]), 10, 0.1)
  assert t.dtype == np.float32
  np.testing.assert_allclose(t[0], [0.01, 0.01, 0.91] + [0.01] * 7, rtol=1e-6)
  np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(supervised.smooth_one_hot(np.array([3]), 1000, 0.1)[0, 3], 0.9001, rtol=1e-6)


def test_mix_batch_targets_images_and_untouched_superpixels():
  num_classes, size, hw = 10, 8, 16
  off, on = 0.1 / num_classes, 0.9 + 0.1 / num_classes
  kinds = collections.Counter()
  for seed in range(300):
    batch = _batch(size, hw, num_classes)
    out = supervised.mix_batch(batch, np.random.default_rng(seed), num_classes)
    np.testing.assert_array_equal(out['superpixels'], batch['superpixels'])
    np.testing.assert_array_equal(out['label'], batch['label'])
    targets = out['targets']
    assert targets.shape == (size, num_classes) and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-5)
    lam = (targets[0, 0] - off) / (on - off)  # label 0 here, label 7 in its flipped partner
    assert -1e-6 <= lam <= 1.0 + 1e-6
    np.testing.assert_allclose(targets[0, 7], off + (1 - lam) * (on - off), atol=1e-6)
    first, partner = batch['image'][0], batch['image'][-1]
    mixed = out['image'][0]
    if np.all((mixed == first) | (mixed == partner)):  # CutMix: pasted pixels, corrected lambda = area
      kinds['cutmix'] += 1
      pasted = np.all(mixed == partner, axis=-1)
      np.testing.assert_allclose(pasted.mean(), 1 - lam, atol=1e-6)
      if pasted.any():
        rows, cols = np.nonzero(pasted)
        assert pasted.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1), 'one box'
        for i in range(size):  # the same box for every example, from its flipped partner
          assert np.all(out['image'][i][pasted] == batch['image'][size - 1 - i][pasted])
    else:  # Mixup: one blend for the whole batch
      kinds['mixup'] += 1
      np.testing.assert_allclose(out['image'], lam * batch['image'] + (1 - lam) * batch['image'][::-1], atol=1e-5)
  assert 110 < kinds['cutmix'] < 190 and 110 < kinds['mixup'] < 190  # switch_prob 0.5


def test_cutmix_box_area_gives_the_corrected_lambda():
  rng = np.random.default_rng(0)
  clipped = 0
  for lam in np.linspace(0.01, 0.99, 200):
    (y0, y1, x0, x1), corrected = supervised.cutmix_box(224, 224, lam, rng)
    assert 0 <= y0 <= y1 <= 224 and 0 <= x0 <= x1 <= 224
    np.testing.assert_allclose(corrected, 1 - (y1 - y0) * (x1 - x0) / 224 ** 2)
    side = int(224 * np.sqrt(1 - lam)) // 2 * 2
    assert y1 - y0 <= side and x1 - x0 <= side
    clipped += (y1 - y0 < side) or (x1 - x0 < side)
  assert clipped > 0, 'boxes near the border are clipped, which is what the correction is for'


def test_mix_batch_is_deterministic_and_rejects_odd_batches():
  a = supervised.mix_batch(_batch(), np.random.default_rng(5), 10)
  b = supervised.mix_batch(_batch(), np.random.default_rng(5), 10)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  odd = {k: v[:7] for k, v in _batch().items()}
  with pytest.raises(ValueError):
    supervised.mix_batch(odd, np.random.default_rng(0), 10)


def test_mix_batch_groups_mix_each_sub_batch_separately():
  batch = _batch(size=8)
  for seed in range(20):
    out = supervised.MixBatch(10, groups=2).random_map(batch, np.random.default_rng(seed))
    assert out['targets'].shape == (8, 10)
    # Examples 0-3 (values 1-4) only mix among themselves (0 with 3), and 4-7 (values 5-8) likewise.
    assert 1.0 - 1e-5 <= out['image'][:4].min() and out['image'][:4].max() <= 4.0 + 1e-5
    assert 5.0 - 1e-5 <= out['image'][4:].min() and out['image'][4:].max() <= 8.0 + 1e-5
    assert np.all(out['targets'][0][[1, 2, 4, 5, 6, 7]] == out['targets'][0].min())
    np.testing.assert_array_equal(out['superpixels'], batch['superpixels'])


# ----------------------------------------------------------------------------------------------------------
# Repeated augmentation.


def test_ra_each_index_three_times_across_replicas_on_consecutive_ranks():
  n, replicas = 1000, 8
  per_replica = supervised.ra_num_selected(n, replicas)
  assert per_replica == 768 // 8 == 96  # floor(N // 256 * 256 / R), DeiT's num_selected_samples
  streams = [supervised.repeated_augmentation_indices(n, 3, 0, 0, replicas, r) for r in range(replicas)]
  assert all(len(s) == per_replica for s in streams)
  # Interleaving the replicas' streams gives back the global stream: a prefix of repeat(perm, 3).
  interleaved = np.stack(streams, 1).reshape(-1)
  perm = np.random.default_rng((0, 0)).permutation(n)
  np.testing.assert_array_equal(interleaved, np.repeat(perm, 3)[:replicas * per_replica])
  counts = collections.Counter(interleaved.tolist())
  assert sorted(set(counts.values())) == [3], '768 = 3 x 256: every selected image exactly 3 times'
  assert len(counts) == 256, 'an epoch covers only ~N/3 distinct images'
  # The 3 copies of an image sit on 3 consecutive (mod R) replicas, never twice on one.
  for image in perm[:20]:
    ranks = {r for r, s in enumerate(streams) for v in s if v == image}
    assert any(ranks == {k, (k + 1) % replicas, (k + 2) % replicas} for k in range(replicas))


def test_ra_padding_round_to_and_epochs():
  # 3N not divisible by R: RASampler pads from the start; round_to=1 keeps floor(N / R) per replica.
  n, replicas = 101, 4
  streams = [supervised.repeated_augmentation_indices(n, 3, 0, 2, replicas, r, round_to=1) for r in range(replicas)]
  assert [len(s) for s in streams] == [101 // 4] * 4
  assert supervised.ra_num_selected(255, 8) == 0  # the original's quirk for tiny datasets
  e0 = supervised.repeated_augmentation_indices(n, 3, 0, 0, round_to=1)
  e1 = supervised.repeated_augmentation_indices(n, 3, 0, 1, round_to=1)
  assert not np.array_equal(e0, e1)
  np.testing.assert_array_equal(e0, supervised.repeated_augmentation_indices(n, 3, 0, 0, round_to=1))


def test_process_stream_lays_replica_batches_side_by_side():
  n, replicas, b = 1024, 4, 16
  order = supervised.process_stream(n, b, ranks=(2, 3), num_replicas=replicas)
  r2 = supervised.repeated_augmentation_indices(n, 3, 0, 0, replicas, 2)
  r3 = supervised.repeated_augmentation_indices(n, 3, 0, 0, replicas, 3)
  steps = len(r2) // b
  assert len(order) == steps * 2 * b
  np.testing.assert_array_equal(order[:b], r2[:b])
  np.testing.assert_array_equal(order[b:2 * b], r3[:b])
  np.testing.assert_array_equal(order[2 * b:3 * b], r2[b:2 * b])


def test_repeated_augmentation_dataset_walks_epochs():
  parent = grain.MapDataset.source(list(range(600)))
  ds = supervised.RepeatedAugmentation(parent, per_replica_batch=8, ranks=(0, 1), num_replicas=2, round_to=1,
                                       num_epochs=2)
  assert ds.epoch_length == 2 * (300 // 8) * 8 and len(ds) == 2 * ds.epoch_length
  first = [ds[i] for i in range(ds.epoch_length)]
  second = [ds[ds.epoch_length + i] for i in range(ds.epoch_length)]
  np.testing.assert_array_equal(first, supervised.process_stream(600, 8, (0, 1), 2, round_to=1, epoch=0))
  np.testing.assert_array_equal(second, supervised.process_stream(600, 8, (0, 1), 2, round_to=1, epoch=1))


def test_make_train_dataset_end_to_end_and_resumable():
  records = [{'image': _image(i, (40, 48, 3)), 'label': i % 5} for i in range(64)]
  recipe = supervised.SupervisedTrain(grid_superpixels, size=28)

  def build():
    return supervised.make_train_dataset(ListSource(records), recipe, num_classes=5, per_replica_batch=4,
                                         ranks=(0, 1), num_replicas=2, seed=1, round_to=1)

  it = iter(build())
  batch = next(it)
  assert batch['image'].shape == (8, 28, 28, 3) and batch['superpixels'].shape == (8, 28, 28)
  assert batch['targets'].shape == (8, 5)
  np.testing.assert_allclose(batch['targets'].sum(1), 1.0, rtol=1e-5)
  state = it.get_state()
  expected = next(it)
  resumed = iter(build())
  resumed.set_state(state)
  got = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])


def test_supervised_crop_scale_is_configurable():
  """crop_scale=(1, 1) on a square image keeps the whole image: the crop is only a resize (and maybe a flip)."""
  image = (np.arange(96 * 96 * 3) % 251).astype(np.uint8).reshape(96, 96, 3)
  recipe = supervised.SupervisedTrain(lambda pixels: np.zeros(pixels.shape[:2], np.int32), size=64, randaugment=None,
                           erasing_prob=0.0, crop_scale=(1.0, 1.0))
  resized = np.asarray(Image.fromarray(image).resize((64, 64), Image.BICUBIC), np.uint8)
  for seed in range(4):
    out = recipe({'image': image, 'label': 1}, np.random.default_rng(seed))
    pixels = np.round((out['image'] * augment.IMAGENET_STD + augment.IMAGENET_MEAN) * 255).astype(np.uint8)
    assert np.array_equal(pixels, resized) or np.array_equal(pixels, resized[:, ::-1])
