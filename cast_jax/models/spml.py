"""SPML's CAST embedding model (``SPML/spml/models/embeddings/cast.py: ViT``) and ``SoftmaxClassifier``.

Two uses, one module:

* retrieval (``projector`` set): every superpixel token of the ``cast_seg`` segmentation stage goes through the
  MoCo projector (``vit_backbone.head``, applied to ``tokens.flatten(0, 1)`` in the original, eval mode);
* fine-tuning (``num_classes`` set): the raw (not normalised) per-pixel embedding goes through
  ``SoftmaxClassifier``: 1x1 conv D->D (no bias), BatchNorm2d over all pixels of the map, ReLU, 1x1 conv ->
  n_cls (bias). Its logits live at the superpixel map's resolution; ``spml_loss`` resizes them to the labels.

``LastStageEmbedding`` is the retrieval reading of a classification ``cast`` MoCo checkpoint (the MoCo demo), which
has no fused per-superpixel tokens: the projector on each last-stage token (its docstring says why).

Per-pixel embeddings are the tokens gathered by superpixel id (B, h, w, C); the L2-normalised ones
(``F.normalize``, eps 1e-12) are what prototypes and retrieval use. ``level4`` is the argmax chain of the four
pooling levels read per pixel (``ViT.generate_clusters`` before its batch offset and ``torch.unique``).

Parameter layout: ``encoder/...`` (the ``cast_seg`` CAST, named like ``vit_backbone.*``), ``projector/layers_K``
(as cast_jax's MoCo), ``classifier/semantic_classifier_{0,1,3}`` (the original's Sequential indices), so
``optim.spml_group_rule()`` puts the classifier in its x10 / x20 groups.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cast_jax.models import conv
from cast_jax.models.heads import MoCoMLP
from cast_jax.models.hierarchy import compose_assignments, level_logits, pixel_hierarchy
from cast_jax.models.layers import VIT_LN_EPS, BatchNorm, layer_norm
from cast_jax.models.resize import resize_2d

IGNORE_LABEL = 255
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default


def l2_normalize(x, axis: int = -1):
  """``F.normalize``: x / max(||x||, 1e-12)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, NORMALIZE_EPS)


def gather_pixels(tokens, superpixels):
  """tokens (B, S, C), superpixels (B, h, w) ids in [0, S) -> (B, h, w, C) per-pixel rows."""
  batch, height, width = superpixels.shape
  flat = superpixels.reshape(batch, height * width, 1).astype(jnp.int32)
  return jnp.take_along_axis(tokens, flat, axis=1).reshape(batch, height, width, tokens.shape[-1])


class SoftmaxClassifier(nn.Module):
  """(B, h, w, D) embeddings -> (B, h, w, num_classes) logits; BatchNorm statistics over every pixel."""

  num_classes: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    x = nn.Conv(dim, (1, 1), use_bias=False, dtype=self.dtype, conv_general_dilated=conv.conv_general_dilated,
                name='semantic_classifier_0')(x)
    x = BatchNorm(name='semantic_classifier_1')(x, train=train)
    x = nn.relu(x)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, conv_general_dilated=conv.conv_general_dilated,
                   name='semantic_classifier_3')(x).astype(jnp.float32)


class SPMLEmbedding(nn.Module):
  """The ``cast_seg`` encoder with SPML's heads.

  Attributes:
    encoder: a ``CAST`` with readout 'tokens' (``build_encoder(ModelSpec(kind='cast_seg', ...))``).
    num_classes: > 0 adds the SoftmaxClassifier (fine-tuning).
    projector_dims: (mlp_dim, out_dim) adds the MoCo projector on every token (retrieval); None: identity head.
      SPML only runs it in eval mode; in train mode its BatchNorms would also see the unused token slots.
  """

  encoder: nn.Module
  num_classes: int = 0
  projector_dims: Optional[tuple[int, int]] = None
  dtype: Any = None

  @nn.compact
  def __call__(self, images, superpixels, train: bool = False):
    """images (B, H, W, 3) normalised, H and W multiples of 8; superpixels (B, h, w) ids (any h, w: the tokens
    are taken at the map's resolution). Returns a dict:

      'tokens' (B, S, C): fused tokens (C = D, or the projector's out_dim);
      'embedding' (B, h, w, C): tokens gathered per pixel; 'normalized_embedding': the same, L2-normalised;
      'level4' (B, h, w) int32: level-4 cluster of every pixel (argmax chain);
      'logits' (B, h, w, n_cls) when num_classes > 0; 'intermediates': the encoder's.
    """
    out = self.encoder(images, superpixels, train=train)
    tokens = out['tokens']
    if self.projector_dims is not None:
      batch, slots, dim = tokens.shape
      mlp_dim, out_dim = self.projector_dims
      flat = MoCoMLP(3, mlp_dim, out_dim, dtype=self.dtype, name='projector')(tokens.reshape(batch * slots, dim),
                                                                               train=train)
      tokens = flat.reshape(batch, slots, out_dim)
    embedding = gather_pixels(tokens, superpixels)
    result = {'tokens': tokens, 'embedding': embedding, 'normalized_embedding': l2_normalize(embedding),
              'level4': pixel_hierarchy(out['intermediates'], superpixels)[:, -1],
              'intermediates': out['intermediates']}
    if self.num_classes:
      result['logits'] = SoftmaxClassifier(self.num_classes, self.dtype, name='classifier')(embedding, train=train)
    return result


class LastStageEmbedding(nn.Module):
  """Per-pixel retrieval embeddings of a *classification* CAST's MoCo checkpoint (kind 'cast', the MoCo demo).

  SPML's retrieval needs one token per superpixel and the MoCo projector on every token (``SPMLEmbedding``); a
  ``cast`` encoder has no BlockFusion and reads out only its class token: ``projector(norm(cls))`` after stage
  L. The tokens that sit beside that class token are the stage-L tokens (``intermediates['block{L}']``, one per
  level-(L-1) segment, after the same blocks); each goes through the same final LayerNorm and projector as the
  class token did in training. A superpixel (and its pixels) takes the token of its level-(L-1) segment, so
  the per-pixel embedding is the projector output of the last stage's token that holds it, and the retrieval
  then averages it over the level-L segments exactly as for ``SPMLEmbedding``. (The stage-1 superpixel tokens
  would be closer to SPML's fused tokens in resolution, but the projector never saw anything like them.)

  Attributes:
    encoder: a ``CAST`` with readout 'cls' (``build_encoder(ModelSpec(kind='cast', moco=True, ...))``).
    projector_dims: (mlp_dim, out_dim) of the checkpoint's MoCo projector.
  Parameters: ``encoder/...`` and ``projector/...`` as in the MoCo checkpoint; ``norm`` is a copy of the
  encoder's final LayerNorm (``encoder/norm``), which the encoder only applies to its class token.
  """

  encoder: nn.Module
  projector_dims: tuple[int, int]
  dtype: Any = None

  @nn.compact
  def __call__(self, images, superpixels, train: bool = False):
    """images (B, H, W, 3) normalised at the model's size; superpixels (B, H, W) ids. Returns a dict:

      'tokens' (B, S, C): the projected last-stage token of each superpixel slot's level-(L-1) segment;
      'stage_tokens' (B, K_{L-1}, C): the projected last-stage tokens themselves;
      'projection' (B, C): ``projector(norm(cls))``, the MoCo projection the checkpoint trained;
      'embedding', 'normalized_embedding' (B, H, W, C), 'level4' (B, H, W) and 'intermediates' as
      ``SPMLEmbedding`` ('level4' is the last pooling level).
    """
    out = self.encoder(images, superpixels, train=train)
    inter = out['intermediates']
    levels = len(level_logits(inter))
    if levels < 2:
      raise ValueError(f'LastStageEmbedding needs a CAST with at least 2 pooling levels; got {levels}')
    norm = layer_norm(VIT_LN_EPS, 'norm', self.dtype)
    projector = MoCoMLP(3, *self.projector_dims, dtype=self.dtype, name='projector')
    stage = norm(inter[f'block{levels}'])  # (B, K_{L-1}, D): the tokens beside the class token of stage L
    batch, rows, dim = stage.shape
    projected = projector(stage.reshape(batch * rows, dim), train=train).reshape(batch, rows, -1)
    owner = compose_assignments(level_logits(inter)[:levels - 1])[-1]  # (B, S) level-(L-1) segment per slot
    tokens = jnp.take_along_axis(projected, owner[..., None], axis=1)
    embedding = gather_pixels(tokens, superpixels)
    return {'tokens': tokens, 'stage_tokens': projected, 'projection': projector(out['features'], train=train),
            'embedding': embedding, 'normalized_embedding': l2_normalize(embedding),
            'level4': pixel_hierarchy(inter, superpixels)[:, -1], 'intermediates': inter}


def resize_logits(logits, out_hw: tuple[int, int]):
  """(B, h, w, C) -> (B, H, W, C) as ``F.interpolate(mode='bilinear', align_corners=False)`` (no antialias)."""
  if tuple(logits.shape[1:3]) == tuple(out_hw):
    return logits
  return resize_2d(logits.astype(jnp.float32), tuple(out_hw), 'bilinear')


def spml_loss(logits, labels, num_classes: int, reduction: str = 'global', groups: int = 1):
  """SoftmaxClassifier's loss: logits resized to the labels, labels >= n_cls -> 255, CE ignoring 255.

  logits: (B, h, w, n_cls) at the superpixel map's resolution; labels: (B, H, W) int.
  reduction: 'global' = the mean over every valid pixel of the batch (one device's CrossEntropyLoss);
    'per_group_mean' = the original's 4-GPU run: the batch is split into ``groups`` equal consecutive parts, each
    part's mean taken, then the mean of those (DataParallel-style averaging of per-GPU losses).
  Returns the scalar loss (NaN when no pixel is valid, as PyTorch).
  """
  if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
    raise ValueError(f'logits must be (B, h, w, n_cls) and labels (B, H, W); got {logits.shape} and {labels.shape}')
  resized = resize_logits(logits, labels.shape[1:])
  labels = labels.astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_classes)  # >= n_cls is 255 in the original: ignored
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(resized, axis=-1)
  per_pixel = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  per_pixel = jnp.where(valid, per_pixel, 0.0)
  if reduction == 'global':
    return jnp.sum(per_pixel) / jnp.sum(valid)
  if reduction == 'per_group_mean':
    if labels.shape[0] % groups:
      raise ValueError(f'per_group_mean needs a batch divisible by groups={groups}; got batch {labels.shape[0]}')
    sums = jnp.sum(per_pixel.reshape(groups, -1), axis=1)
    counts = jnp.sum(valid.reshape(groups, -1), axis=1)
    return jnp.mean(sums / counts)
  raise ValueError(f"reduction must be 'global' or 'per_group_mean'; got {reduction!r}")


def classifier_from_torch(state: Mapping[str, Any]) -> dict[str, dict]:
  """SoftmaxClassifier's state dict (``prediction_model`` of a SPML snapshot) -> {'params', 'batch_stats'}."""
  expected = {'semantic_classifier.0.weight', 'semantic_classifier.1.weight', 'semantic_classifier.1.bias',
              'semantic_classifier.1.running_mean', 'semantic_classifier.1.running_var',
              'semantic_classifier.3.weight', 'semantic_classifier.3.bias'}
  missing = expected - set(state)
  unexpected = set(state) - expected - {'semantic_classifier.1.num_batches_tracked'}
  if missing or unexpected:
    raise ValueError(f'not a SoftmaxClassifier state dict: missing {sorted(missing)}, unexpected '
                     f'{sorted(unexpected)}; pass snapshot["prediction_model"] of a SPML model-*.pth')
  a = {k: np.asarray(v, np.float32) for k, v in state.items() if k in expected}
  conv = lambda w: np.transpose(w, (2, 3, 1, 0))  # noqa: E731  (out, in, 1, 1) -> (1, 1, in, out)
  params = {'semantic_classifier_0': {'kernel': conv(a['semantic_classifier.0.weight'])},
            'semantic_classifier_1': {'scale': a['semantic_classifier.1.weight'],
                                      'bias': a['semantic_classifier.1.bias']},
            'semantic_classifier_3': {'kernel': conv(a['semantic_classifier.3.weight']),
                                      'bias': a['semantic_classifier.3.bias']}}
  stats = {'semantic_classifier_1': {'mean': a['semantic_classifier.1.running_mean'],
                                     'var': a['semantic_classifier.1.running_var']}}
  return {'params': params, 'batch_stats': stats}
