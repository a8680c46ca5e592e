"""What a trainer reports at each evaluation: kNN top-1 of the backbone features and hierarchy pictures."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from cast_jax import visualize
from cast_jax.data.augment import IMAGENET_MEAN, IMAGENET_STD
from cast_jax.evaluate.knn import knn_accuracy, topk_accuracy
from cast_jax.models.hierarchy import encoder_forward
from cast_jax.train import inputs, sharding


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Normalized (B, H, W, 3) float -> uint8 pixels."""
  pixels = (np.asarray(images, np.float32) * IMAGENET_STD + IMAGENET_MEAN) * 255.0
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


class Evaluator:
  """kNN accuracy and a picture of the first evaluation batch's hierarchies, for any encoder variables."""

  def __init__(self, config, model, mesh, uses_superpixels: bool, classifier: bool = False):
    self.config, self.mesh, self.uses_superpixels = config, mesh, uses_superpixels
    self.classifier = classifier
    self._forward = jax.jit(encoder_forward(model, uses_superpixels),
                            out_shardings=sharding.batch_sharding(mesh))
    self._local_batch = config.knn.batch_size // jax.process_count()

  def _features(self, variables, split: str, count: int, keep_first: bool = False) -> dict[str, Any]:
    """{'features' (N, D), 'label' (N,), 'logits' (N, C) for classifiers, 'first': picture inputs or None}
    over the first ``count`` examples of ``split``, padding rows dropped."""
    feats, labels, logits, first = [], [], [], None
    for batch in inputs.eval_batches(self.config.data, split, self._local_batch, count, jax.process_index(),
                                     jax.process_count(), self.uses_superpixels):
      device_batch = sharding.global_batch({'image': batch['image'], 'superpixels': batch['superpixels']},
                                           self.mesh)
      out = self._forward(variables, device_batch['image'], device_batch['superpixels'])
      wanted = {'features': out['features'], 'label': batch['label'], 'mask': batch['mask']}
      if 'logits' in out:
        wanted['logits'] = out['logits']
      gathered = multihost_utils.process_allgather(wanted, tiled=True)
      keep = np.asarray(gathered['mask'], bool)
      if 'logits' in gathered:
        logits.append(np.asarray(gathered['logits'])[keep])
      feats.append(np.asarray(gathered['features'])[keep])
      labels.append(np.asarray(gathered['label'])[keep])
      if keep_first and first is None and 'hierarchy' in out:
        # Pictures come from this process's rows of the first batch (on process 0, the first examples).
        local = [s.data for s in out['hierarchy'].addressable_shards]
        first = {'image': to_uint8(batch['image']), 'superpixels': batch['superpixels'],
                 'hierarchy': np.concatenate([np.asarray(x) for x in local])[:len(batch['image'])]}
    return {'features': np.concatenate(feats), 'label': np.concatenate(labels),
            'logits': np.concatenate(logits) if logits else None, 'first': first}

  def __call__(self, variables, with_knn: bool = True) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(scalars, images) for the writer: kNN top-1/5, classifier top-1/5 (classifiers), a picture."""
    scalars, images = {}, {}
    test = self._features(variables, self.config.data.eval_split, self.config.knn.num_test, keep_first=True)
    if self.classifier and test['logits'] is not None:
      scalars.update(topk_accuracy(test['logits'], test['label']))
    knn = self.config.knn
    if with_knn and knn.enabled:
      train = self._features(variables, knn.train_split, knn.num_train)
      result = knn_accuracy(train['features'], train['label'], test['features'], test['label'],
                            num_classes=knn.num_classes, k=knn.k, temperature=knn.temperature)
      scalars['knn_top1'] = result['top1']
      if 'top5' in result:
        scalars['knn_top5'] = result['top5']
    first = test['first']
    if first is not None and self.config.pictures.num_images > 0:
      images['hierarchy'] = visualize.batch_panel(first['image'], first['superpixels'], first['hierarchy'],
                                                  max_images=self.config.pictures.num_images)
    return scalars, images


def eval_variables(state, ema: bool = False) -> dict[str, Any]:
  if ema:
    return {'params': state.ema_params, 'batch_stats': state.ema_batch_stats}
  return {'params': state.params, 'batch_stats': state.batch_stats}
