"""cast_jax: CAST (superpixel-token ViT with graph pooling) in JAX/Flax."""

__version__ = "0.1.0"
