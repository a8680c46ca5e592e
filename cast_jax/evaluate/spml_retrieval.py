"""SPML's segment retrieval ("before fine-tuning"): prototypes of level-4 segments, a labelled memory, top-k vote.

The original (``SPML/pyscripts/inference/prototype_suppix.py``, ``inference_suppix.py``, ``Segsort.predictions``,
``benchmark_by_mIoU.iou_stats``):

1. every memory image: prototype of each level-4 segment = normalize(sum of L2-normalised pixel embeddings);
   its label = the majority ground-truth label of its pixels, 255 counted as a label (ties -> the smaller
   label); prototypes labelled 255 are then dropped;
2. every query segment: the same prototype, its top-``k`` memory prototypes by dot product, the unweighted
   majority of their labels (ties -> the smaller label), painted on the segment's pixels;
3. the benchmark: over pixels with 0 <= gt < n_cls, TP / TP+FP / TP+FN per class,
   IoU = TP / (TP + FP + FN + 1e-12) * 100, mIoU = the sum over all n_cls classes / n_cls.

Shapes are static: an image's segments live in K4 slots (the last pooling level's cluster count) with a
``present`` mask, and the memory is a padded (M, C) array with a ``valid`` mask. ``topk_labels`` scans the memory
in fixed chunks keeping a running top-k, so memory use is (Q, chunk), and ``sharded_topk_labels`` splits the
memory over devices (each device scans its shard, the k candidates of every device are merged).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cast_jax import xla_cpu
from cast_jax.models.spml import IGNORE_LABEL, l2_normalize

TOP_K = 20


# ------------------------------------------------------------------------------------------------ input checks

def check_labels(labels, num_classes: int, what: str = 'labels') -> None:
  """Host-side check: ids in [0, num_classes) or 255, and not an image without any label map."""
  if labels is None:
    raise ValueError(f'{what}: no label map; every memory image needs its ground truth (a (H, W) class-index '
                     'map, 255 = ignore). Check the list file names a label PNG for every image.')
  values = np.unique(np.asarray(labels))
  bad = values[((values < 0) | (values >= num_classes)) & (values != IGNORE_LABEL)]
  if bad.size:
    raise ValueError(f'{what}: label ids {bad.tolist()[:10]} are outside [0, {num_classes}) and not the ignore '
                     f'id {IGNORE_LABEL}; convert palette PNGs to class indices (not convert("L")) or fix n_cls.')


# ------------------------------------------------------------------------------------------- per-image segments

@functools.partial(jax.jit, static_argnames=('num_segments',))
def segment_prototypes(normalized_embedding, level4, num_segments: int):
  """normalized_embedding (h, w, C) unit rows, level4 (h, w) ids in [0, K) -> prototypes (K, C) =
  normalize(segment sums) and present (K,) bool (empty slots hold zeros)."""
  flat = normalized_embedding.reshape(-1, normalized_embedding.shape[-1]).astype(jnp.float32)
  ids = level4.reshape(-1)
  sums = jax.ops.segment_sum(flat, ids, num_segments=num_segments)
  counts = jax.ops.segment_sum(jnp.ones_like(ids), ids, num_segments=num_segments)
  return l2_normalize(sums), counts > 0


@functools.partial(jax.jit, static_argnames=('num_segments', 'num_classes'))
def majority_labels(level4, labels, num_segments: int, num_classes: int):
  """(K,) majority label of each segment's pixels, 255 counted as a label (ties -> smaller label, so a tie
  between a class and 255 goes to the class). labels must be checked with ``check_labels`` first."""
  ids = level4.reshape(-1)
  lab = labels.reshape(-1).astype(jnp.int32)
  bins = jnp.where(lab == IGNORE_LABEL, num_classes, lab)  # 255 sorts last: bin n_cls
  counts = jnp.zeros((num_segments, num_classes + 1), jnp.int32).at[ids, bins].add(1)
  best = jnp.argmax(counts, axis=-1).astype(jnp.int32)  # argmax takes the first maximum: the smaller label
  return jnp.where(best == num_classes, IGNORE_LABEL, best)


# ----------------------------------------------------------------------------------------------------- memory

class Memory:
  """Kept memory prototypes padded to a multiple of ``chunk`` rows.

  prototypes (M_pad, C) float32, labels (M_pad,) int32, valid (M_pad,) bool; ``size`` real rows.
  """

  def __init__(self, prototypes: np.ndarray, labels: np.ndarray, chunk: int = 4096, top_k: int = TOP_K,
               multiple_of: int = 1):
    prototypes, labels = np.asarray(prototypes, np.float32), np.asarray(labels, np.int32)
    keep = labels != IGNORE_LABEL
    prototypes, labels = prototypes[keep], labels[keep]
    if prototypes.shape[0] == 0:
      raise ValueError('the retrieval memory is empty: no memory segment has a label other than 255. Build it '
                       'from labelled train images (SPML uses train+, 10,582 images).')
    if prototypes.shape[0] < top_k:
      raise ValueError(f'the retrieval memory holds {prototypes.shape[0]} labelled prototypes, fewer than '
                       f'top_k={top_k}; add memory images or lower top_k.')
    self.size = prototypes.shape[0]
    self.chunk = min(chunk, int(np.ceil(self.size / multiple_of)))
    block = self.chunk * multiple_of
    padded = int(np.ceil(self.size / block)) * block
    self.prototypes = np.zeros((padded, prototypes.shape[1]), np.float32)
    self.prototypes[:self.size] = prototypes
    self.labels = np.zeros((padded,), np.int32)
    self.labels[:self.size] = labels
    self.valid = np.arange(padded) < self.size
    self.top_k = top_k


def build_memory(prototypes, present, labels, **kwargs) -> Memory:
  """Per memory image (K, C) prototypes, (K,) present and (K,) majority labels (stacked (N, K, ...)) ->
  ``Memory`` of the present, non-255 segments in file order."""
  present = np.asarray(present, bool)
  return Memory(np.asarray(prototypes)[present], np.asarray(labels)[present], **kwargs)


# ------------------------------------------------------------------------------------------------ top-k and vote

def _merge_topk(values, labels, new_values, new_labels, k: int):
  both_v = jnp.concatenate([values, new_values], axis=1)
  both_l = jnp.concatenate([labels, new_labels], axis=1)
  top_v, idx = jax.lax.top_k(both_v, k)
  return top_v, jnp.take_along_axis(both_l, idx, axis=1)


def _scan_topk(queries, prototypes, labels, valid, k: int, chunk: int):
  """Running top-k over the memory in chunks of ``chunk`` rows: (Q, k) similarities and labels."""
  num_chunks = prototypes.shape[0] // chunk
  dim = prototypes.shape[1]

  def body(carry, xs):
    protos, labs, ok = xs
    sims = jnp.einsum('qc,mc->qm', queries, protos, precision=jax.lax.Precision.HIGHEST)
    sims = jnp.where(ok[None], sims, -jnp.inf)  # padding never enters the top-k
    kk = min(k, chunk)
    top_v, idx = jax.lax.top_k(sims, kk)
    top_l = jnp.take(labs, idx)
    return _merge_topk(*carry, top_v, top_l, k), None

  init = (jnp.full((queries.shape[0], k), -jnp.inf, jnp.float32), jnp.full((queries.shape[0], k), -1, jnp.int32))
  xs = (prototypes.reshape(num_chunks, chunk, dim), labels.reshape(num_chunks, chunk), valid.reshape(num_chunks, chunk))
  (values, out_labels), _ = jax.lax.scan(body, init, xs)
  return values, out_labels


@functools.partial(jax.jit, static_argnames=('k', 'chunk'))
def topk_labels(queries, prototypes, labels, valid, k: int = TOP_K, chunk: int = 4096):
  """queries (Q, C) unit prototypes against the memory (M, C) (M a multiple of chunk) -> (Q, k) similarities
  (descending) and the labels of those memory prototypes."""
  if prototypes.shape[0] % chunk or prototypes.shape[0] < k:
    raise ValueError(f'memory rows {prototypes.shape[0]} must be a multiple of chunk={chunk} and at least k={k}; '
                     'build the memory with Memory(...), which pads and masks it')
  return _scan_topk(queries.astype(jnp.float32), prototypes, labels, valid, k, chunk)


def sharded_topk_labels(queries, memory: Memory, mesh: jax.sharding.Mesh, axis: str = 'memory'):
  """``topk_labels`` with the memory split over ``mesh``'s ``axis``: each device scans its shard in chunks,
  the k best of every device are gathered and merged. Build the memory with ``multiple_of=mesh.shape[axis]``."""
  from jax.sharding import NamedSharding, PartitionSpec as P

  k, chunk, devices = memory.top_k, memory.chunk, mesh.shape[axis]
  if memory.prototypes.shape[0] % (chunk * devices):
    raise ValueError(f'memory rows {memory.prototypes.shape[0]} are not a multiple of chunk x devices '
                     f'({chunk} x {devices}); build it with Memory(..., multiple_of={devices})')

  def local(q, protos, labs, ok):
    values, out_labels = _scan_topk(q, protos, labs, ok, k, chunk)
    all_v = jax.lax.all_gather(values, axis, axis=1, tiled=True)  # (Q, devices * k)
    all_l = jax.lax.all_gather(out_labels, axis, axis=1, tiled=True)
    top_v, idx = jax.lax.top_k(all_v, k)
    return top_v, jnp.take_along_axis(all_l, idx, axis=1)

  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P(axis), P(axis)), out_specs=(P(), P()),
                             check_vma=False))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P(axis)))  # noqa: E731
  return fn(jnp.asarray(queries, jnp.float32), put(memory.prototypes), put(memory.labels), put(memory.valid))


@functools.partial(jax.jit, static_argnames=('num_classes',))
def majority_vote(top_labels, num_classes: int):
  """(Q, k) labels in [0, n_cls) -> (Q,) most frequent label (ties -> smaller label) and (Q,) winning count
  minus runner-up count (0 = a tie)."""
  counts = jnp.sum(jax.nn.one_hot(top_labels, num_classes, dtype=jnp.int32), axis=1)
  best = jnp.argmax(counts, axis=-1).astype(jnp.int32)
  ordered = jnp.sort(counts, axis=-1)
  return best, ordered[:, -1] - ordered[:, -2]


def retrieve(queries, memory: Memory, num_classes: int, mesh: Optional[jax.sharding.Mesh] = None):
  """Query prototypes (Q, C) -> (Q,) predicted labels, (Q, k) neighbour labels, (Q, k) similarities."""
  if mesh is None:
    values, labels = topk_labels(jnp.asarray(queries), memory.prototypes, memory.labels, memory.valid,
                                 k=memory.top_k, chunk=memory.chunk)
  else:
    values, labels = sharded_topk_labels(queries, memory, mesh)
  prediction, _ = majority_vote(labels, num_classes)
  return prediction, labels, values


# -------------------------------------------------------------------------------------------------- benchmark

def iou_counts(prediction, ground_truth, num_classes: int):
  """SPML's ``iou_stats`` for one image: (tp_fn, tp_fp, tp), each (n_cls,) float64, over 0 <= gt < n_cls."""
  gt = np.asarray(ground_truth).reshape(-1).astype(np.int64)
  pred = np.asarray(prediction).reshape(-1).astype(np.int64)
  if gt.shape != pred.shape:
    raise ValueError(f'prediction and ground truth differ in size: {np.shape(prediction)} vs {np.shape(ground_truth)}')
  keep = (gt >= 0) & (gt < num_classes)
  gt, pred = gt[keep], pred[keep]
  tp_fn = np.bincount(gt, minlength=num_classes)[:num_classes].astype(np.float64)
  tp_fp = np.bincount(pred[(pred >= 0) & (pred < num_classes)], minlength=num_classes)[:num_classes].astype(np.float64)
  tp = np.bincount(gt[pred == gt], minlength=num_classes)[:num_classes].astype(np.float64)
  return tp_fn, tp_fp, tp


def miou_from_counts(tp_fn, tp_fp, tp):
  """(iou (n_cls,) in percent, mIoU over all classes (absent ones count 0), pixel accuracy as a fraction)."""
  iou = tp / (tp_fn + tp_fp - tp + 1e-12) * 100.0
  return iou, iou.sum() / iou.shape[0], tp.sum() / (tp_fp.sum() + 1e-12)


# ------------------------------------------------------------------------------------------------------ model

def load_moco_for_retrieval(path, spec, loaded=None):
  """SPML's retrieval model from a ``cast_seg_pretrain`` MoCo checkpoint (``cast_small_p512_retrieval``).

  The query encoder goes through ``loading.moco_seg_into_seg`` (position table resampled to ``spec``'s grid);
  the projector (``module.base_encoder.head``) is kept with its BatchNorm statistics. ``spec``: the ``cast_seg``
  ModelSpec. loaded: (source spec, variables) already read (a converted .npz or a workdir); default: convert
  the PyTorch file at ``path``. Returns (SPMLEmbedding, variables {'params', 'batch_stats'} with 'encoder' and
  'projector').
  """
  from cast_jax import convert, loading
  from cast_jax.models import build_encoder
  from cast_jax.models.spml import SPMLEmbedding

  source, loaded_variables = loaded if loaded is not None else _converted(path)
  _check_moco(source, loaded_variables, path)
  fresh = {c: convert.unflatten({p: np.zeros(s, np.float32) for p, s in shapes.items()})
           for c, shapes in convert.expected_shapes(spec).items()}
  rules = loading.CROSS_KIND[(source.kind, spec.kind)]()
  encoder, _ = loading.start_from(fresh, spec, source, loaded_variables, rules, path=str(path))
  variables = {col: {'encoder': encoder[col], 'projector': loaded_variables[col]['projector']}
               for col in ('params', 'batch_stats')}
  model = SPMLEmbedding(build_encoder(spec), projector_dims=(source.moco_mlp_dim, source.moco_dim))
  return model, jax.tree_util.tree_map(jnp.asarray, variables)


def _converted(path):
  from cast_jax import convert

  moco = convert.convert_checkpoint(path)
  return moco.spec, moco.variables


def _check_moco(source, variables, path) -> None:
  if not source.moco or 'projector' not in variables.get('params', {}):
    raise ValueError(f'{path}: retrieval needs a MoCo checkpoint with its projector; got a {source.kind} '
                     f'model without one. Use the cast_seg_pretrain MoCo checkpoint (e.g. the epoch-150 one), or '
                     "a MoCo run folder of a 'cast' model (configs/demo.py).")


def last_stage_model(source, variables, path='the checkpoint', num_clusters=None, max_segments=None):
  """The retrieval model of a ``cast`` MoCo checkpoint (the MoCo demo): ``LastStageEmbedding`` (its docstring
  says why the last stage's tokens). source, variables: the checkpoint's spec and {'params', 'batch_stats'}
  (``run_folder.load_variables``); num_clusters / max_segments override the checkpoint's (SPML changes the
  cluster counts for its segmentation stage; None keeps them). Returns (model, variables)."""
  from cast_jax.models import build_encoder
  from cast_jax.models.spml import LastStageEmbedding

  if source.kind != 'cast':
    raise ValueError(f'{path} holds a {source.kind} model; the last-stage retrieval reads kind \'cast\' MoCo '
                     "checkpoints (configs/demo.py); cast_seg_pretrain ones go through load_moco_for_retrieval")
  _check_moco(source, variables, path)
  spec = source.replace(moco=False, num_classes=0,
                        num_clusters=tuple(num_clusters) if num_clusters else source.num_clusters,
                        max_segments=max_segments or source.max_segments)
  params = {'encoder': variables['params']['encoder'], 'projector': variables['params']['projector'],
            'norm': variables['params']['encoder']['norm']}
  stats = {'encoder': variables.get('batch_stats', {}).get('encoder', {}),
           'projector': variables['batch_stats']['projector']}
  model = LastStageEmbedding(build_encoder(spec), projector_dims=(source.moco_mlp_dim, source.moco_dim))
  return model, jax.tree_util.tree_map(jnp.asarray, {'params': params, 'batch_stats': stats})


# ---------------------------------------------------------------------------------------- images to the score

def make_apply(model, variables, jit=None, level: Optional[int] = None):
  """jit(model.apply) in eval mode for one image: (h, w, 3) image, (h, w) superpixels -> (K4, C) prototypes,
  (K4,) present and (h, w) level-4 ids. One compilation per distinct (h, w). ``jit``: e.g. a jit with other
  compiler options (default ``xla_cpu.jit``). level: the pooling level whose segments make the prototypes
  (1-based; None: the last, SPML's level 4); K4 is then that level's cluster count."""
  from cast_jax.models.hierarchy import pixel_hierarchy

  clusters = tuple(model.encoder.num_clusters)
  level = len(clusters) if level is None else int(level)
  if not 1 <= level <= len(clusters):
    raise ValueError(f'segment level {level} does not exist: the model pools {len(clusters)} times '
                     f'(clusters {clusters}); choose 1..{len(clusters)} (SPML uses the last, level 4)')
  k4 = clusters[level - 1]
  jit = jit or xla_cpu.jit

  @jit
  def run(variables, image, superpixels):
    out = model.apply(variables, image[None], superpixels[None], train=False)
    if level == len(clusters):
      ids = out['level4'][0]
    else:
      ids = pixel_hierarchy(out['intermediates'], superpixels[None])[0, level - 1]
    protos, present = segment_prototypes(out['normalized_embedding'][0], ids, num_segments=k4)
    return protos, present, ids

  return lambda image, superpixels: run(variables, jnp.asarray(image), jnp.asarray(superpixels))


def memory_from_images(apply, items, num_classes: int, test_image_size: int = 512, num_superpixels: int = 1024,
                       max_segments: Optional[int] = None, **memory_kwargs) -> Memory:
  """The memory of ``prototype_suppix.py`` from (name, image_uint8, labels) items (train+ for VOC).

  Each image: SEEDS, normalise, resize (``spml_inputs.prepare_test_image``), forward, level-4 prototypes and
  their majority labels (255 counted); 255-labelled prototypes are dropped by ``Memory``."""
  from cast_jax.evaluate.spml_inputs import prepare_test_image

  protos, present, labels = [], [], []
  for name, image, label in items:
    check_labels(label, num_classes, f'memory image {name}')
    prepared = prepare_test_image(image, label, test_image_size, num_superpixels, max_segments)
    p, ok, level4 = apply(prepared['image'], prepared['superpixels'])
    protos.append(np.asarray(p))
    present.append(np.asarray(ok))
    labels.append(np.asarray(majority_labels(level4, prepared['labels'], num_segments=p.shape[0],
                                             num_classes=num_classes)))
  if not protos:
    raise ValueError('no memory images given: the retrieval memory is built from labelled train images')
  return build_memory(np.stack(protos), np.stack(present), np.stack(labels), **memory_kwargs)


def score_split(apply, items, memory: Memory, num_classes: int, test_image_size: int = 512,
                num_superpixels: int = 1024, max_segments: Optional[int] = None, mesh=None) -> dict[str, Any]:
  """``inference_suppix.py`` + ``benchmark_by_mIoU.py`` over (name, image_uint8, labels) items: each query
  segment takes the vote of its top-k memory prototypes; the prediction goes back to the original size with
  nearest and is counted against the original labels. Returns tp_fn / tp_fp / tp, iou, miou, pixel_acc and the
  per-image predictions (uint8, original size)."""
  from cast_jax.evaluate.spml_inputs import prepare_test_image, restore_prediction

  tp_fn = tp_fp = tp = np.zeros(num_classes)
  predictions = {}
  for name, image, label in items:
    check_labels(label, num_classes, f'query image {name}')
    prepared = prepare_test_image(image, label, test_image_size, num_superpixels, max_segments)
    protos, present, level4 = (np.asarray(a) for a in apply(prepared['image'], prepared['superpixels']))
    segment_labels, _, _ = retrieve(protos[present], memory, num_classes, mesh=mesh)
    per_slot = np.zeros(present.shape[0], np.uint8)
    per_slot[present] = np.asarray(segment_labels)
    prediction = restore_prediction(per_slot[level4], np.shape(label))
    predictions[name] = prediction
    counts = iou_counts(prediction, label, num_classes)
    tp_fn, tp_fp, tp = tp_fn + counts[0], tp_fp + counts[1], tp + counts[2]
  iou, miou, acc = miou_from_counts(tp_fn, tp_fp, tp)
  return {'tp_fn': tp_fn, 'tp_fp': tp_fp, 'tp': tp, 'iou': iou, 'miou': float(miou), 'pixel_acc': float(acc),
          'predictions': predictions}
