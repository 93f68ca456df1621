"""Pure functional residual quantization: arrays and pytrees in, arrays and pytrees out."""

from rq_jax.quantizer.calibrate import (
    calibrate_temperature,
    max_sample_vectors,
    parse_auto,
    q_tau_stats,
    sample_vectors,
    uniform_targets_warning,
)
from rq_jax.quantizer.codebook import (
    CodebookState,
    cluster_statistics,
    codebook_usage,
    ema_accumulate,
    ema_dead_codes,
    ema_update,
    embedding_from_ema,
    init_codebook,
    restart_candidates,
    restart_unused,
)
from rq_jax.quantizer.config import QUANTIZER_FIELDS, QuantizerConfig, quantizer_config_dict
from rq_jax.quantizer.residual import (
    RQOutput,
    commitment_loss,
    rq_decode,
    rq_encode,
    rq_quantize,
    rq_quantize_train,
    straight_through,
)
from rq_jax.quantizer.soft import (
    gumbel_codes,
    per_depth_temperature,
    rq_residual_codes,
    rq_soft_codes,
    soft_labels,
    squared_distances,
)
from rq_jax.quantizer.soft_ce import SoftCE, one_hot_cross_entropy, soft_label_cross_entropy

__all__ = [
    "QUANTIZER_FIELDS",
    "CodebookState",
    "QuantizerConfig",
    "RQOutput",
    "SoftCE",
    "calibrate_temperature",
    "max_sample_vectors",
    "cluster_statistics",
    "codebook_usage",
    "commitment_loss",
    "ema_accumulate",
    "ema_dead_codes",
    "ema_update",
    "embedding_from_ema",
    "gumbel_codes",
    "init_codebook",
    "one_hot_cross_entropy",
    "parse_auto",
    "per_depth_temperature",
    "q_tau_stats",
    "quantizer_config_dict",
    "restart_candidates",
    "restart_unused",
    "rq_decode",
    "rq_encode",
    "rq_quantize",
    "rq_quantize_train",
    "rq_residual_codes",
    "rq_soft_codes",
    "sample_vectors",
    "soft_label_cross_entropy",
    "soft_labels",
    "squared_distances",
    "straight_through",
    "uniform_targets_warning",
]
