"""How informative the soft labels Q_tau are, and a tau per depth that makes them so.

Q_tau(k | r) = softmax_k(-||r - e(k)||^2 / tau) is only a useful target when tau matches the scale of
the squared distances: the residuals shrink with depth, so a tau that fits depth 1 makes the deeper
depths' targets (and the stochastic codes drawn from them) close to uniform, and a stage-2 model
trained on them learns to draw noise. Two tools:

- `q_tau_stats`: per depth, the mean entropy of Q_tau in bits, the mean probability of the nearest
  code, and the mean squared distance to the nearest and second-nearest code;
- `calibrate_temperature`: per depth, the tau whose mean entropy equals a target in bits (solved by
  bisection on log tau; the entropy of a Boltzmann distribution grows with its temperature).

Both walk the depths as training does: the residual of depth d+1 subtracts the code drawn from Q_tau
at depth d (stochastic) or the nearest code (deterministic).
"""

from __future__ import annotations

import math
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from rq_jax.quantizer.soft import Temperature, per_depth_temperature, squared_distances

_AUTO = re.compile(r"^auto:\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def parse_auto(temperature) -> float | None:
    """The entropy target in bits of an "auto:<bits>" temperature; None for numbers.

    Raises ValueError (one sentence naming the accepted forms) for any other string.
    """
    if not isinstance(temperature, str):
        return None
    m = _AUTO.match(temperature.strip())
    if not m:
        raise ValueError(
            f"config.soft.temperature={temperature!r} is not understood: give a number (0.5), one number per "
            "depth ((0.1, 0.02, 0.01, 0.005)) or an entropy target in bits per depth such as 'auto:1.0'."
        )
    return float(m.group(1))


def _entropy_and_p_nearest(dist_NxK: jax.Array, tau: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean entropy of softmax(-dist / tau) in bits and mean probability of the nearest code."""
    logits = -(dist_NxK - jnp.min(dist_NxK, axis=-1, keepdims=True)) / tau
    logp = jax.nn.log_softmax(logits, axis=-1)
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1) / math.log(2.0)
    return jnp.mean(ent), jnp.mean(jnp.exp(jnp.max(logp, axis=-1)))


@jax.jit
def _depth_stats(residual_NxC, codebook_KxC, tau):
    dist = squared_distances(residual_NxC, codebook_KxC)
    ent, p = _entropy_and_p_nearest(dist, tau)
    two = -jax.lax.top_k(-dist, 2)[0]
    return ent, p, jnp.mean(two[:, 0]), jnp.mean(two[:, 1]), dist


@partial(jax.jit, static_argnames=("stochastic",))
def _next_residual(residual_NxC, codebook_KxC, dist_NxK, tau, rng, *, stochastic: bool):
    if stochastic:
        idx = jax.random.categorical(rng, -(dist_NxK - jnp.min(dist_NxK, -1, keepdims=True)) / tau, axis=-1)
    else:
        idx = jnp.argmin(dist_NxK, axis=-1)
    return residual_NxC - jnp.take(codebook_KxC, idx, axis=0)


def _flat(z: np.ndarray | jax.Array, codebook_KxC) -> tuple[jax.Array, jax.Array]:
    emb = jnp.asarray(codebook_KxC, jnp.float32)
    if z.shape[-1] != emb.shape[-1]:
        raise ValueError(f"The features have {z.shape[-1]} channels but the codebook has {emb.shape[-1]}.")
    return jnp.asarray(z, jnp.float32).reshape(-1, emb.shape[-1]), emb


def q_tau_stats(z: np.ndarray | jax.Array, codebook_KxC, depth: int, temperature: Temperature, *,
                stochastic: bool = True, seed: int = 0) -> dict[str, list[float]]:
    """Per-depth statistics of Q_tau over feature vectors z [..., C].

    Returns lists of `depth` floats: `entropy_bits` (mean entropy of Q_tau), `p_nearest` (mean probability
    of the nearest code), `sq_dist_nearest` and `sq_dist_second` (mean squared distance to the nearest and
    second-nearest code).
    """
    taus = per_depth_temperature(temperature, depth)
    residual, emb = _flat(z, codebook_KxC)
    rng = jax.random.key(seed)
    out: dict[str, list[float]] = {k: [] for k in ("entropy_bits", "p_nearest", "sq_dist_nearest", "sq_dist_second")}
    for d in range(depth):
        tau = jnp.float32(taus[d])
        ent, p, d1, d2, dist = _depth_stats(residual, emb, tau)
        for k, v in zip(out, (ent, p, d1, d2), strict=True):
            out[k].append(float(v))
        residual = _next_residual(residual, emb, dist, tau, jax.random.fold_in(rng, d), stochastic=stochastic)
    return out


@partial(jax.jit, static_argnames=("iters",))
def _bisect_log_tau(dist_NxK: jax.Array, target_bits: jax.Array, iters: int) -> jax.Array:
    gap = dist_NxK - jnp.min(dist_NxK, axis=-1, keepdims=True)  # >= 0, 0 at the nearest code
    scale = jnp.mean(jnp.max(gap, axis=-1))  # the spread of distances sets the tau scale
    log_scale = jnp.log(jnp.where(scale > 0, scale, 1.0))

    def entropy_bits(log_tau):  # _entropy_and_p_nearest on `gap` without its min and p: half the time
        logp = jax.nn.log_softmax(-gap / jnp.exp(log_tau), axis=-1)
        return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1)) / math.log(2.0)

    def body(_, lo_hi):
        lo, hi = lo_hi
        mid = 0.5 * (lo + hi)
        below = entropy_bits(mid) < target_bits  # entropy grows with tau
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (log_scale - 30.0, log_scale + 30.0))
    return jnp.exp(0.5 * (lo + hi))


def solve_tau(dist_NxK: jax.Array, target_bits: float, *, iters: int = 26) -> float:
    """The tau at which the mean entropy of softmax(-dist / tau) is `target_bits`: bisection on log tau over
    scale * e^[-30, 30], one compiled loop; 26 halvings leave tau within 1e-6 relative, far below the
    sampling noise of the mean."""
    k = dist_NxK.shape[-1]
    if not 0.0 < target_bits < math.log2(k):
        raise ValueError(f"An entropy target must lie in (0, log2 K = {math.log2(k):.2f}) bits, got {target_bits}.")
    return float(_bisect_log_tau(jnp.asarray(dist_NxK, jnp.float32), jnp.float32(target_bits), iters))


def calibrate_temperature(z: np.ndarray | jax.Array, codebook_KxC, depth: int, target_bits: float | tuple, *,
                          stochastic: bool = True, seed: int = 0) -> tuple[float, ...]:
    """Per-depth tau whose mean Q_tau entropy over z [..., C] is `target_bits` (one number or one per depth).

    Depth by depth: solve tau_d on the residuals of depth d, then draw that depth's codes with tau_d
    (or take the nearest code if not `stochastic`) to form the next residuals, as the trainer does.
    """
    targets = per_depth_temperature(target_bits, depth)
    residual, emb = _flat(z, codebook_KxC)
    rng = jax.random.key(seed)
    taus = []
    for d in range(depth):
        _, _, _, _, dist = _depth_stats(residual, emb, jnp.float32(1.0))
        tau = solve_tau(dist, float(targets[d]))
        taus.append(tau)
        residual = _next_residual(residual, emb, dist, jnp.float32(tau), jax.random.fold_in(rng, d),
                                  stochastic=stochastic)
    return tuple(taus)


def uniform_targets_warning(entropy_bits: list[float], codebook_size: int) -> str | None:
    """One sentence when any depth's targets carry more than half of log2 K bits of entropy, else None."""
    half = 0.5 * math.log2(codebook_size)
    bad = [d + 1 for d, h in enumerate(entropy_bits) if h > half]
    if not bad:
        return None
    ents = ", ".join(f"{h:.2f}" for h in entropy_bits)
    return (f"soft-label targets are close to uniform at depth {', '.join(map(str, bad))} (entropy {ents} bits per "
            f"depth, over half of log2 K = {2 * half:.2f}): the codes drawn there are nearly random, so the model "
            "learns little about them; if the samples lack detail, lower config.soft.temperature, give one per "
            "depth, or set it to 'auto:1.0' (README, 'Soft labels').")


SAMPLE_ELEMENTS = 1 << 23


def max_sample_vectors(codebook_size: int, max_elements: int = SAMPLE_ELEMENTS) -> int:
    """How many feature vectors the Q_tau statistics use at most: `max_elements` / K (so the N x K distance
    matrix stays small: 2^23 elements are 65,536 vectors at K = 128, whose mean entropy is within ~0.01 bits
    of the whole set's, and a calibration takes seconds on a CPU)."""
    return max(max_elements // max(codebook_size, 1), 1)


def sample_vectors(z: np.ndarray, codebook_size: int, *, max_elements: int = SAMPLE_ELEMENTS,
                   seed: int = 0) -> np.ndarray:
    """A fixed random subset of the feature vectors of z [..., C], at most `max_sample_vectors(K)` of them."""
    flat = np.asarray(z).reshape(-1, z.shape[-1])
    n = min(len(flat), max_sample_vectors(codebook_size, max_elements))
    if n >= len(flat):
        return flat.astype(np.float32)
    idx = np.sort(np.random.default_rng(seed).choice(len(flat), n, replace=False))
    return flat[idx].astype(np.float32)
