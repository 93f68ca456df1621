"""Flax NNX models: the RQ-VAE (stage 1) and its VQGAN-style encoder/decoder blocks."""

from rq_jax.models.rqvae import (
    LAST_LAYER_PATH,
    RQVAE,
    CodebookVar,
    RQVAEConfig,
    quantizer_config,
    rqvae_model_config,
    validate_model_config,
)
from rq_jax.quantizer import QuantizerConfig

__all__ = [
    "LAST_LAYER_PATH",
    "RQVAE",
    "CodebookVar",
    "QuantizerConfig",
    "RQVAEConfig",
    "quantizer_config",
    "rqvae_model_config",
    "validate_model_config",
]
