"""SPML's segment retrieval against the original (golden folders of kind 'spml_retrieval').

The retrieval model is built from the MoCo checkpoint (query encoder with its table resampled, projector kept);
every memory image and query runs at batch 1 as in the original. Compared: the projected superpixel tokens, the
level-4 clusters, memory prototypes and their majority labels, query prototypes, the labels of their top-20
neighbours (where the 20th/21st gap is above noise), the votes, per-pixel predictions (model grid and original
size), the benchmark's counts and mIoU. Everything is sized from meta.json and the arrays.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cast_jax.evaluate import spml_inputs, spml_retrieval as sr
from conftest import fast_jit, meta_file
from test_golden_spml import backbone_spec, contiguous_clusters, folders_or_skip, scaled_error, spml_folders

@functools.lru_cache(maxsize=None)
def run_retrieval(folder):
  meta = json.loads((folder / 'meta.json').read_text())
  inputs, want = np.load(folder / 'inputs.npz'), np.load(folder / 'outputs.npz')
  slots = max(meta['num_superpixels'], int(inputs['train_superpixels_orig'].max()) + 1,
              int(inputs['query_superpixels'].max()) + 1)
  spec = backbone_spec({**meta, 'num_superpixels': slots})
  model, variables = sr.load_moco_for_retrieval(meta_file(folder, 'moco_checkpoint'), spec)
  apply = fast_jit(functools.partial(model.apply, train=False))
  k4 = spec.clusters()[-1]
  n_cls = meta['n_cls']

  def forward(image, superpixels):
    out = jax.device_get(apply(variables, jnp.asarray(image[None]), jnp.asarray(superpixels[None])))
    protos, present = sr.segment_prototypes(out['normalized_embedding'][0], out['level4'][0], num_segments=k4)
    return out, np.asarray(protos), np.asarray(present)

  train = []
  for index in range(inputs['train_image_uint8'].shape[0]):
    # The original's resize to max side test_image_size (an identity when the train images already have it).
    hw = spml_inputs.resized_size(*inputs['train_image_uint8'].shape[1:3], meta['test_image_size'])
    image = spml_inputs.resize(spml_inputs.normalise(inputs['train_image_uint8'][index]), hw, nearest=False)
    superpixels = spml_inputs.resize(inputs['train_superpixels_orig'][index], hw, nearest=True)
    out, protos, present = forward(image, superpixels)
    labels = spml_inputs.resize(inputs['train_labels_orig'][index], hw, nearest=True)
    sr.check_labels(labels, n_cls)
    majority = np.asarray(sr.majority_labels(out['level4'][0], labels, num_segments=k4, num_classes=n_cls))
    train.append((out, protos, present, majority))
  memory = sr.build_memory(np.stack([t[1] for t in train]), np.stack([t[2] for t in train]),
                           np.stack([t[3] for t in train]), chunk=8, top_k=meta['top_k'])
  queries = []
  for index in range(inputs['query_image'].shape[0]):
    out, protos, present = forward(inputs['query_image'][index].transpose(1, 2, 0), inputs['query_superpixels'][index])
    prediction, top_labels, top_values = sr.retrieve(protos[present], memory, n_cls)
    queries.append((out, protos, present, np.asarray(prediction), np.asarray(top_labels), np.asarray(top_values)))
  return meta, spec, inputs, want, train, memory, queries


FOLDERS = range(max(1, len(spml_folders('spml_retrieval'))))


@pytest.mark.parametrize('index', FOLDERS)
def test_projected_tokens_clusters_prototypes_and_majority_labels(index):
  folder = folders_or_skip('spml_retrieval')[index]
  meta, spec, inputs, want, train, memory, queries = run_retrieval(folder)
  for side, runs in (('train', train), ('query', queries)):
    counts = want[f'{side}_num_tokens']
    tokens = np.split(want[f'{side}_spix_embedding'], np.cumsum(counts)[:-1])
    assert float(want[f'{side}_assign_margin_min'].min()) > 1e-5  # else a level's argmax may flip: a tie
    for i, run in enumerate(runs):
      out = run[0]
      err = scaled_error(out['tokens'][0, :counts[i]], tokens[i])
      assert err <= 1e-4, f'{folder.name} {side} {i} projected tokens: {err:.3g}'
      np.testing.assert_array_equal(contiguous_clusters(out['level4']), want[f'{side}_cluster_index'][i].reshape(-1))

  protos = np.concatenate([t[1][t[2]] for t in train])
  labels = np.concatenate([t[3][t[2]] for t in train])
  image_index = np.concatenate([np.full(int(t[2].sum()), i) for i, t in enumerate(train)])
  np.testing.assert_array_equal(image_index, want['memory_image_index'])
  assert scaled_error(protos, want['memory_prototypes']) <= 1e-4
  np.testing.assert_array_equal(labels, want['memory_labels'])
  # 255-labelled prototypes are dropped from the memory, the rest kept in file order; padding is masked.
  kept = labels != 255
  assert memory.size == int(kept.sum())
  np.testing.assert_array_equal(memory.labels[:memory.size], labels[kept])
  np.testing.assert_array_equal(memory.prototypes[:memory.size], protos[kept])
  assert memory.valid[:memory.size].all() and not memory.valid[memory.size:].any()


@pytest.mark.parametrize('index', FOLDERS)
def test_query_top20_votes_predictions_and_miou(index):
  folder = folders_or_skip('spml_retrieval')[index]
  meta, spec, inputs, want, train, memory, queries = run_retrieval(folder)
  n_cls = meta['n_cls']
  np.testing.assert_array_equal(np.concatenate([np.full(int(q[2].sum()), i) for i, q in enumerate(queries)]),
                                want['query_segment_image_index'])
  protos = np.concatenate([q[1][q[2]] for q in queries])
  assert scaled_error(protos, want['query_segment_prototypes']) <= 1e-4
  top_labels = np.concatenate([q[4] for q in queries])
  stable = want['query_segment_topk_margin'] > 1e-5
  assert stable.any()
  # The set of 20 is stable where the 20th/21st margin is above noise: compare label multisets (what the vote
  # reads), and the order itself where every consecutive similarity gap is clear.
  golden_top = want['query_segment_topk_labels']
  np.testing.assert_array_equal(np.sort(top_labels[stable], axis=1), np.sort(golden_top[stable], axis=1))
  values = np.concatenate([q[5] for q in queries])
  clear = stable & (np.diff(-values, axis=1) > 1e-5).all(axis=1)
  np.testing.assert_array_equal(top_labels[clear], golden_top[clear])
  assert np.all(np.diff(values, axis=1) <= 0)  # descending similarity
  vote = np.concatenate([q[3] for q in queries])
  np.testing.assert_array_equal(vote[stable], want['query_segment_prediction'][stable])
  _, margin = sr.majority_vote(jnp.asarray(want['query_segment_topk_labels']), n_cls)
  np.testing.assert_array_equal(np.asarray(margin), want['query_segment_vote_margin'])

  tp_fn, tp_fp, tp = (np.zeros(n_cls) for _ in range(3))
  for i, q in enumerate(queries):
    out, _, present, seg_pred = q[0], q[1], q[2], q[3]
    per_slot = np.zeros(present.shape[0], np.int32)
    per_slot[present] = seg_pred
    resized = per_slot[out['level4'][0]]
    np.testing.assert_array_equal(resized, want['query_prediction_resized'][i])
    original = spml_inputs.restore_prediction(resized, inputs['query_labels_orig'][i].shape)
    np.testing.assert_array_equal(original, want['query_prediction'][i])
    counts = sr.iou_counts(original, inputs['query_labels_orig'][i], n_cls)
    tp_fn, tp_fp, tp = tp_fn + counts[0], tp_fp + counts[1], tp + counts[2]
  np.testing.assert_array_equal(tp_fn, want['tp_fn'])
  np.testing.assert_array_equal(tp_fp, want['tp_fp'])
  np.testing.assert_array_equal(tp, want['tp'])
  iou, miou, acc = sr.miou_from_counts(tp_fn, tp_fp, tp)
  np.testing.assert_allclose(iou, want['iou'], rtol=1e-12)
  np.testing.assert_allclose(miou, want['miou'], rtol=1e-12)
  np.testing.assert_allclose(acc, want['pixel_acc'], rtol=1e-12)


@pytest.mark.parametrize('index', FOLDERS)
def test_test_time_inputs_seeds_normalise_and_resize_as_the_original(index):
  """SEEDS at the original size (no wrap), normalise, max side test_image_size (linear / nearest, int())."""
  folder = folders_or_skip('spml_retrieval')[index]
  meta = json.loads((folder / 'meta.json').read_text())
  inputs = np.load(folder / 'inputs.npz')
  size, count = meta['test_image_size'], meta['num_superpixels']
  for side in ('train', 'query'):
    for i, image in enumerate(inputs[f'{side}_image_uint8']):
      prepared = spml_inputs.prepare_test_image(image, inputs[f'{side}_labels_orig'][i], size, count,
                                                max_segments=4 * count)
      np.testing.assert_array_equal(prepared['superpixels_orig'], inputs[f'{side}_superpixels_orig'][i])
      if side == 'query':
        assert prepared['image'].shape[:2] == inputs['query_image'].shape[2:]
        assert scaled_error(prepared['image'], inputs['query_image'][i].transpose(1, 2, 0)) <= 1e-5
        np.testing.assert_array_equal(prepared['superpixels'], inputs['query_superpixels'][i])
        np.testing.assert_array_equal(prepared['labels'], inputs['query_labels'][i])
      elif max(image.shape[:2]) == size:  # max side already test_image_size: an identity
        np.testing.assert_array_equal(prepared['image'], spml_inputs.normalise(image))
  assert spml_inputs.resized_size(375, 500, 512) == (384, 512)
  assert spml_inputs.resized_size(333, 500, 512) == (340, 512)  # int(511.48): truncation
  with pytest.raises(ValueError, match='does not match its image'):
    wrong = np.zeros((inputs['query_image_uint8'].shape[1] + 1, inputs['query_image_uint8'].shape[2]), np.uint8)
    spml_inputs.prepare_test_image(inputs['query_image_uint8'][0], wrong, size, count)


@pytest.mark.parametrize('index', FOLDERS)
def test_from_uint8_images_to_the_originals_miou(index):
  """The whole path: SEEDS, resize, forward, memory, votes, nearest back, benchmark -> the original's numbers."""
  folder = folders_or_skip('spml_retrieval')[index]
  meta, spec, inputs, want, *_ = run_retrieval(folder)
  model, variables = sr.load_moco_for_retrieval(meta_file(folder, 'moco_checkpoint'), spec)
  apply = sr.make_apply(model, variables, jit=fast_jit)
  opts = dict(test_image_size=meta['test_image_size'], num_superpixels=meta['num_superpixels'],
              max_segments=spec.max_segments)
  train = [(f'train{i}', inputs['train_image_uint8'][i], inputs['train_labels_orig'][i])
           for i in range(inputs['train_image_uint8'].shape[0])]
  memory = sr.memory_from_images(apply, train, meta['n_cls'], chunk=8, top_k=meta['top_k'], **opts)
  queries = [(f'query{i}', inputs['query_image_uint8'][i], inputs['query_labels_orig'][i])
             for i in range(inputs['query_image_uint8'].shape[0])]
  scores = sr.score_split(apply, queries, memory, meta['n_cls'], **opts)
  for i in range(len(queries)):
    np.testing.assert_array_equal(scores['predictions'][f'query{i}'], want['query_prediction'][i])
  for key in ('tp_fn', 'tp_fp', 'tp'):
    np.testing.assert_array_equal(scores[key], want[key])
  np.testing.assert_allclose(scores['miou'], want['miou'], rtol=1e-12)
  with pytest.raises(ValueError, match='query image query0: no label map'):
    sr.score_split(apply, [('query0', inputs['query_image_uint8'][0], None)], memory, meta['n_cls'], **opts)


def _write_voc_like(tmp_path, inputs):
  """Images as PNGs and labels as palette PNGs (indices, not luminance) behind SPML list files."""
  from PIL import Image

  palette = [int(v) for v in np.random.default_rng(0).integers(0, 256, 768)]
  lists = {}
  for side in ('train', 'query'):
    lines = []
    for i, image in enumerate(inputs[f'{side}_image_uint8']):
      Image.fromarray(image).save(tmp_path / f'{side}{i}.png')
      label = Image.fromarray(inputs[f'{side}_labels_orig'][i], mode='P')
      label.putpalette(palette)
      label.save(tmp_path / f'{side}{i}_label.png')
      lines.append(f'{side}{i}.png {side}{i}_label.png')
    lists[side] = tmp_path / f'{side}.txt'
    lists[side].write_text('\n'.join(lines) + '\n')
  return lists


@pytest.mark.parametrize('index', FOLDERS)
def test_list_files_palette_labels_and_missing_files(index, tmp_path):
  from cast_jax.evaluate import spml_retrieval_main as cli

  folder = folders_or_skip('spml_retrieval')[index]
  inputs = np.load(folder / 'inputs.npz')
  lists = _write_voc_like(tmp_path, inputs)
  entries = cli.read_list(str(tmp_path), lists['query'])
  items = list(cli.read_items(entries))
  assert [name for name, _, _ in items] == [f'query{i}' for i in range(len(entries))]
  for i, (_, rgb, label) in enumerate(items):
    np.testing.assert_array_equal(rgb, inputs['query_image_uint8'][i])
    np.testing.assert_array_equal(label, inputs['query_labels_orig'][i])  # the palette's indices
  lists['query'].write_text('query0.png query0_label.png\nmissing.png missing_label.png\n')
  with pytest.raises(FileNotFoundError, match=r'query.txt:2 names .*missing.png'):
    cli.read_list(str(tmp_path), lists['query'])
  lists['query'].write_text('query0.png\n')
  with pytest.raises(ValueError, match='has no label path'):
    cli.read_list(str(tmp_path), lists['query'])


@pytest.mark.slow  # ~20 s: the command compiles the model itself; the same path runs in the test above it
@pytest.mark.parametrize('index', FOLDERS)
def test_the_retrieval_command_on_list_files_reproduces_the_originals_miou(index, tmp_path):
  from cast_jax.evaluate import spml_retrieval_main as cli

  folder = folders_or_skip('spml_retrieval')[index]
  meta, spec, inputs, want, *_ = run_retrieval(folder)
  lists = _write_voc_like(tmp_path, inputs)
  args = [f'--checkpoint={meta_file(folder, "moco_checkpoint")}', f'--data_dir={tmp_path}',
          f'--memory_list={lists["train"]}', f'--query_list={lists["query"]}', f'--num_classes={meta["n_cls"]}',
          f'--test_image_size={meta["test_image_size"]}', f'--num_superpixels={meta["num_superpixels"]}',
          f'--max_segments={spec.max_segments}', f'--num_clusters={",".join(map(str, spec.clusters()))}',
          f'--top_k={meta["top_k"]}', '--chunk=8']
  result = cli.run(args)
  assert result['tp'] == want['tp'].tolist() and result['tp_fp'] == want['tp_fp'].tolist()
  np.testing.assert_allclose(result['miou'], want['miou'], rtol=1e-12)
