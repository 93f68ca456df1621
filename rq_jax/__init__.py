"""rq_jax: RQ-VAE and RQ-Transformer (Lee et al., CVPR 2022) in JAX/Flax."""

__version__ = "0.1.0"
