"""CAST models in Flax. ``build_model(ModelSpec(...))`` is the entry point."""

from cast_jax.models.cast import CAST, BlockFusion
from cast_jax.models.hierarchy import compose_assignments, pixel_hierarchy
from cast_jax.models.fps import farthest_point_sampling
from cast_jax.models.graph_pool import GraphPooling
from cast_jax.models.moco import MoCo
from cast_jax.models.variants import KINDS, SIZES, ModelSpec, build_encoder, build_model, is_frozen
from cast_jax.models.vit import ConvViT

__all__ = ['CAST', 'BlockFusion', 'ConvViT', 'GraphPooling', 'KINDS', 'MoCo', 'ModelSpec', 'SIZES', 'build_encoder',
           'build_model', 'compose_assignments', 'farthest_point_sampling', 'is_frozen', 'pixel_hierarchy']
