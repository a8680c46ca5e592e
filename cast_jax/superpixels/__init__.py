"""Superpixels for CAST's tokens: SEEDS (OpenCV-contrib, the original's choice) and SLIC (scikit-image).

    from cast_jax.superpixels import compute_superpixels, preset
    labels = compute_superpixels(rgb_uint8, preset('moco'))   # int32 (224, 224), ids 0..195

Every method takes uint8 (H, W, 3) RGB and returns int32 (H, W) ids dense from 0, at most ``max_segments`` of
them (``contract``). ``config`` holds the per-recipe presets; ``seeds``, ``slic`` and ``jax_slic`` (jitted,
batched, any device; import ``cast_jax.superpixels.jax_slic`` for its batch and train-step functions, so that
this package alone does not import jax) the methods; ``quality`` scores them against PartWorld's parts.
"""

from cast_jax.superpixels.compute import compute_superpixels, compute_superpixels_batch, resolve_config
from cast_jax.superpixels.config import PRESETS, SuperpixelConfig, preset
from cast_jax.superpixels.contract import as_rgb_uint8, float_to_uint8, relabel_dense, validate_superpixels
from cast_jax.superpixels.seeds import SeedsGrid, invert_uint8, seeds_grid, seeds_superpixels
from cast_jax.superpixels.slic import slic_superpixels
from cast_jax.superpixels.throughput import sample_images, superpixel_throughput

__all__ = [
    'PRESETS', 'SeedsGrid', 'SuperpixelConfig', 'as_rgb_uint8', 'compute_superpixels', 'compute_superpixels_batch',
    'float_to_uint8', 'invert_uint8', 'preset', 'relabel_dense', 'resolve_config',
    'sample_images', 'seeds_grid', 'seeds_superpixels', 'slic_superpixels',
    'superpixel_throughput', 'validate_superpixels',
]
