"""The CAST encoder: superpixel tokens, four transformer stages, graph pooling between them.

One module covers the four encoders of the original; the flags below select what differs (the factory
functions in ``cast_jax.models.variants`` set them):

| original module          | pos_embed | token_resolution | fusion | readout      | block_naming |
|--------------------------|-----------|------------------|--------|--------------|--------------|
| ``cast.py`` (MoCo)       | sincos    | features         | no     | cls          | shared       |
| ``cast_deit.py``         | learned   | features         | no     | cls          | shared       |
| ``cast_seg.py`` pretrain | sincos    | features         | yes    | token_mean   | per_stage    |
| ``cast_seg.py`` seg      | sincos    | pixels           | yes    | tokens       | per_stage    |
| ``cast_seg_deit.py``     | learned   | pixels           | yes    | fused        | shared       |

Parameter names mirror the PyTorch state dicts (``blocks_3`` <-> ``blocks.3``, ``pool1`` <->
``pool1.pool_block``, ``block_fusion/norm`` <-> ``block_fusion.proj_blocks.0.norm``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cast_jax.models import segments, tokens as token_lib
from cast_jax.models.graph_pool import GraphPooling
from cast_jax.models.hierarchy import compose_assignments
from cast_jax.models.layers import VIT_LN_EPS, BatchNorm, Block, ConvStem, layer_norm
from cast_jax.models.resize import sincos_position_table

STEM_STRIDE = 8


class BlockFusion(nn.Module):
  """``modules.BlockFusion`` (discrete): every superpixel gets its own and its ancestors' pre-pool tokens.

  The concatenation (4D wide) goes through BatchNorm1d, Dropout and a Linear back to D.
  """

  dim: int
  dropout: float = 0.2
  dtype: Any = None

  @nn.compact
  def __call__(self, pre_pool_tokens, pool_cls, labels, valid, train: bool, sample_mask=None):
    """pre_pool_tokens[l]: (B, N_l, D); pool_cls[l]: (B, 1, D) post-pool class tokens; labels[l]: (B, S)
    the level-(l+1) cluster of every superpixel; valid (B, S); sample_mask: optional (B,) images the BatchNorm
    statistics count. Returns (B, 1 + S, D), row 0 the class row.
    """
    unpooled = [pre_pool_tokens[0]] + [jnp.take_along_axis(x, lab[..., None], axis=1)
                                       for x, lab in zip(pre_pool_tokens[1:], labels)]
    rows = jnp.concatenate([jnp.concatenate(pool_cls, axis=-1), jnp.concatenate(unpooled, axis=-1)], axis=1)
    # BN statistics cover the class row and empty tokens (as the original), but not padding slots.
    row_valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)
    if sample_mask is not None:  # nor the rows of a padded batch's padding images
      row_valid = row_valid & sample_mask[:, None]
    rows = BatchNorm(name='norm')(rows, train=train, mask=row_valid)
    rows = nn.Dropout(self.dropout)(rows, deterministic=not train)
    return nn.Dense(self.dim, dtype=self.dtype, name='proj')(rows)


class CAST(nn.Module):
  """CAST encoder. See the module docstring for which flags reproduce which original module.

  Attributes:
    embed_dim, depth, num_heads, num_clusters, mlp_ratio: the architecture (depth and num_clusters per stage).
    max_segments: static number of superpixel token slots S; superpixel ids must lie in [0, S).
    pos_grid: side of the position-embedding grid (the original's ``img_size // 8``, 28 at 224 px).
    pos_embed: 'sincos' (fixed table + ``pe_token`` for cls) or 'learned' (table with a cls slot).
    token_resolution: 'features' or 'pixels' (see ``cast_jax.models.tokens``).
    fusion: BlockFusion of all stages' tokens (the segmentation encoders).
    readout: 'cls' (LayerNorm'd class token after stage 4), 'token_mean' (mean fused token), 'tokens'
      (fused superpixel tokens, head applied per token) or 'fused' (fused tokens with the cls row).
    block_naming: 'shared' (``blocks_0..``, one list) or 'per_stage' (``blocks1_0..``), as the checkpoints.
    resize_pos_embed: with 'features' tokens, bicubically resize the position table to a feature grid of
      another size (``cast_seg.py``) instead of refusing other image sizes (``cast.py``, ``cast_deit.py``).
    num_classes: output size of the linear ``head``; 0 for none (MoCo puts its projector on ``features``).
    drop_path_rate: stochastic depth, linearly increasing over blocks (timm).
    pool_dropout, fusion_dropout: dropout inside graph pooling (0.1) and BlockFusion (0.2).
    dtype: computation dtype (e.g. bfloat16); parameters, normalization, sampling and assignments stay fp32.
  """

  embed_dim: int = 384
  depth: Sequence[int] = (3, 3, 3, 2)
  num_heads: int = 12
  num_clusters: Sequence[int] = (64, 32, 16, 8)
  mlp_ratio: float = 4.0
  max_segments: int = 196
  pos_grid: int = 28
  pos_embed: str = 'sincos'
  token_resolution: str = 'features'
  fusion: bool = False
  readout: str = 'cls'
  block_naming: str = 'shared'
  resize_pos_embed: bool = False
  num_classes: int = 0
  drop_path_rate: float = 0.0
  pool_dropout: float = 0.1
  fusion_dropout: float = 0.2
  dtype: Any = None

  def _check_inputs(self, images, superpixels):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be (batch, height, width, 3) channels-last; got shape {images.shape}. '
                       'Transpose NCHW arrays with x.transpose(0, 2, 3, 1).')
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f'images must be normalized floats; got dtype {images.dtype}. '
                       'Scale uint8 images to [0, 1] and normalize with the ImageNet mean and std.')
    # Pixel-resolution tokens resize the (ceil(H/8), ceil(W/8)) features to the map, so any size works there
    # (SPML feeds 60x80 images); the feature-resolution kinds read the map at the stride and need multiples of 8.
    if self.token_resolution == 'features' and (images.shape[1] % STEM_STRIDE or images.shape[2] % STEM_STRIDE):
      raise ValueError(f'image height and width must be multiples of {STEM_STRIDE}; got {images.shape[1:3]}.')
    image_hw = images.shape[1:3] if self.token_resolution == 'features' else None
    segments.validate_superpixels(superpixels, self.max_segments, image_hw, batch_size=images.shape[0])

  def _position_tables(self):
    """Returns the (grid*grid, D) cell table and the (1, 1, D) embedding added to the class token."""
    cells = self.pos_grid * self.pos_grid
    if self.pos_embed == 'sincos':
      table = sincos_position_table(self.pos_grid, self.pos_grid, self.embed_dim)
      pos = self.param('pos_embed', lambda _: jnp.asarray(table)[None])  # frozen, see frozen_parameters()
      cls_pos = self.param('pe_token', nn.initializers.zeros, (1, 1, self.embed_dim))
      return pos[0], cls_pos
    if self.pos_embed == 'learned':
      pos = self.param('pos_embed', nn.initializers.normal(0.02), (1, 1 + cells, self.embed_dim))
      return pos[0, 1:], pos[:, :1]
    raise ValueError(f"pos_embed must be 'sincos' or 'learned'; got {self.pos_embed!r}")

  def _tokenize(self, images, superpixels, train, sample_mask=None):
    """Level-0 tokens (B, S, D), class token (B, 1, D), empty (B, S) and valid (B, S) masks."""
    features = ConvStem(self.embed_dim, dtype=self.dtype, name='patch_embed')(images, train=train,
                                                                             sample_mask=sample_mask)
    pos_table, cls_pos = self._position_tables()
    # `pooled_ids` is the map the segment means are taken over: its max id + 1 is the original's token count.
    pooled_ids = superpixels
    if self.token_resolution == 'features':
      grid = features.shape[1:3]
      pooled_ids = segments.downsample_nearest(superpixels, STEM_STRIDE)
      if grid == (self.pos_grid, self.pos_grid):
        tokens, counts, _ = token_lib.grid_tokens(features, pos_table, superpixels, self.max_segments)
      elif self.resize_pos_embed:
        # cast_seg's pretrain stage: the map is read at the feature grid and the position table is
        # bicubically resized to that grid (an identity when the image has the model's size).
        pos_grid = pos_table.reshape(self.pos_grid, self.pos_grid, self.embed_dim)
        tokens, counts = token_lib.pixel_tokens(features, pos_grid, pooled_ids, self.max_segments)
      else:
        # cast.py / cast_deit.py view the table as the feature grid and fail on other sizes.
        raise ValueError(f'feature grid {grid} differs from the position grid {self.pos_grid}; feed '
                         f'{self.pos_grid * STEM_STRIDE}px images or build the model with that image size.')
    elif self.token_resolution == 'pixels':
      pos_grid = pos_table.reshape(self.pos_grid, self.pos_grid, self.embed_dim)
      tokens, counts = token_lib.pixel_tokens(features, pos_grid, superpixels, self.max_segments)
    else:
      raise ValueError(f"token_resolution must be 'features' or 'pixels'; got {self.token_resolution!r}")
    cls_token = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, self.embed_dim))
    cls = jnp.broadcast_to((cls_token + cls_pos).astype(tokens.dtype), (tokens.shape[0], 1, self.embed_dim))
    valid = segments.batch_valid_mask(pooled_ids.reshape(pooled_ids.shape[0], -1), self.max_segments, sample_mask)
    return tokens, cls, counts == 0, valid

  def _blocks(self):
    """The transformer blocks grouped by stage, named like the checkpoint's keys."""
    total = sum(self.depth)
    rates = np.linspace(0.0, self.drop_path_rate, total) if total > 1 else [self.drop_path_rate]
    stages, index = [], 0
    for stage, count in enumerate(self.depth):
      blocks = []
      for local in range(count):
        name = f'blocks_{index}' if self.block_naming == 'shared' else f'blocks{stage + 1}_{local}'
        blocks.append(Block(self.num_heads, self.mlp_ratio, float(rates[index]), dtype=self.dtype, name=name))
        index += 1
      stages.append(blocks)
    return stages

  @nn.compact
  def __call__(self, images, superpixels, train: bool = False, sample_mask=None):
    """Runs the encoder.

    Args:
      images: (B, H, W, 3) float, ImageNet-normalized RGB; H and W multiples of 8.
      superpixels: (B, H, W) int ids in [0, max_segments) (the full-resolution map).
      train: batch statistics for BatchNorm, dropout and drop path on ('dropout' rng needed).
      sample_mask: optional (B,) bool: in train mode the BatchNorm statistics (ConvStem, BlockFusion) count only
        these images, and only their superpixels set the batch's token count, so the padding rows of a padded
        short batch change nothing for the real ones. None: every image.

    Returns a dict with
      'features': (B, D) the embedding ('cls' and 'token_mean' readouts),
      'tokens': (B, S, D) or (B, 1 + S, D) fused tokens (segmentation readouts),
      'logits': head output when num_classes > 0,
      'intermediates': per level l = 1..4 ``logit{l}`` (B, N_{l-1}, K_l), ``centroid{l}`` (B, K_l, D),
        ``block{l}`` (B, N_{l-1}, D) pre-pool tokens, ``padding_mask{l}`` (B, N_{l-1}) empty tokens,
        ``sampled_inds{l}`` (B, K_l), ``cls{l}`` (B, 1, D) post-pool class token; ``valid_tokens`` (B, S);
        ``superpixel_counts`` (B,) non-empty tokens per image; ``superpixels_in_range`` (B,) False where an
        id was outside [0, max_segments) (checked eagerly too; under jit such pixels are dropped, never
        mixed into another segment or image).
    """
    self._check_inputs(images, superpixels)
    if self.dtype is not None:
      images = images.astype(self.dtype)
    x, cls, empty, valid = self._tokenize(images, superpixels, train, sample_mask)
    inter = {'valid_tokens': valid, 'superpixel_counts': jnp.sum(~empty, axis=-1),
             'superpixels_in_range': segments.ids_in_range(superpixels, self.max_segments)}

    stage_valid = valid
    stage_blocks = self._blocks()
    pre_pool, pool_cls, logits = [], [], []
    for level, (blocks, clusters) in enumerate(zip(stage_blocks, self.num_clusters), start=1):
      key_mask = None
      if stage_valid is not None:
        key_mask = jnp.concatenate([jnp.ones_like(stage_valid[:, :1]), stage_valid], axis=1)
      cx = jnp.concatenate([cls, x], axis=1)
      for block in blocks:
        cx = block(cx, key_mask, train=train)
      cls_b, xb = cx[:, :1], cx[:, 1:]
      pool = GraphPooling(clusters, self.mlp_ratio, self.pool_dropout, dtype=self.dtype, name=f'pool{level}')
      out = pool(cls_b, xb, empty, stage_valid, train=train)
      inter.update({f'block{level}': xb, f'padding_mask{level}': empty, f'logit{level}': out.logits,
                    f'centroid{level}': out.centroids, f'sampled_inds{level}': out.sampled_inds,
                    f'cls{level}': out.cls})
      pre_pool.append(xb)
      pool_cls.append(out.cls)
      logits.append(out.logits)
      last_cls = cls_b
      cls, x = out.cls, out.centroids
      empty = jnp.zeros(x.shape[:2], bool)
      stage_valid = None  # centroids are always real tokens

    result = {'intermediates': inter}
    if self.readout == 'cls':
      features = layer_norm(VIT_LN_EPS, 'norm', self.dtype)(last_cls)[:, 0]
      inter['out4'] = features
      result['features'] = features
      head_input = features
    else:
      if not self.fusion:
        raise ValueError(f'readout {self.readout!r} needs fusion=True')
      labels = compose_assignments(logits[:3])
      fused = BlockFusion(self.embed_dim, self.fusion_dropout, self.dtype, name='block_fusion')(
          pre_pool, pool_cls, labels, valid, train, sample_mask)
      if self.readout == 'token_mean':
        w = valid.astype(fused.dtype)[..., None]
        head_input = jnp.sum(fused[:, 1:] * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
        result['features'] = head_input
      elif self.readout == 'tokens':
        head_input = result['tokens'] = fused[:, 1:]
      elif self.readout == 'fused':
        head_input = result['tokens'] = fused
      else:
        raise ValueError(f"readout must be 'cls', 'token_mean', 'tokens' or 'fused'; got {self.readout!r}")
    if self.num_classes:
      result['logits'] = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(head_input).astype(jnp.float32)
    return result

