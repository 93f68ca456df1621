"""Soft labels Q_tau(k | r) and stochastic code sampling (paper Sec. 3.2.3).

  Q_tau(k | r) = softmax_k(-||r - e(k)||^2 / tau)

`rq_soft_codes` walks the depths like residual quantization, returning the soft label of every
depth (the stage-2 training target) and the codes: the argmin (deterministic) or a draw from Q_tau
(stochastic sampling). As tau -> 0 the draw becomes the argmin exactly (the logits are shifted by
the minimum distance, so they stay finite and the gap between codes grows as 1/tau).
`gumbel_codes` draws the same distribution without materialising N x K, through the nearest-code
kernel's Gumbel-max variant (for large-scale code extraction).

tau is one number or one number per depth: residuals shrink with depth, so one tau that gives
informative targets at depth 1 can make Q_tau nearly uniform at depth 4 (see `rq_jax.quantizer.calibrate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from rq_jax.kernels.nearest_code import nearest_code
from rq_jax.quantizer.config import QuantizerConfig
from rq_jax.quantizer.residual import check_inputs

_HIGHEST = jax.lax.Precision.HIGHEST


Temperature = float | Sequence[float]


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, str):
        raise ValueError(
            f"The soft-label temperature {temperature!r} is a calibration target: resolve it to numbers first "
            "(rq_jax.quantizer.calibrate_temperature; the stage-2 trainer does this at start-up)."
        )
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"The soft-label temperature tau must be > 0, got {temperature}.")


def per_depth_temperature(temperature: Temperature, depth: int) -> tuple:
    """tau as a tuple of `depth` values: one number is used at every depth, a sequence must have `depth` entries."""
    if isinstance(temperature, str) or not isinstance(temperature, Sequence):
        _check_temperature(temperature)
        return (temperature,) * depth
    taus = tuple(temperature)
    if len(taus) != depth:
        raise ValueError(
            f"The soft-label temperature has {len(taus)} values {taus} but the codes have depth {depth}: "
            "give one tau, or one per depth."
        )
    for t in taus:
        _check_temperature(t)
    return taus


def squared_distances(r: jax.Array, codebook_KxC: jax.Array) -> jax.Array:
    """||r - e(k)||^2 for every code [..., K], float32 (materialises [..., K]: soft labels need it)."""
    rf = r.astype(jnp.float32)
    e = codebook_KxC.astype(jnp.float32)
    dot = jnp.einsum("...c,kc->...k", rf, e, precision=_HIGHEST)
    return jnp.sum(rf * rf, -1, keepdims=True) + jnp.sum(e * e, -1) - 2.0 * dot


def soft_labels(r: jax.Array, codebook_KxC: jax.Array, temperature: float) -> jax.Array:
    """Q_tau(. | r) [..., K] for residuals r [..., C]."""
    _check_temperature(temperature)
    return jax.nn.softmax(-squared_distances(r, codebook_KxC) / temperature, axis=-1)


def rq_soft_codes(
    z: jax.Array,
    codebook_KxC: jax.Array,
    depth: int,
    temperature: Temperature,
    *,
    stochastic: bool = False,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Soft labels [..., D, K] and codes [..., D] of features z [..., C].

    Deterministic codes are the argmin (ties to the lowest index); stochastic codes are drawn from
    Q_tau at every depth (needs `rng`); `temperature` is one tau or one per depth. Gradients are
    stopped (these are training targets).
    """
    softs, codes, _ = _walk_depths(z, codebook_KxC, depth, temperature, stochastic, rng, keep_soft=True)
    return softs, codes


def rq_residual_codes(
    z: jax.Array,
    codebook_KxC: jax.Array,
    depth: int,
    temperature: Temperature,
    *,
    stochastic: bool = False,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Codes [..., D] (the same draws as `rq_soft_codes` for the same key) and the residual each was drawn
    from [..., D, C]: with the codebook and tau they define the soft labels, which
    `rq_jax.quantizer.soft_ce.soft_label_cross_entropy` uses without materialising [..., D, K]."""
    _, codes, residuals = _walk_depths(z, codebook_KxC, depth, temperature, stochastic, rng, keep_soft=False)
    return codes, residuals


def _walk_depths(z, codebook_KxC, depth, temperature, stochastic, rng, *, keep_soft: bool):
    """(soft labels [..., D, K] or None, codes [..., D], residuals [..., D, C]) depth by depth."""
    check_inputs(z, codebook_KxC, depth)
    taus = per_depth_temperature(temperature, depth)
    if stochastic and rng is None:
        raise ValueError("Stochastic code sampling needs a PRNG key: pass rng=..., or stochastic=False.")
    emb = jax.lax.stop_gradient(codebook_KxC).astype(jnp.float32)
    residual = jax.lax.stop_gradient(z).astype(jnp.float32)
    rngs = jax.random.split(rng, depth) if stochastic else [None] * depth
    softs, codes, residuals = [], [], []
    for d in range(depth):
        residuals.append(residual)
        dist = squared_distances(residual, emb)
        logits = -(dist - jnp.min(dist, axis=-1, keepdims=True)) / taus[d]
        if keep_soft:
            softs.append(jax.nn.softmax(logits, axis=-1))
        if stochastic:
            idx = jax.random.categorical(rngs[d], logits, axis=-1).astype(jnp.int32)
        else:
            idx = jnp.argmin(dist, axis=-1).astype(jnp.int32)
        residual = residual - jnp.take(emb, idx, axis=0)
        codes.append(idx)
    soft = jnp.stack(softs, axis=-2) if keep_soft else None
    return soft, jnp.stack(codes, axis=-1), jnp.stack(residuals, axis=-2)


def gumbel_codes(
    z: jax.Array,
    codebook_KxC: jax.Array,
    depth: int,
    temperature: Temperature,
    seed: jax.Array | int,
    *,
    impl: str = QuantizerConfig.impl,
) -> jax.Array:
    """Stochastic codes [..., D] drawn from Q_tau without the N x K matrix (Gumbel-max kernel).

    `seed` is a uint32 scalar; depth d uses seed + d. Same distribution as
    `rq_soft_codes(..., stochastic=True)`, different random stream.
    """
    check_inputs(z, codebook_KxC, depth)
    taus = per_depth_temperature(temperature, depth)
    emb = jax.lax.stop_gradient(codebook_KxC).astype(jnp.float32)
    residual = jax.lax.stop_gradient(z).astype(jnp.float32)
    seed = jnp.asarray(seed, jnp.uint32)
    codes = []
    for d in range(depth):
        idx = nearest_code(
            residual, emb, impl=impl, gumbel_seed=seed + jnp.uint32(d), temperature=taus[d]
        )
        residual = residual - jnp.take(emb, idx, axis=0)
        codes.append(idx)
    return jnp.stack(codes, axis=-1)
