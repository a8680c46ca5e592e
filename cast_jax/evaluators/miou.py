"""``type='miou'``: dataset-level mIoU of a Segmenter, as mmseg 0.14 computes it for ``segm/eval/miou_cast``.

Per image of the split (label map at the original resolution, 255 ignored, ADE20K's zero label reduced by the
recipe): the eval recipe (keep-ratio resize to ``data.img_scale``, Segmenter normalisation), then

* an image whose size is exactly the window (and which the resize left alone, e.g. PartWorld at the crop size)
  is segmented whole, with other such images, in batches of the evaluator's ``batch_size`` (static shape,
  padding rows masked out of the counts) — the same result as a one-window sliding window (the merge divides by
  a count of 1 and resizes to the same size, both exact), softmax, argmax;
* any other image goes through ``sliding_window.sliding_window_inference`` (short-side upsampling to the window,
  windows, per-window SEEDS, averaged logits) with ``out_size`` its original size: the window grid's merged
  logits are resized bilinearly (align_corners=False, no antialias) once, straight to the label map's
  resolution, then softmax and argmax, as ``merge_windows`` with ``ori_shape``. This runs on the host in
  numpy: the sizes vary per image, and only the model (static (window_batch, w, w) windows) is jitted.

A (C, C) confusion matrix (rows: label, columns: prediction) over valid pixels is accumulated in int64 on the
host (each jitted batch's int32 counts hold at most batch x w x w pixels), summed over the whole split and over
processes (each process segments every P-th image; the gather carries int64 counts as two int32 halves, so
no count wraps at 2^31); from it:

    IoU_c = I_c / (P_c + L_c - I_c)   (NaN where the union is 0),   mIoU = nanmean_c IoU_c x 100
    aAcc = sum_c I_c / valid pixels x 100,   mAcc = nanmean_c I_c / L_c x 100

with I_c the diagonal, P_c / L_c the column / row sums: mmseg's sums of per-image intersections and unions.

On-device superpixels (``data.superpixels_on_device`` with ``data.superpixels='jax_slic'``): the host computes no
map; both jitted functions (whole images, window groups) take the uint8 ``sliding_window.window_pixels`` of their
images and make the maps with jax_slic before the model, the same maps as the host path's ``compute_superpixels``
of the same pixels. Cutting, upsampling and merging the windows stay on the host, as without the option.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from cast_jax import xla_cpu
from cast_jax.data.decode import decode_image
from cast_jax.data.segmentation import IGNORE_LABEL, SegmentationEval
from cast_jax.evaluators.base import Evaluator, register, variables_of
from cast_jax.sliding_window import SlidingWindow, denormalize_to_uint8, sliding_window_inference, window_pixels
from cast_jax.superpixels import compute_superpixels, preset
from cast_jax.train import device_superpixels, inputs


def confusion_matrix(labels, predictions, num_classes: int, valid=None):
  """(C, C) int32 counts of (label, prediction) over pixels whose label is in [0, C) (255 and others skipped)
  and ``valid``. labels, predictions: int arrays of one shape (e.g. (B, H, W)); valid: bool, broadcastable
  (e.g. (B, 1, 1) row mask). jnp; static shapes, usable under jit."""
  labels = jnp.asarray(labels).astype(jnp.int32)
  predictions = jnp.asarray(predictions).astype(jnp.int32)
  keep = (labels >= 0) & (labels < num_classes) & (predictions >= 0) & (predictions < num_classes)
  if valid is not None:
    keep = keep & jnp.broadcast_to(jnp.asarray(valid, bool), labels.shape)
  index = jnp.where(keep, labels * num_classes + predictions, 0)
  counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index.reshape(-1)].add(
      keep.reshape(-1).astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def confusion_matrix_numpy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """``confusion_matrix`` in numpy int64, for images of any size (no compilation per shape)."""
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  predictions = np.asarray(predictions).astype(np.int64).reshape(-1)
  keep = (labels >= 0) & (labels < num_classes)
  return np.bincount(labels[keep] * num_classes + predictions[keep],
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# The gather of ``sum_over_processes`` carries each int64 count as two int32 digits of this base (jax without x64
# would cast int64 to int32 and wrap counts above 2^31 - 1).
_DIGIT = 1 << 30


def sum_over_processes(counts: np.ndarray, allgather=None) -> np.ndarray:
  """Sum of every process's int64 ``counts`` (any shape, values in [0, 2^61)), exact in int64.

  ``allgather``: x (int32 array) -> (P, *x.shape), default ``multihost_utils.process_allgather``; it may be
  called with jax's int32 limit, so each count travels as two int32 digits (high, low) of base 2^30 and is
  recombined and summed on the host in int64."""
  counts = np.asarray(counts)
  if counts.dtype.kind not in 'iu':
    raise ValueError(f'counts must be an integer array; got dtype {counts.dtype}')
  counts = counts.astype(np.int64)
  if counts.size and (counts.min() < 0 or counts.max() >= _DIGIT * (1 << 31)):
    raise ValueError(f'counts must lie in [0, 2^61) to be gathered exactly; got [{counts.min()}, {counts.max()}]')
  digits = np.stack([counts // _DIGIT, counts % _DIGIT]).astype(np.int32)
  gathered = np.asarray((allgather or multihost_utils.process_allgather)(digits)).astype(np.int64)
  return (gathered[:, 0] * _DIGIT + gathered[:, 1]).sum(0)


def scores(confusion: np.ndarray) -> dict[str, float]:
  """mIoU, mAcc, aAcc (percent) of a (C, C) confusion matrix, as mmseg 0.14's ``eval_metrics``."""
  confusion = np.asarray(confusion, np.float64)
  intersect = np.diag(confusion)
  area_label, area_pred = confusion.sum(1), confusion.sum(0)
  union = area_label + area_pred - intersect
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = intersect / union
    acc = intersect / area_label
    aacc = intersect.sum() / confusion.sum()
  nanmean = lambda x: float(np.nanmean(x)) * 100 if np.any(~np.isnan(x)) else float('nan')  # noqa: E731
  return {'miou': nanmean(iou), 'macc': nanmean(acc), 'aacc': float(aacc) * 100}


def _host_variables(variables):
  """The variables as host numpy, gathered from every process when sharded across them."""
  leaves = jax.tree_util.tree_leaves(variables)
  if all(getattr(leaf, 'is_fully_addressable', True) for leaf in leaves):
    return jax.device_get(variables)
  return multihost_utils.process_allgather(variables, tiled=True)


def _jit_for(config):
  """``jax.jit`` with cast_jax's XLA CPU options, and cheap code generation when ``config.fast_compile`` (tests)."""
  return functools.partial(xla_cpu.jit, fast_compile=bool(config.get('fast_compile')))


@register('miou')
class MeanIoUEvaluator(Evaluator):
  """Scalars: ``miou``, ``macc``, ``aacc`` (percent) and ``num_examples`` (images scored).

  Options (0 / None: from the config): num_classes (``model.seg_classes``), window (``data.crop_size``),
  stride (``data.window_stride``), window_batch (``data.window_batch``: windows per model call), ignore_label.
  """

  OPTIONS = {'num_classes': 0, 'window': 0, 'stride': 0, 'window_batch': 0, 'ignore_label': IGNORE_LABEL}

  def __init__(self, name, entry, context):
    super().__init__(name, entry, context)
    config, data = context.config, context.config.data
    self.num_classes = int(self.options['num_classes'] or config.model.get('seg_classes') or 0)
    if self.num_classes <= 0:
      raise ValueError(f'config.evals.{name} (type miou) needs a Segmenter: set config.model.seg_classes or '
                       f'config.evals.{name}.num_classes')
    for key in ('img_scale', 'crop_size'):
      if key not in data:
        raise ValueError(f'config.evals.{name} (type miou) reads config.data.{key}; the data block has none '
                         '(use config_lib.segmenter_defaults)')
    window = int(self.options['window'] or data.crop_size)
    overrides = dict(data.get('superpixel_overrides', {}) or {})
    overrides['invert_uint8'] = bool(data.get('invert_quirk', True))
    self.settings = SlidingWindow(window=window, stride=int(self.options['stride'] or data.get('window_stride')
                                                            or window),
                                  window_batch=int(self.options['window_batch'] or data.get('window_batch') or 1),
                                  superpixels=preset(data.get('superpixels', 'segmentation'), **overrides))
    self.recipe = SegmentationEval(img_scale=tuple(data.img_scale), ignore_label=int(self.options['ignore_label']),
                                   reduce_zero_label=bool(data.get('reduce_zero_label', False)),
                                   num_classes=self.num_classes)
    self.max_segments = config.model.get('max_segments')
    model, n = context.model, self.num_classes
    # On-device superpixels: the jitted functions below take uint8 window pixels and make the maps themselves.
    self.on_device = device_superpixels.enabled(config, context.uses_superpixels)
    maps = (device_superpixels.superpixel_fn(data, self.max_segments) if self.on_device
            else lambda superpixels: superpixels)

    jit = _jit_for(config)

    @jit
    def whole_images(variables, images, superpixels, labels, valid):
      """(B, w, w, 3), (B, w, w) maps or (B, w, w, 3) uint8 pixels, (B, w, w) labels, (B,) valid rows -> (C, C)
      confusion of the batch."""
      masks = model.apply(variables, images, maps(superpixels), train=False)['masks']
      # The argmax of the softmax, as merge_windows's caller takes it (exp may tie near-equal logits).
      return confusion_matrix(labels, jnp.argmax(jax.nn.softmax(masks, -1), -1), n, valid[:, None, None])

    def windows(variables, images, superpixels):
      made = maps(superpixels)
      masks = model.apply(variables, images, made, train=False)['masks']
      return (masks, made) if self.on_device else masks

    self._whole_images = whole_images
    self._windows = jit(windows)

  def _superpixels(self, image: np.ndarray) -> np.ndarray:
    """The whole image's map (host path) or the uint8 pixels its map is made of (on-device superpixels)."""
    if self.on_device:
      return window_pixels(image, self.settings)
    return compute_superpixels(denormalize_to_uint8(image, self.settings.mean, self.settings.std),
                               self.settings.superpixels, self.max_segments).astype(np.int32)

  def _example(self, source, index: int) -> dict[str, np.ndarray]:
    record = source[index]
    image, reason = decode_image(record['image'])
    if image is None:
      raise ValueError(f"{record.get('file_name') or f'{self.split} example {index}'}: the image cannot be decoded "
                       f'({reason})')
    name = record.get('file_name') or f'{self.split} example {index}'
    # The recipe checks the label map against the image's size and the model's classes, naming the file.
    return self.recipe({'image': image, 'label_map': np.asarray(record['label_map']), 'file_name': name})

  def confusion(self, variables) -> np.ndarray:
    """(C, C) int64 counts of (label, prediction) over the evaluated images of the split (each process segments
    every P-th of them; the counts are summed over processes). variables: host numpy."""
    source = inputs.make_source(self.context.config.data, self.split)
    indices = self._indices(len(source))[jax.process_index()::jax.process_count()]
    window, batch = self.settings.window, self.batch_size // jax.process_count()
    confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
    pending: list[dict[str, np.ndarray]] = []

    def flush():
      rows = len(pending)
      if not rows:
        return np.zeros_like(confusion)
      take = list(range(rows)) + [0] * (batch - rows)  # static (batch, w, w): padding rows repeat row 0
      images = np.stack([pending[i]['image'] for i in take])
      superpixels = np.stack([pending[i]['superpixels'] for i in take])
      labels = np.stack([pending[i]['label_map'] for i in take])
      out = self._whole_images(variables, images, superpixels, labels, np.arange(batch) < rows)
      pending.clear()
      return np.asarray(out, np.int64)

    for index in indices:
      example = self._example(source, index)
      image, label = example['image'], example['label_map']
      original = tuple(int(v) for v in example['ori_shape'])
      if label.shape != original:
        raise ValueError(f'{self.split} example {index}: label map {label.shape} is not at the image\'s original '
                         f'size {original}; mIoU is measured at the original resolution')
      if image.shape[:2] == (window, window) and original == (window, window):
        pending.append(dict(example, superpixels=self._superpixels(image)))
        if len(pending) == batch:
          confusion += flush()
        continue
      result = sliding_window_inference(lambda x, s: self._windows(variables, x, s), image, self.settings,
                                        max_segments=self.max_segments, out_size=original, pixels_in=self.on_device)
      confusion += confusion_matrix_numpy(label, result['prediction'], self.num_classes)
    confusion += flush()
    if jax.process_count() > 1:
      confusion = sum_over_processes(confusion)
    return confusion

  def _indices(self, size: int) -> list[int]:
    """The evaluated examples of a split of ``size``: all, or ``num_examples`` spread evenly over it."""
    count = size if self.num_examples <= 0 else min(self.num_examples, size)
    return [i * size // count for i in range(count)]

  def run(self, target, step):
    del step
    variables = _host_variables(variables_of(target))
    confusion = self.confusion(variables)
    scalars = scores(confusion)
    scalars['num_examples'] = len(self._indices(len(inputs.make_source(self.context.config.data, self.split))))
    return scalars, {}
