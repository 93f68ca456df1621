"""Soft labels of the stage-2 trainer (paper Sec. 3.2.3): tau per depth, its report, and the targets.

`set_temperature` resolves `config.soft.temperature` (a number, one per depth, or "auto:<bits>" calibrated on
the training features), logs the per-depth entropy of Q_tau and warns when targets are near uniform.
`draw_targets` draws the codes of a batch and what the fused soft-label cross-entropy needs (residuals and
1/tau per depth), so Q_tau is never materialised as a [B, T, D, K] array; `cross_entropy` scores logits.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rq_jax import metrics
from rq_jax.quantizer import (
    SoftCE,
    calibrate_temperature,
    max_sample_vectors,
    one_hot_cross_entropy,
    parse_auto,
    per_depth_temperature,
    q_tau_stats,
    rq_residual_codes,
    sample_vectors,
    soft_label_cross_entropy,
    uniform_targets_warning,
)


class SoftLabelWarning(UserWarning):
    """The soft-label targets of some depth are close to uniform (tau too large for the codebook's scale)."""


def resolve_temperature(config: ml_collections.ConfigDict, features: np.ndarray, codebook_KxC: np.ndarray,
                        workdir: str) -> tuple[tuple[float, ...], str]:
    """The run's tau per depth and where it came from.

    `config.soft.temperature` is a number, one number per depth, or "auto:<bits>": then tau is solved per
    depth on a fixed sample of the training features so that Q_tau has that mean entropy. A run that resumes
    keeps the values its config.json holds for the same target, so it trains on the same targets.
    """
    depth = int(config.model.code_shape[2])
    spec = config.soft.temperature
    target = parse_auto(spec)
    if target is None:
        return tuple(float(t) for t in per_depth_temperature(spec, depth)), "as configured"
    saved = os.path.join(workdir, "config.json")
    if os.path.exists(saved):
        with open(saved) as f:
            old = json.load(f).get("soft", {})
        taus = old.get("temperature")
        if old.get("temperature_spec") == spec and isinstance(taus, list) and len(taus) == depth:
            return tuple(float(t) for t in taus), f"{spec}, as calibrated when this run started ({saved})"
    z = sample_vectors(features, codebook_KxC.shape[0], seed=config.seed)
    taus = calibrate_temperature(z, codebook_KxC, depth, target, stochastic=config.soft.stochastic_codes,
                                 seed=config.seed)
    return taus, f"{spec}, calibrated on {len(z):,} training feature vectors"


def report_soft_labels(config: ml_collections.ConfigDict, taus: tuple[float, ...], how: str, features: np.ndarray,
                       codebook_KxC: np.ndarray, workdir: str) -> dict:
    """Logs tau and the per-depth entropy / nearest-code probability of Q_tau on the training features,
    warns (SoftLabelWarning) when a depth's targets are near uniform, writes `soft_labels.json`."""
    depth, k = int(config.model.code_shape[2]), int(codebook_KxC.shape[0])
    z = sample_vectors(features, k, seed=config.seed)
    stats = q_tau_stats(z, codebook_KxC, depth, taus, stochastic=config.soft.stochastic_codes, seed=config.seed)
    if not config.soft.soft_labels:
        stats["entropy_bits"] = [0.0] * depth  # one-hot targets of the (possibly stochastic) codes
        stats["p_nearest"] = [float("nan")] * depth
    fmt = lambda xs, f="{:.2f}": "/".join(f.format(x) for x in xs)  # noqa: E731
    metrics.log_line(f"soft labels: tau {fmt(taus, '{:.3g}')} per depth ({how}); target entropy "
                     f"{fmt(stats['entropy_bits'])} bits (log2 K = {math.log2(k):.2f}), nearest-code p "
                     f"{fmt(stats['p_nearest'])}")
    message = uniform_targets_warning(stats["entropy_bits"], k)
    if message:
        metrics.log_line(f"WARNING: {message}")
        warnings.warn(message, SoftLabelWarning, stacklevel=2)
    record = dict(temperature=list(taus), source=how, num_vectors=len(z), **stats)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "soft_labels.json"), "w") as f:
            json.dump(record, f, indent=2)
    return record


class Targets(NamedTuple):
    """What the loss needs to score the codes of a batch: the codes [B,h,w,D], the residual each was drawn from
    [B,h,w,D,C] and 1/tau per depth [D] (None: one-hot targets). The soft labels Q_tau themselves are never
    materialised: `soft_label_cross_entropy` rebuilds them block by block from these."""

    codes: jax.Array
    residuals: jax.Array
    inv_tau_D: jax.Array | None


def draw_targets(config, z, codebook_KxC, rng, *, deterministic: bool) -> Targets:
    """Codes (stochastic or nearest) and soft-label inputs from features z (paper Sec. 3.2.3)."""
    sc = config.soft
    depth = int(config.model.code_shape[2])
    stochastic = sc.stochastic_codes and not deterministic
    temperature = 1.0 if deterministic else sc.temperature  # deterministic targets do not use tau
    codes, residuals = rq_residual_codes(z, codebook_KxC, depth, temperature, stochastic=stochastic, rng=rng)
    if not sc.soft_labels or deterministic:
        return Targets(codes, residuals, None)
    taus = per_depth_temperature(sc.temperature, depth)
    return Targets(codes, residuals, 1.0 / jnp.asarray(taus, jnp.float32))


def cross_entropy(logits_BxhxwxDxK: jax.Array, targets: Targets, codebook_KxC: jax.Array) -> SoftCE:
    """Per-code cross-entropy against the targets (fused soft labels, or one-hot), shaped [B, h, w, D]."""
    lead, k = logits_BxhxwxDxK.shape[:-1], logits_BxhxwxDxK.shape[-1]
    flat = logits_BxhxwxDxK.reshape(-1, k)
    if targets.inv_tau_D is None:
        out = one_hot_cross_entropy(flat, targets.codes.reshape(-1))
    else:
        r = targets.residuals.reshape(-1, targets.residuals.shape[-1])
        inv_tau = jnp.broadcast_to(targets.inv_tau_D, lead).reshape(-1)
        out = soft_label_cross_entropy(flat, r, codebook_KxC, inv_tau)
    return SoftCE(*(x.reshape(lead) for x in out))


def set_temperature(config: ml_collections.ConfigDict, src: Any, workdir: str) -> None:
    """Resolves tau per depth, reports the soft labels, and writes the numbers into the config: a resumed run
    (config.json) and the jitted step use them."""
    codebook_KxC = np.asarray(src.codebook, np.float32)
    features = src.sample_vectors(max_sample_vectors(len(codebook_KxC)), seed=config.seed)  # bounded sample
    taus, how = resolve_temperature(config, features, codebook_KxC, workdir)
    report_soft_labels(config, taus, how, features, codebook_KxC, workdir)
    with config.ignore_type():
        config.soft.temperature_spec = config.soft.temperature if parse_auto(config.soft.temperature) else ""
        config.soft.temperature = list(taus)
