"""The Segmenter of the original's ``segmenter/`` fork: a CAST encoder and a superpixel mask-transformer decoder.

``SuperpixMaskTransformer`` (``segm/model/decoder.py``) turns the encoder's superpixel tokens into per-token
class scores; ``SuperpixSegmenter`` (``segm/model/segmenter.py``) pads the image to a multiple of the encoder
stride, runs ``cast_seg_deit``, drops the class row, decodes, gathers each superpixel's scores to its pixels and
crops the padding away.

Static shapes: the original's token count S (max superpixel id + 1 over the batch) becomes the encoder's fixed
``max_segments`` slots; slots at or above the batch's S are masked out of the decoder's attention (they hold no
token in the original), while empty slots below it are attended to, as there.

Parameter names mirror the state dict (``decoder.blocks.0.attn.qkv`` <-> ``decoder/blocks_0/attn/qkv``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cast_jax.models.cast import STEM_STRIDE
from cast_jax.models.layers import TORCH_LN_EPS, exact_gelu


def trunc_normal(std: float = 0.02):
  """timm's ``trunc_normal_(std=std)``: N(0, std) truncated at -2 and 2 *absolute* (not at 2 std)."""

  def init(key, shape, dtype=jnp.float32):
    return (jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, jnp.float32) * std).astype(dtype)

  return init


def _dense(features: int, name: str, dtype) -> nn.Dense:
  # segm.model.utils.init_weights: every Linear trunc_normal(0.02), bias 0.
  return nn.Dense(features, dtype=dtype, kernel_init=trunc_normal(0.02), bias_init=nn.initializers.zeros, name=name)


def _torch_layer_norm(name: str, dtype) -> nn.LayerNorm:
  # nn.LayerNorm's default eps (1e-5), not the 1e-6 of the encoder's timm blocks.
  return nn.LayerNorm(epsilon=TORCH_LN_EPS, dtype=dtype, param_dtype=jnp.float32, name=name)


class DecoderAttention(nn.Module):
  """``segm.model.blocks.Attention``: multi-head self-attention with dropout on the weights and the output."""

  num_heads: int
  dropout: float = 0.1
  dtype: Any = None

  @nn.compact
  def __call__(self, x, key_mask, train: bool):
    """x: (B, N, D); key_mask: (B, N) bool, False for slots nothing may attend to. Returns (B, N, D)."""
    batch, tokens, dim = x.shape
    if dim % self.num_heads:
      raise ValueError(f'decoder width {dim} is not divisible by its {self.num_heads} heads')
    head_dim = dim // self.num_heads
    qkv = _dense(3 * dim, 'qkv', self.dtype)(x)
    qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, hd)
    logits = (jnp.einsum('bhqd,bhkd->bhqk', q, k) * head_dim ** -0.5).astype(jnp.float32)
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    weights = nn.Dropout(self.dropout)(weights, deterministic=not train)
    out = jnp.einsum('bhqk,bhkd->bhqd', weights, v).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
    out = _dense(dim, 'proj', self.dtype)(out)
    return nn.Dropout(self.dropout)(out, deterministic=not train)


class DecoderBlock(nn.Module):
  """``segm.model.blocks.Block``: pre-LN (eps 1e-5) attention and GELU (erf) feed-forward, dropout in both.

  The decoder's drop path is 0 in every recipe of the original (``drop_path_rate`` 0.0), so there is none.
  """

  num_heads: int
  mlp_dim: int
  dropout: float = 0.1
  dtype: Any = None

  @nn.compact
  def __call__(self, x, key_mask, train: bool):
    x = x + DecoderAttention(self.num_heads, self.dropout, self.dtype, name='attn')(
        _torch_layer_norm('norm1', self.dtype)(x), key_mask, train)
    y = _torch_layer_norm('norm2', self.dtype)(x)
    mlp = _FeedForward(self.mlp_dim, self.dropout, self.dtype, name='mlp')
    return x + mlp(y, train)


class _FeedForward(nn.Module):
  """``segm.model.blocks.FeedForward``: fc1, GELU, dropout, fc2, dropout."""

  hidden_dim: int
  dropout: float
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    dim = x.shape[-1]
    x = nn.Dropout(self.dropout)(exact_gelu(_dense(self.hidden_dim, 'fc1', self.dtype)(x)), deterministic=not train)
    x = _dense(dim, 'fc2', self.dtype)(x)
    return nn.Dropout(self.dropout)(x, deterministic=not train)


class SuperpixMaskTransformer(nn.Module):
  """Per-superpixel class scores from the encoder's superpixel tokens.

  Attributes:
    n_cls: number of classes (class embeddings and output channels).
    d_model: decoder width (the factory ties it to the encoder width; ``proj_dec`` maps between them).
    n_layers, n_heads, d_ff: blocks, heads and feed-forward width (the factory: 2, d_model // 64, 4 d_model).
    dropout: inside every block (0.1 in the original).
  """

  n_cls: int
  d_model: int
  n_layers: int = 2
  n_heads: int = 1
  d_ff: int = 256
  dropout: float = 0.1
  dtype: Any = None

  @nn.compact
  def __call__(self, tokens, valid, train: bool = False):
    """tokens: (B, S, d_encoder) superpixel tokens (no class row); valid: (B, S) bool, False for slots the
    original would not have (at or above the batch's token count).

    Returns (B, S, n_cls) float32 scores: LayerNorm over classes of the cosine between each token's and each
    class's projected embedding.
    """
    if tokens.ndim != 3 or valid.shape != tokens.shape[:2]:
      raise ValueError(f'decoder input must be tokens (B, S, D) with a (B, S) validity mask; got {tokens.shape} '
                       f'and {valid.shape}')
    batch, slots = tokens.shape[:2]
    x = _dense(self.d_model, 'proj_dec', self.dtype)(tokens)
    cls_emb = self.param('cls_emb', trunc_normal(0.02), (1, self.n_cls, self.d_model))
    x = jnp.concatenate([x, jnp.broadcast_to(cls_emb.astype(x.dtype), (batch, self.n_cls, self.d_model))], axis=1)
    key_mask = jnp.concatenate([valid, jnp.ones((batch, self.n_cls), bool)], axis=1)
    for i in range(self.n_layers):
      x = DecoderBlock(self.n_heads, self.d_ff, self.dropout, self.dtype, name=f'blocks_{i}')(x, key_mask, train)
    x = _torch_layer_norm('decoder_norm', self.dtype)(x)
    # Plain Parameters in the original (scale * randn), untouched by init_weights; used as x @ P.
    scale = self.d_model ** -0.5
    proj_init = lambda key, shape: scale * jax.random.normal(key, shape, jnp.float32)  # noqa: E731
    proj_patch = self.param('proj_patch', proj_init, (self.d_model, self.d_model))
    proj_classes = self.param('proj_classes', proj_init, (self.d_model, self.d_model))
    patches = x[:, :slots].astype(jnp.float32) @ proj_patch
    classes = x[:, slots:].astype(jnp.float32) @ proj_classes
    # No eps, as the original: a zero row would be NaN there too (it cannot occur after decoder_norm's affine
    # map unless the weights are degenerate).
    patches = patches / jnp.linalg.norm(patches, axis=-1, keepdims=True)
    classes = classes / jnp.linalg.norm(classes, axis=-1, keepdims=True)
    masks = jnp.einsum('bsd,bcd->bsc', patches, classes)
    return nn.LayerNorm(epsilon=TORCH_LN_EPS, param_dtype=jnp.float32, name='mask_norm')(masks)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch's legacy 'nearest' source index of every output position: floor(dst * (in / out)) in float32."""
  if in_size == out_size:
    return np.arange(out_size)
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def gather_to_pixels(masks_sp, superpixels, out_hw: tuple[int, int]):
  """Each pixel's scores from its superpixel's row.

  masks_sp: (B, S, C); superpixels: (B, h, w) int ids in [0, S). The map is first resized to ``out_hw`` with
  PyTorch's nearest (a stretch when the sizes differ: the decoder reads the unpadded map at the padded size).
  Returns (B, H, W, C).
  """
  rows = jnp.asarray(nearest_indices(superpixels.shape[1], out_hw[0]))
  cols = jnp.asarray(nearest_indices(superpixels.shape[2], out_hw[1]))
  ids = superpixels[:, rows][:, :, cols]
  batch = masks_sp.shape[0]
  flat = jnp.take_along_axis(masks_sp, ids.reshape(batch, -1, 1).astype(jnp.int32), axis=1)
  return flat.reshape(batch, out_hw[0], out_hw[1], masks_sp.shape[-1])


def pad_to_multiple(images, multiple: int = STEM_STRIDE):
  """``segm.model.utils.padding``: zeros (in normalised space) at the bottom and right. (B, H, W, 3) in."""
  pad_h = -images.shape[1] % multiple
  pad_w = -images.shape[2] % multiple
  if pad_h == 0 and pad_w == 0:
    return images
  return jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


class SuperpixSegmenter(nn.Module):
  """``SuperpixSegmenter``: ``encoder`` (a CAST with the 'fused' readout: class row + superpixel tokens) and
  ``decoder`` (``SuperpixMaskTransformer``)."""

  encoder: nn.Module
  decoder: SuperpixMaskTransformer

  @property
  def n_cls(self) -> int:
    return self.decoder.n_cls

  def __call__(self, images, superpixels, train: bool = False, sample_mask=None):
    """Segments a batch.

    Args:
      images: (B, H, W, 3) normalised float images, any H and W (padded to multiples of 8 here).
      superpixels: (B, H, W) int ids in [0, encoder.max_segments).
      train: batch-statistics BatchNorm and dropout (a 'dropout' rng is then needed).
      sample_mask: optional (B,) bool, the images train-mode BatchNorm statistics count (a padded batch's real
        rows); None: every image.

    Returns a dict: 'masks' (B, H, W, n_cls) float32 per-pixel class scores (the original's output, channels
    last); 'masks_sp' (B, S, n_cls) per token; 'tokens' (B, 1 + S, D) encoder output; 'valid_tokens' (B, S);
    'intermediates' the encoder's.
    """
    if images.ndim != 4 or superpixels.ndim != 3 or images.shape[:3] != superpixels.shape:
      raise ValueError(f'images (B, H, W, 3) and superpixels (B, H, W) must cover the same pixels; got '
                       f'{images.shape} and {superpixels.shape}')
    height, width = images.shape[1:3]
    padded = pad_to_multiple(images)
    # The encoder reads the padded image but the unpadded map: its features are resized to the map's size.
    enc = self.encoder(padded, superpixels, train=train, sample_mask=sample_mask)
    tokens = enc['tokens']
    valid = enc['intermediates']['valid_tokens']
    masks_sp = self.decoder(tokens[:, 1:], valid, train=train)
    masks = gather_to_pixels(masks_sp, superpixels, padded.shape[1:3])
    # The original's bilinear resize to the padded size is an identity here; then unpad.
    masks = masks[:, :height, :width]
    return {'masks': masks, 'masks_sp': masks_sp, 'tokens': tokens, 'valid_tokens': valid,
            'intermediates': enc['intermediates']}
