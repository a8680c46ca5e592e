"""``type='spml_miou'``: an SPML fine-tuned model scored as ``inference_softmax_suppix.py`` + ``benchmark_by_mIoU``.

Per image of the split (``evaluate.spml_inputs.prepare_test_image``): SEEDS (``data.num_superpixels``, 5 bins,
15 iterations, no wrap) at the original resolution, normalise, resize to max side ``data.test_image_size``
(cv2 linear for the image, nearest for the superpixels; 0 keeps the size), the model in eval mode at that size
(the superpixel map equals the image), argmax of the logits, the prediction back to the original size with
nearest. Images whose prepared size is the same go through the model together, ``batch_size`` at a time (static
shape, padding rows dropped), which gives the same per-image predictions as the original's batch 1.

SPML's benchmark over the split (and the processes): per class TP, TP + FN and TP + FP over pixels with
0 <= gt < n_cls, IoU_c = TP / (TP + FN + FP + 1e-12) x 100, mIoU = sum_c IoU_c / n_cls (a class absent from
both labels and predictions counts 0, unlike mmseg's nanmean), pixel accuracy = sum TP / sum (TP + FP) x 100.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cast_jax import xla_cpu
from cast_jax.data.decode import decode_image
from cast_jax.evaluate.spml_inputs import prepare_test_image, restore_prediction
from cast_jax.evaluate.spml_retrieval import check_labels, iou_counts, miou_from_counts
from cast_jax.evaluators.base import Evaluator, register, variables_of
from cast_jax.evaluators.miou import _host_variables, sum_over_processes
from cast_jax.train import inputs


@register('spml_miou')
class SPMLMeanIoUEvaluator(Evaluator):
  """Scalars: ``miou``, ``pixel_acc`` (percent) and ``num_examples``.

  Options (0: from the config): num_classes (``model.spml_classes``), test_image_size
  (``data.test_image_size``), num_superpixels (``data.num_superpixels``).
  """

  OPTIONS = {'num_classes': 0, 'test_image_size': 0, 'num_superpixels': 0}

  def __init__(self, name, entry, context):
    super().__init__(name, entry, context)
    config, data = context.config, context.config.data
    self.num_classes = int(self.options['num_classes'] or config.model.get('spml_classes') or 0)
    if self.num_classes <= 0:
      raise ValueError(f'config.evals.{name} (type spml_miou) needs SPML\'s classifier: set '
                       f'config.model.spml_classes or config.evals.{name}.num_classes')
    self.test_image_size = int(self.options['test_image_size'] or data.get('test_image_size') or 0)
    self.num_superpixels = int(self.options['num_superpixels'] or data.get('num_superpixels') or 0)
    if self.num_superpixels <= 0:
      raise ValueError(f'config.evals.{name} (type spml_miou) needs a superpixel count: set '
                       f'config.data.num_superpixels or config.evals.{name}.num_superpixels')
    self.max_segments = config.model.get('max_segments')
    model = context.model

    @xla_cpu.jit
    def predict(variables, images, superpixels):
      """(B, h, w, 3), (B, h, w) -> (B, h, w) uint8 argmax class."""
      logits = model.apply(variables, images, superpixels, train=False)['logits']
      return jnp.argmax(logits, axis=-1).astype(jnp.uint8)

    self._predict = predict

  def _example(self, source, index: int):
    record = source[index]
    image, reason = decode_image(record['image'])
    if image is None:
      raise ValueError(f'{self.split} example {index}: the image cannot be decoded ({reason})')
    label = record.get('label_map')
    check_labels(None if label is None else np.asarray(label), self.num_classes, f'{self.split} example {index}')
    label = np.asarray(label)
    if label.ndim == 3 and label.shape[-1] == 1:
      label = label[..., 0]
    if label.shape != image.shape[:2]:
      raise ValueError(f'{self.split} example {index}: image {image.shape[:2]} and label map {label.shape} differ '
                       'in size; every label map must cover its image pixel for pixel')
    return prepare_test_image(image, label, self.test_image_size, self.num_superpixels, self.max_segments)

  def run(self, target, step):
    del step
    variables = _host_variables(variables_of(target))
    source = inputs.make_source(self.context.config.data, self.split)
    count = len(source) if self.num_examples <= 0 else min(self.num_examples, len(source))
    indices = [i * len(source) // count for i in range(count)][jax.process_index()::jax.process_count()]
    batch = max(1, self.batch_size // jax.process_count())
    totals = np.zeros((3, self.num_classes), np.int64)  # tp_fn, tp_fp, tp: pixel counts, exact
    pending: dict[tuple[int, int], list[dict[str, np.ndarray]]] = {}

    def flush(key):
      rows = pending.pop(key, [])
      if not rows:
        return
      take = list(range(len(rows))) + [0] * (batch - len(rows))  # static batch: padding rows repeat row 0
      predictions = np.asarray(self._predict(variables, np.stack([rows[i]['image'] for i in take]),
                                             np.stack([rows[i]['superpixels'] for i in take])))
      for row, prediction in zip(rows, predictions):
        restored = restore_prediction(prediction, row['labels_orig'].shape)
        totals[:] += np.stack(iou_counts(restored, row['labels_orig'], self.num_classes)).astype(np.int64)

    for index in indices:
      prepared = self._example(source, index)
      key = tuple(prepared['image'].shape[:2])
      pending.setdefault(key, []).append(prepared)
      if len(pending[key]) == batch:
        flush(key)
    for key in list(pending):
      flush(key)
    if jax.process_count() > 1:
      # float64 or int64 would travel as 32 bits without jax_enable_x64 (wrong above 2^24 / 2^31 pixels).
      totals = sum_over_processes(totals)
    _, miou, pixel_acc = miou_from_counts(*totals)
    return {'miou': float(miou), 'pixel_acc': float(pixel_acc) * 100.0, 'num_examples': int(count)}, {}
