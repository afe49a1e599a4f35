"""xformer-jax: X-Former and BLIP-2 in JAX/Flax."""
__version__ = "0.1.0"
