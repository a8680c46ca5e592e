"""What a trainer reports at each evaluation: kNN top-1 of the backbone features and hierarchy pictures."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from cast_jax import visualize
from cast_jax.data.augment import IMAGENET_MEAN, IMAGENET_STD
from cast_jax.evaluate.knn import knn_accuracy
from cast_jax.models.hierarchy import pixel_hierarchy
from cast_jax.train import inputs, sharding


def encoder_forward(model, uses_superpixels: bool) -> Callable:
  """(variables, images, superpixels) -> {'features' (B, D), 'hierarchy' (B, L, H, W) for CAST}.

  Works for a bare encoder and for MoCo (whose ``encoder`` submodule is used, skipping the heads).
  """

  def run(module, images, superpixels):
    encoder = getattr(module, 'encoder', module)
    return encoder(images, superpixels if uses_superpixels else None, train=False)

  def forward(variables, images, superpixels):
    out = model.apply(variables, images, superpixels, method=run)
    result = {'features': out['features'].astype(jnp.float32)}
    if uses_superpixels and 'intermediates' in out:
      result['hierarchy'] = pixel_hierarchy(out['intermediates'], superpixels)
    return result

  return forward


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Normalized (B, H, W, 3) float -> uint8 pixels."""
  pixels = (np.asarray(images, np.float32) * IMAGENET_STD + IMAGENET_MEAN) * 255.0
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


class Evaluator:
  """kNN accuracy and a picture of the first evaluation batch's hierarchies, for any encoder variables."""

  def __init__(self, config, model, mesh, uses_superpixels: bool):
    self.config, self.mesh, self.uses_superpixels = config, mesh, uses_superpixels
    self._forward = jax.jit(encoder_forward(model, uses_superpixels),
                            out_shardings=sharding.batch_sharding(mesh))
    self._local_batch = config.knn.batch_size // jax.process_count()

  def _features(self, variables, split: str, count: int, keep_first: bool = False):
    feats, labels, first = [], [], None
    for batch in inputs.eval_batches(self.config.data, split, self._local_batch, count, jax.process_index(),
                                     jax.process_count(), self.uses_superpixels):
      device_batch = sharding.global_batch({'image': batch['image'], 'superpixels': batch['superpixels']},
                                           self.mesh)
      out = self._forward(variables, device_batch['image'], device_batch['superpixels'])
      gathered = multihost_utils.process_allgather(
          {'features': out['features'], 'label': batch['label'], 'mask': batch['mask']}, tiled=True)
      keep = np.asarray(gathered['mask'], bool)
      feats.append(np.asarray(gathered['features'])[keep])
      labels.append(np.asarray(gathered['label'])[keep])
      if keep_first and first is None and 'hierarchy' in out:
        # Pictures come from this process's rows of the first batch (on process 0, the first examples).
        local = [s.data for s in out['hierarchy'].addressable_shards]
        first = {'image': to_uint8(batch['image']), 'superpixels': batch['superpixels'],
                 'hierarchy': np.concatenate([np.asarray(x) for x in local])[:len(batch['image'])]}
    return np.concatenate(feats), np.concatenate(labels), first

  def __call__(self, variables) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(scalars, images) for the writer."""
    knn = self.config.knn
    scalars, images = {}, {}
    test_f, test_l, first = self._features(variables, self.config.data.eval_split, knn.num_test, keep_first=True)
    if knn.enabled:
      train_f, train_l, _ = self._features(variables, knn.train_split, knn.num_train)
      result = knn_accuracy(train_f, train_l, test_f, test_l, num_classes=knn.num_classes, k=knn.k,
                            temperature=knn.temperature)
      scalars['knn_top1'] = result['top1']
      if 'top5' in result:
        scalars['knn_top5'] = result['top5']
    if first is not None and self.config.pictures.num_images > 0:
      images['hierarchy'] = visualize.batch_panel(first['image'], first['superpixels'], first['hierarchy'],
                                                  max_images=self.config.pictures.num_images)
    return scalars, images


def eval_variables(state) -> dict[str, Any]:
  return {'params': state.params, 'batch_stats': state.batch_stats}
