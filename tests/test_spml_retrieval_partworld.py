"""SPML's segment retrieval on PartWorld (``configs/spml_demo_retrieval.py``, ``spml_retrieval_main --partworld``)
with a ``cast`` MoCo checkpoint (the MoCo demo's kind) read through ``LastStageEmbedding``.

A tiny ``cast`` MoCo model (48 wide, as graph pooling has 12 heads; one block per stage) at its seeded
initialisation is saved as a converted ``.npz``; the command scores 4 validation images against a memory of 12
train images, and the counts are recomputed here in numpy from the model's own outputs (prototypes, majority
labels, cosine top-k vote).

The three tests on that checkpoint are marked slow: together about 40 s of CPU, 2.5 min on the shared machine
(the model's initialisation and three forward compilations); the option and checkpoint checks run in the
default suite (under a second each).
"""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest

from cast_jax import convert
from cast_jax.data.partworld_segmentation import PartWorldSegmentation
from cast_jax.evaluate import spml_retrieval as sr
from cast_jax.evaluate import spml_retrieval_main as cli
from cast_jax.evaluate.spml_inputs import prepare_test_image
from cast_jax.models import build_model
from cast_jax.models.hierarchy import compose_assignments, level_logits
from cast_jax.models.variants import ModelSpec
from conftest import REPO_ROOT

CONFIG = REPO_ROOT / 'configs' / 'spml_demo_retrieval.py'
SPEC = ModelSpec(kind='cast', embed_dim=48, depth=(1, 1, 1, 1), num_heads=2, num_clusters=(8, 4, 2, 2),
                 image_size=64, max_segments=64, moco=True, moco_dim=16, moco_mlp_dim=32)
MEMORY, QUERIES, TOP_K = 12, 4, 5


@pytest.fixture(scope='module')
def forward(checkpoint):
  """(model, its variables, jitted eval forward) of the checkpoint, compiled once for the tests below."""
  model, model_variables = sr.last_stage_model(SPEC, checkpoint[1])
  return model, model_variables, jax.jit(lambda v, x, s: model.apply(v, x, s, train=False))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """(path of a converted .npz of SPEC at seed 1, its variables)."""
  variables = cli.initial_variables(SPEC, seed=1)
  path = tmp_path_factory.mktemp('retrieval') / 'tiny_cast_moco.npz'
  convert.save_converted(convert.Conversion(spec=SPEC, variables=variables, ignored=[], source_info={}), path)
  return path, variables


def command(path, *extra):
  return [f'--config={CONFIG}', f'--checkpoint={path}', f'--memory_images={MEMORY}', f'--query_images={QUERIES}',
          f'--top_k={TOP_K}'] + list(extra)


@pytest.mark.slow  # shares the ~40 s CPU of the checkpoint fixture (module docstring)
def test_last_stage_embedding_is_the_projector_on_each_last_stage_token(checkpoint, forward):
  _, variables = checkpoint
  _, model_variables, apply = forward
  example = PartWorldSegmentation(1, image_size=64, split='validation', palette='class')[0]
  prepared = prepare_test_image(example['image'], example['label_map'], 64, 49, 64)
  image, superpixels = prepared['image'][None], prepared['superpixels'][None]
  out = apply(model_variables, image, superpixels)
  # The class token through the same norm + projector is the checkpoint's own MoCo projection.
  moco = build_model(SPEC)
  project = jax.jit(lambda v, x, s: moco.apply(v, x, s, train=False, method=type(moco).project)['projection'])
  want = project(variables, image, superpixels)
  np.testing.assert_allclose(out['projection'], want, rtol=1e-5, atol=1e-5)
  # Every superpixel slot carries the projected last-stage token of its level-3 segment...
  owner = np.asarray(compose_assignments(level_logits(out['intermediates'])[:3])[-1][0])
  np.testing.assert_array_equal(out['tokens'][0], out['stage_tokens'][0][owner])
  assert out['tokens'].shape == (1, SPEC.max_segments, SPEC.moco_dim)
  # ...and every pixel its superpixel's token; level 4 (the last) has K4 = 2 segments, nested in level 3.
  np.testing.assert_array_equal(out['embedding'][0], np.asarray(out['tokens'][0])[prepared['superpixels']])
  level3 = owner[prepared['superpixels']]
  level4 = np.asarray(out['level4'][0])
  assert set(np.unique(level4)) <= {0, 1}
  for segment in np.unique(level3):
    assert len(np.unique(level4[level3 == segment])) == 1
  norms = np.linalg.norm(np.asarray(out['normalized_embedding'][0]), axis=-1)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def direct_counts(forward):
  """The retrieval recomputed in numpy: per image the model's normalised embedding and level-4 ids, then
  prototypes, majority labels (ties to the smaller label), cosine top-k and the vote, and SPML's counts."""
  _, model_variables, apply = forward

  def segments(split, count):
    for example_index in range(count):
      example = PartWorldSegmentation(count, image_size=64, split=split, palette='class')[example_index]
      prepared = prepare_test_image(example['image'], example['label_map'], 64, 49, 64)
      out = apply(model_variables, prepared['image'][None], prepared['superpixels'][None])
      embedding = np.asarray(out['normalized_embedding'][0], np.float64)
      level4 = np.asarray(out['level4'][0])
      for segment in np.unique(level4):
        inside = level4 == segment
        prototype = embedding[inside].sum(0)
        votes = np.bincount(example['label_map'][inside], minlength=9)
        yield example_index, inside, prototype / np.linalg.norm(prototype), int(np.argmax(votes)), example

  memory = [(p, label) for _, _, p, label, _ in segments('train', MEMORY)]
  protos, labels = np.stack([p for p, _ in memory]), np.array([label for _, label in memory])
  predictions = collections.defaultdict(lambda: np.zeros((64, 64), np.uint8))
  truth = {}
  for index, inside, prototype, _, example in segments('validation', QUERIES):
    neighbours = np.argsort(-(protos @ prototype), kind='stable')[:TOP_K]
    predictions[index][inside] = np.argmax(np.bincount(labels[neighbours], minlength=9))
    truth[index] = example['label_map']
  counts = [sr.iou_counts(predictions[i], truth[i], 9) for i in range(QUERIES)]
  return [np.sum([c[j] for c in counts], axis=0) for j in range(3)], len(labels)


@pytest.mark.slow  # shares the ~40 s CPU of the checkpoint fixture (module docstring)
def test_the_partworld_command_scores_what_a_direct_computation_scores(checkpoint, forward):
  path, _ = checkpoint
  result = cli.run(command(path))
  tp_fn, tp_fp, tp = (np.asarray(result[k]) for k in ('tp_fn', 'tp_fp', 'tp'))
  assert tp_fn.sum() == QUERIES * 64 * 64  # PartWorld labels every pixel, and the benchmark counts them all
  assert tp_fp.sum() == tp_fn.sum()  # every pixel gets a prediction in [0, 9)
  assert result['queries'] == QUERIES and 0 <= result['miou'] <= 100 and 0 <= result['pixel_acc'] <= 1
  np.testing.assert_allclose(result['pixel_acc'], tp.sum() / tp_fn.sum())
  np.testing.assert_allclose(result['miou'], np.mean(np.asarray(result['iou'])))
  floor = result['background_everywhere']
  np.testing.assert_allclose(floor['pixel_acc'], tp_fn[0] / tp_fn.sum())
  np.testing.assert_allclose(floor['miou'], 100 * tp_fn[0] / tp_fn.sum() / 9)
  (want_tp_fn, want_tp_fp, want_tp), memory_size = direct_counts(forward)
  assert result['memory_size'] == memory_size  # no 255 in PartWorld: every present memory segment is kept
  np.testing.assert_array_equal(tp_fn, want_tp_fn)
  np.testing.assert_array_equal(tp_fp, want_tp_fp)
  np.testing.assert_array_equal(tp, want_tp)


@pytest.mark.slow  # shares the ~40 s CPU of the checkpoint fixture (module docstring)
def test_untrained_is_the_trainers_seeded_initialisation(checkpoint):
  path, variables = checkpoint
  # The checkpoint was saved from seed 1: --untrained --seed=1 rebuilds exactly its variables, seed 0 others.
  for seed, same in ((1, True), (0, False)):
    _, untrained = cli.retrieval_model(cli.parse_args(command(path, '--untrained', f'--seed={seed}')), None)
    _, loaded = sr.last_stage_model(SPEC, variables)
    equal = jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), untrained, loaded))
    assert equal == same


def test_the_config_renders_what_the_demo_trained_on():
  args = cli.parse_args([f'--config={CONFIG}', '--checkpoint=/tmp/cast_demo'])
  assert args.partworld and (args.palette, args.partworld_image_size, args.num_classes) == ('class', 64, 9)
  assert (args.memory_images, args.query_images, args.top_k, args.max_segments) == (1024, 512, 20, 64)
  # The palette reaches the images (same objects and labels, other colours).
  by_palette = {p: PartWorldSegmentation(1, image_size=64, palette=p)[0] for p in ('random', 'class')}
  np.testing.assert_array_equal(by_palette['random']['label_map'], by_palette['class']['label_map'])
  assert not np.array_equal(by_palette['random']['image'], by_palette['class']['image'])
  name, image, label = next(cli.partworld_items('train', 1, palette='class'))
  assert name == 'partworld_train_00000' and image.shape == (64, 64, 3) and label.dtype == np.uint8
  np.testing.assert_array_equal(image, by_palette['class']['image'])


@pytest.mark.parametrize('extra, message', [
    (['--memory_list=m.txt'], 'drop --memory_list'),
    (['--num_classes=21'], 'set --num_classes=9'),
    (['--seg_labels=wholes'], 'unknown PartWorld segmentation labels'),
    (['--query_images=0'], 'must be >= 1'),
    (['--palette=pastel'], '--palette must be one of'),
    (['--no-partworld'], 'set --data_dir, --memory_list, --query_list'),
])
def test_bad_partworld_options_stop_with_the_fix(extra, message, capsys):
  with pytest.raises(SystemExit):
    cli.parse_args([f'--config={CONFIG}', '--checkpoint=c.npz'] + extra)
  assert message in capsys.readouterr().err


def test_checkpoints_the_retrieval_cannot_read_are_refused(tmp_path):
  plain = SPEC.replace(moco=False)
  variables = jax.tree_util.tree_map(np.zeros_like, {'params': {'encoder': {'norm': {'scale': np.ones(48)}}},
                                                     'batch_stats': {}})
  with pytest.raises(ValueError, match='needs a MoCo checkpoint with its projector'):
    sr.last_stage_model(plain, variables)
  with pytest.raises(ValueError, match="reads kind 'cast' MoCo"):
    sr.last_stage_model(SPEC.replace(kind='cast_deit'), variables)
  vit = tmp_path / 'vit.npz'
  convert.save_converted(convert.Conversion(spec=ModelSpec(kind='vit_conv', moco=True), variables={}, ignored=[],
                                            source_info={}), vit)
  with pytest.raises(ValueError, match='holds a vit_conv model'):
    cli.retrieval_model(cli.parse_args(command(vit)), None)
