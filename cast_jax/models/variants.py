"""Every model of the project from one small description, ``ModelSpec``.

A spec is what a converted checkpoint stores next to its arrays, so a checkpoint alone rebuilds its model.
Sizes live in ``SIZES``; what distinguishes the original modules lives in ``KINDS``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cast_jax.models.cast import CAST
from cast_jax.models.moco import MoCo
from cast_jax.models.segmenter import SuperpixMaskTransformer, SuperpixSegmenter
from cast_jax.models.spml import SPMLEmbedding
from cast_jax.models.vit import ConvViT

# embed_dim, per-stage depth (CAST) and heads of each size. The ViT baseline uses sum(depth) blocks.
SIZES = {
    'small': dict(embed_dim=384, depth=(3, 3, 3, 2), num_heads=12),
    'small_deep': dict(embed_dim=384, depth=(6, 3, 3, 3), num_heads=12),
    'base': dict(embed_dim=768, depth=(3, 3, 3, 2), num_heads=12),
    'base_deep': dict(embed_dim=768, depth=(6, 3, 3, 3), num_heads=12),
}

CLASSIFICATION_CLUSTERS = (64, 32, 16, 8)
SEGMENTATION_CLUSTERS = (320, 160, 80, 40)

# The original module each kind reproduces, and the CAST flags that make it so.
KINDS = {
    'cast': dict(pos_embed='sincos', token_resolution='features', fusion=False, readout='cls',
                 block_naming='shared', clusters=CLASSIFICATION_CLUSTERS),  # cast_models/cast.py
    'cast_deit': dict(pos_embed='learned', token_resolution='features', fusion=False, readout='cls',
                      block_naming='shared', clusters=CLASSIFICATION_CLUSTERS),  # cast_models/cast_deit.py
    'cast_seg_pretrain': dict(pos_embed='sincos', token_resolution='features', fusion=True, readout='token_mean',
                              block_naming='per_stage', resize_pos_embed=True,
                              clusters=CLASSIFICATION_CLUSTERS),  # cast_seg, 'pretrain'
    'cast_seg': dict(pos_embed='sincos', token_resolution='pixels', fusion=True, readout='tokens',
                     block_naming='per_stage', clusters=SEGMENTATION_CLUSTERS),  # cast_seg, 'segmentation'
    'cast_seg_deit': dict(pos_embed='learned', token_resolution='pixels', fusion=True, readout='fused',
                          block_naming='shared', clusters=SEGMENTATION_CLUSTERS),  # cast_models/cast_seg_deit.py
    'vit_conv': dict(),  # MoCo-v3 models/vits.py vit_conv_small / vit_conv_base
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything needed to build a model.

  kind: a key of ``KINDS``. variant: a key of ``SIZES``; embed_dim/depth/num_heads override it.
  image_size: the size the original was built with (fixes the position grid: image_size // 8 for CAST,
  // 16 for the ViT). max_segments: static superpixel slots. moco: wrap in the MoCo projector/predictor.
  """

  kind: str = 'cast'
  variant: str = 'small'
  embed_dim: Optional[int] = None
  depth: Optional[Sequence[int]] = None
  num_heads: Optional[int] = None
  num_clusters: Optional[Sequence[int]] = None
  image_size: int = 224
  max_segments: Optional[int] = None  # default: 196, or 1024 for the segmentation-cluster kinds
  num_classes: int = 0
  moco: bool = False
  moco_dim: int = 256
  moco_mlp_dim: int = 4096
  drop_path_rate: float = 0.0
  pool_dropout: float = 0.1
  fusion_dropout: float = 0.2
  # The Segmenter (segm/model/segmenter.py): seg_classes > 0 wraps a cast_seg_deit encoder with the superpixel
  # mask-transformer decoder; None sizes follow the original factory (width = encoder's, heads = width // 64,
  # feed-forward = 4 x width).
  seg_classes: int = 0
  decoder_dim: Optional[int] = None
  decoder_depth: int = 2
  decoder_heads: Optional[int] = None
  decoder_mlp_dim: Optional[int] = None
  decoder_dropout: float = 0.1
  # SPML's fine-tuning model (SPML/spml/models: the cast_seg segmentation stage's per-pixel embeddings under a
  # SoftmaxClassifier): spml_classes > 0 wraps a cast_seg encoder in ``SPMLEmbedding(num_classes=spml_classes)``.
  spml_classes: int = 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'unknown model kind {self.kind!r}; choose one of {sorted(KINDS)}')
    if self.variant not in SIZES:
      raise ValueError(f'unknown variant {self.variant!r}; choose one of {sorted(SIZES)}')
    first_level = self.clusters()[0] if self.uses_superpixels else 0
    if self.max_segments is None:
      object.__setattr__(self, 'max_segments', 1024 if first_level > 196 else 196)
    if self.max_segments < first_level:
      raise ValueError(f'max_segments={self.max_segments} is smaller than the first pooling level '
                       f'({self.clusters()[0]} clusters): use more superpixels or fewer clusters.')
    if self.seg_classes and self.kind != 'cast_seg_deit':
      raise ValueError(f'the Segmenter decoder (seg_classes={self.seg_classes}) sits on a cast_seg_deit encoder, '
                       f'not {self.kind!r}; set kind=cast_seg_deit or seg_classes=0')
    if self.spml_classes and (self.kind != 'cast_seg' or self.moco or self.seg_classes):
      raise ValueError(f'SPML\'s classifier (spml_classes={self.spml_classes}) sits on a plain cast_seg encoder '
                       f'(kind={self.kind!r}, moco={self.moco}, seg_classes={self.seg_classes}); set '
                       "kind='cast_seg', moco=False, seg_classes=0, or spml_classes=0")
    for name in ('depth', 'num_clusters'):
      value = getattr(self, name)
      if value is not None:
        object.__setattr__(self, name, tuple(int(v) for v in value))

  def size(self) -> dict[str, Any]:
    size = dict(SIZES[self.variant])
    for key in size:
      if getattr(self, key) is not None:
        size[key] = getattr(self, key)
    return size

  @property
  def uses_superpixels(self) -> bool:
    """Every CAST kind reads superpixels; the ViT baseline reads plain images."""
    return self.kind != 'vit_conv'

  def decoder_size(self) -> dict[str, int]:
    """The Segmenter decoder's d_model, n_layers, n_heads, d_ff with the factory's defaults filled in."""
    width = self.decoder_dim or self.size()['embed_dim']
    return dict(d_model=width, n_layers=self.decoder_depth, n_heads=self.decoder_heads or max(1, width // 64),
                d_ff=self.decoder_mlp_dim or 4 * width)

  def clusters(self) -> tuple[int, ...]:
    return tuple(self.num_clusters or KINDS[self.kind]['clusters'])

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'ModelSpec':
    return cls(**json.loads(text))

  @classmethod
  def from_config(cls, model_config: Mapping[str, Any]) -> 'ModelSpec':
    """From a training config's ``model`` fields (a dict); None means "the kind's default"."""
    return cls(**{k: v for k, v in model_config.items() if v is not None})

  def replace(self, **changes) -> 'ModelSpec':
    return dataclasses.replace(self, **changes)


COMPUTE_DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}  # None: compute in the parameters' float32


def compute_dtype(name: str) -> Any:
  """The ``dtype`` argument of ``build_model`` for a config's ``compute_dtype`` name."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'unknown compute_dtype {name!r}; choose one of {sorted(COMPUTE_DTYPES)}')
  return COMPUTE_DTYPES[name]


def build_encoder(spec: ModelSpec, dtype: Any = None) -> nn.Module:
  size = spec.size()
  num_classes = 0 if spec.moco else spec.num_classes
  if spec.kind == 'vit_conv':
    return ConvViT(embed_dim=size['embed_dim'], depth=sum(size['depth']), num_heads=size['num_heads'],
                   pos_grid=spec.image_size // 16, num_classes=num_classes, drop_path_rate=spec.drop_path_rate,
                   dtype=dtype)
  flags = {k: v for k, v in KINDS[spec.kind].items() if k != 'clusters'}
  return CAST(embed_dim=size['embed_dim'], depth=tuple(size['depth']), num_heads=size['num_heads'],
              num_clusters=spec.clusters(), max_segments=spec.max_segments, pos_grid=spec.image_size // 8,
              num_classes=num_classes, drop_path_rate=spec.drop_path_rate, pool_dropout=spec.pool_dropout,
              fusion_dropout=spec.fusion_dropout, dtype=dtype, **flags)


def build_model(spec: ModelSpec, dtype: Any = None) -> nn.Module:
  """The Flax module for ``spec``: an encoder, MoCo(encoder) when ``spec.moco``, the Segmenter when
  ``spec.seg_classes``, SPML's embedding model with its SoftmaxClassifier when ``spec.spml_classes``."""
  encoder = build_encoder(spec, dtype)
  if spec.seg_classes:
    decoder = SuperpixMaskTransformer(n_cls=spec.seg_classes, dropout=spec.decoder_dropout, dtype=dtype,
                                      **spec.decoder_size())
    return SuperpixSegmenter(encoder=encoder, decoder=decoder)
  if spec.spml_classes:
    return SPMLEmbedding(encoder=encoder, num_classes=spec.spml_classes, dtype=dtype)
  if spec.moco:
    return MoCo(encoder=encoder, dim=spec.moco_dim, mlp_dim=spec.moco_mlp_dim, dtype=dtype)
  return encoder


def is_frozen(spec: ModelSpec, path: Sequence[str]) -> bool:
  """Whether the parameter at ``path`` (names below 'params') never trains in the original.

  Fixed position tables (sin-cos ``pos_embed``, ``pe_token``) and, in ``cast.py``/``cast_deit.py``, the last
  graph pooling layer ("Last graph pooling is not needed"; it stays at its initial values).
  """
  names = [p for p in path if p not in ('encoder',)]
  if not names:
    return False
  leaf_owner = names[0]
  if leaf_owner in ('pe_token',):
    return True
  if leaf_owner == 'pos_embed':
    return spec.kind in ('cast', 'cast_seg_pretrain', 'cast_seg', 'vit_conv')
  if leaf_owner == f'pool{len(spec.clusters())}':
    return spec.kind in ('cast', 'cast_deit')
  return False
