"""Scoring a fine-tuned SPML model (``SPMLEmbedding`` with its SoftmaxClassifier) on a labelled split.

Per image, as SPML's softmax inference: SEEDS at the original resolution, normalise, resize to max side
``test_image_size`` (``spml_inputs.prepare_test_image``), forward in eval mode, argmax of the logits (at the
superpixel map's resolution, which is the resized image's), the prediction back to the original size with
nearest; the benchmark's counts as for retrieval (``spml_retrieval.iou_counts``).
"""

from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from cast_jax import xla_cpu
from cast_jax.evaluate.spml_inputs import prepare_test_image, restore_prediction
from cast_jax.evaluate.spml_retrieval import check_labels, iou_counts, miou_from_counts


def make_predict(model, variables, jit=None):
  """(h, w, 3) image, (h, w) superpixels -> (h, w) uint8 argmax class. One compilation per distinct (h, w).
  ``jit``: default ``xla_cpu.jit``."""
  jit = jit or xla_cpu.jit

  @jit
  def run(variables, image, superpixels):
    logits = model.apply(variables, image[None], superpixels[None], train=False)['logits'][0]
    return jnp.argmax(logits, axis=-1).astype(jnp.uint8)

  return lambda image, superpixels: run(variables, jnp.asarray(image), jnp.asarray(superpixels))


def score_finetuned(predict, items, num_classes: int, test_image_size: int = 512, num_superpixels: int = 1024,
                    max_segments: Optional[int] = None) -> dict[str, Any]:
  """(name, image_uint8, labels) items -> tp_fn / tp_fp / tp, iou, miou, pixel_acc and per-image predictions."""
  tp_fn = tp_fp = tp = np.zeros(num_classes)
  predictions = {}
  for name, image, label in items:
    check_labels(label, num_classes, f'image {name}')
    prepared = prepare_test_image(image, label, test_image_size, num_superpixels, max_segments)
    prediction = restore_prediction(np.asarray(predict(prepared['image'], prepared['superpixels'])), np.shape(label))
    predictions[name] = prediction
    counts = iou_counts(prediction, label, num_classes)
    tp_fn, tp_fp, tp = tp_fn + counts[0], tp_fp + counts[1], tp + counts[2]
  iou, miou, acc = miou_from_counts(tp_fn, tp_fp, tp)
  return {'tp_fn': tp_fn, 'tp_fp': tp_fp, 'tp': tp, 'iou': iou, 'miou': float(miou), 'pixel_acc': float(acc),
          'predictions': predictions}
