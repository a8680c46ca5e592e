"""``python -m cast_jax.evaluate`` on a converted Segmenter checkpoint: the golden Segmenter checkpoint
through the command-line converter, scored by the ``miou`` evaluator on a few PartWorld images written as an
mmseg-style folder (images, label PNGs, a split list), against an mIoU computed here directly.

The model is built from the meta.json of the folder of kind ``segmenter_window`` (same checkpoint, its window settings).
Three 64x64 images go through the evaluator's whole-image batches (the last one padded), one 64x90 image
through its sliding window; PartWorld object ids the model's n_cls classes do not cover are written as 255.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cast_jax import convert
from cast_jax.data.partworld_segmentation import PartWorldSegmentation
from cast_jax.data.segmentation import normalize
from cast_jax.evaluate.__main__ import evaluate_checkpoint
from cast_jax.models import build_model
from cast_jax.sliding_window import SlidingWindow, sliding_window_inference
from cast_jax.train.config_lib import segmenter_defaults
from conftest import checkpoint_path, fast_jit
from test_golden_segmenter import WINDOW_FOLDERS, require_folder, segmenter_spec, window_slots

LAYOUT = dict(img_dir='img/{split}', ann_dir='ann/{split}', split_file='splits/{split}.txt', img_suffix='.png',
              seg_map_suffix='.png')


def write_folder(root, n_classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Four PartWorld images with object labels (ids >= n_classes written as 255) in LAYOUT's 'val' split."""
  small = PartWorldSegmentation(3, image_size=64, split='validation')
  wide = PartWorldSegmentation(1, image_size=96, split='validation', seed=1)[0]
  examples = [(small[i]['image'], small[i]['label_map']) for i in range(3)]
  examples.append((wide['image'][16:80, 3:93], wide['label_map'][16:80, 3:93]))  # 64 x 90: two windows
  for folder in ('img/val', 'ann/val', 'splits'):
    (root / folder).mkdir(parents=True)
  out = []
  for i, (image, label) in enumerate(examples):
    label = np.where(label < n_classes, label, 255).astype(np.uint8)
    Image.fromarray(np.ascontiguousarray(image)).save(root / 'img' / 'val' / f'im{i}.png')
    Image.fromarray(np.ascontiguousarray(label)).save(root / 'ann' / 'val' / f'im{i}.png')
    out.append((np.ascontiguousarray(image), label))
  (root / 'splits' / 'val.txt').write_text(''.join(f'im{i}\n' for i in range(len(examples))))
  return out


def config_for(meta: dict, root, slots: int):
  """A Segmenter config scoring LAYOUT's 'val' split of ``root`` with the window fixture's settings; its model
  block stays the ADE20K CAST-S one (``model_from_checkpoint`` replaces it) except the superpixel slots."""
  c = segmenter_defaults('ade20k')
  c.model.max_segments = slots
  c.data.update(name='segmentation_folder', path=str(root), folder_layout=LAYOUT, eval_split='val',
                crop_size=meta['window_size'], img_scale=(4 * meta['window_size'], meta['window_size']),
                window_stride=meta['window_stride'], window_batch=meta['window_batch_size'], reduce_zero_label=False)
  c.eval_batch_size = 2
  c.fast_compile = True  # cheap XLA code generation for the test (the evaluator honours it)
  c.evals.miou.num_examples = -1
  return c


def direct_miou(predictions, labels, n_classes: int) -> float:
  """mmseg 0.14: per class, the sum over images of intersections / sum of unions over pixels whose label is not
  255; the mean over classes with a union, x100."""
  intersections, unions = np.zeros(n_classes), np.zeros(n_classes)
  for prediction, label in zip(predictions, labels):
    valid = label != 255
    for c in range(n_classes):
      intersections[c] += np.sum((prediction == c) & (label == c) & valid)
      unions[c] += np.sum(((prediction == c) | (label == c)) & valid)
  has_union = unions > 0
  return float(np.mean(intersections[has_union] / unions[has_union]) * 100)


@pytest.mark.parametrize('folder', WINDOW_FOLDERS)  # every fixture set of kind segmenter_window
def test_evaluate_converted_segmenter_equals_direct_miou(folder, tmp_path):
  path = require_folder(folder)
  meta = json.loads((path / 'meta.json').read_text())
  window = meta['window_size']
  slots = window_slots(meta)
  spec = segmenter_spec(meta, slots)
  checkpoint = checkpoint_path(path)  # meta.json names the segmenter folder's checkpoint
  npz = tmp_path / 'segmenter.npz'
  assert convert.main([str(checkpoint), str(npz), '--num-clusters', ','.join(map(str, spec.num_clusters)),
                       '--decoder-heads', str(spec.decoder_heads), '--num-heads', str(spec.num_heads)]) == 0
  examples = write_folder(tmp_path / 'data', meta['n_cls'])

  config = config_for(meta, tmp_path / 'data', slots)
  scalars, _ = evaluate_checkpoint(config, str(npz), 'miou', model_from_checkpoint=True)
  assert config.model.seg_classes == meta['n_cls'] and config.model.embed_dim == meta['encoder']['embed_dim']

  # Directly: the converted weights, the sliding window on each image (one window for the 64x64 ones).
  _, variables = convert.load_converted(npz)
  model, variables = build_model(spec), {k: variables[k] for k in ('params', 'batch_stats')}
  masks = fast_jit(lambda v, x, s: model.apply(v, x, s, train=False)['masks'])
  forward = lambda images, superpixels: masks(variables, images, superpixels)  # noqa: E731
  settings = SlidingWindow(window=window, stride=meta['window_stride'], window_batch=meta['window_batch_size'])
  predictions = [sliding_window_inference(forward, normalize(image), settings, max_segments=slots)['prediction']
                 for image, _ in examples]
  labels = [label for _, label in examples]
  assert all(len(np.unique(p)) >= 2 for p in predictions)  # the model does not paint one class everywhere
  expected = direct_miou(predictions, labels, meta['n_cls'])
  valid = sum(int((l != 255).sum()) for l in labels)
  correct = sum(int(((p == l) & (l != 255)).sum()) for p, l in zip(predictions, labels))
  assert scalars['miou/num_examples'] == 4
  np.testing.assert_allclose(scalars['miou/miou'], expected, rtol=1e-9)
  np.testing.assert_allclose(scalars['miou/aacc'], 100 * correct / valid, rtol=1e-9)
  assert 0 < expected < 100
