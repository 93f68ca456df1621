"""The residual quantizer's options: one dataclass, the single source of their defaults.

`QuantizerConfig` is what the RQ-VAE model holds; `quantizer_config_dict()` is the `config.model.quantizer`
ConfigDict generated from it (every field but `depth`, which comes from `config.model.code_shape`); the
functions of `residual` and `codebook` take their keyword defaults from its fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from rq_jax.schema import config_dict, config_fields

UPDATE_MODES = ("per_depth", "once")
RESTART_SOURCES = ("all", "least_used_depth")
REDUCTIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """Options of the residual quantizer (see `rq_jax.quantizer.rq_quantize_train`).

    depth: D, the number of residual codes per position (code_shape[2]; not a `config.model.quantizer` key).
    decay, eps: EMA decay and Laplace smoothing of the codebook statistics.
    restart, restart_threshold: restart codes whose EMA count falls below the threshold.
    update_mode: "per_depth" (official order) or "once" (one EMA step per forward); not called `update`,
      which is a ConfigDict method that command-line overrides cannot reach.
    impl: nearest-code implementation ("auto", "xla", "pallas", ...).
    commitment_reduction: "mean" (official) or "sum" (Eq. 7) over depths.
    restart_from: "all" (official) or "least_used_depth" (with update_mode "once"): where restarted codes
      are drawn from (see rq_jax.quantizer.residual).
    """

    depth: int = dataclasses.field(default=4, metadata={"config": False})
    decay: float = 0.99
    eps: float = 1e-5
    restart: bool = True
    restart_threshold: float = 1.0
    update_mode: str = "per_depth"
    impl: str = "auto"
    commitment_reduction: str = "mean"
    restart_from: str = "all"

    def __post_init__(self):
        if self.update_mode not in UPDATE_MODES:
            raise ValueError(f"Unknown codebook update mode {self.update_mode!r}; choose one of {UPDATE_MODES}.")
        if self.restart_from not in RESTART_SOURCES or (self.restart_from != "all" and self.update_mode != "once"):
            raise ValueError(f"quantizer.restart_from must be one of {RESTART_SOURCES} ('least_used_depth' with "
                             f"update_mode 'once'); got {self.restart_from!r} with {self.update_mode!r}.")
        if self.commitment_reduction not in REDUCTIONS:
            raise ValueError(
                f"Unknown commitment reduction {self.commitment_reduction!r}; choose one of {REDUCTIONS}."
            )
        if not (0.0 <= self.decay < 1.0 and self.depth >= 1):
            got = f"decay {self.decay}, depth {self.depth}"
            raise ValueError(f"The quantizer needs 0 <= decay < 1 and depth >= 1; got {got}.")


QUANTIZER_FIELDS = config_fields(QuantizerConfig)  # the keys of `config.model.quantizer`


def quantizer_config_dict(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.model.quantizer`: the QuantizerConfig defaults (without depth), with `overrides` applied."""
    return config_dict(QuantizerConfig(), overrides, "quantizer")
