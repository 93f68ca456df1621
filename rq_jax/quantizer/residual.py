"""Residual quantization with one shared codebook (paper Eq. 3-7), as pure functions.

  r_0 = sg(z);  k_d = argmin_k ||r_{d-1} - e(k)||^2;  r_d = r_{d-1} - e(k_d);  zhat(d) = sum_{i<=d} e(k_i)

`rq_quantize` is the frozen-codebook forward (evaluation, code extraction); `rq_quantize_train` also
returns the EMA-updated codebook. Straight-through: quantized = z + sg(zhat(D) - z). Commitment loss
per depth: mean((z - sg(zhat(d)))^2); reduced by the mean over depths (the official code, default) or
the sum (Eq. 7 as written); the codebook itself gets no gradient (it is learned by EMA).

Distances, partial sums and EMA statistics are float32 whatever the feature dtype; the quantized
output has the features' dtype.

Codebook update order (`update=`):
  * "per_depth" (default): the official implementation's order. The shared codebook is searched at
    depth d, its EMA statistics are updated from depth d's residuals and codes, and depth d+1
    searches the already-updated codebook; the vector added at depth d is the pre-update code.
    It is the default because it reproduces the official training dynamics (and golden outputs),
    so official recipes and checkpoints behave the same here.
  * "once": every depth searches the step's starting codebook, and a single EMA step uses the
    residuals and codes of all depths pooled (one decay per training step). Cheaper (one
    update instead of D) and every code of a step refers to the same codebook.

Where restarted codes come from (`restart_from=`, "once" only for the second):
  * "all" (default): the vectors the EMA step saw (per_depth: that depth's residuals, as the official
    code; once: every depth's residuals pooled).
  * "least_used_depth": the residuals of the depth that used the fewest distinct codes in this batch.
    Deep residuals are small and crowd onto a few small codes; restarting dead codes on them spreads
    the deep depths over the codebook (a switch; not in the official code).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rq_jax.kernels.nearest_code import nearest_code
from rq_jax.quantizer import codebook as cb
from rq_jax.quantizer.config import REDUCTIONS, RESTART_SOURCES, UPDATE_MODES, QuantizerConfig


class RQOutput(NamedTuple):
    """What residual quantization of features z [..., C] gives.

    codes: [..., D] int32 code indices.
    zhat_cum: [..., D, C] float32 partial sums zhat(1..D) (zhat_cum[..., d, :] uses depths 0..d).
    quantized: [..., C] zhat(D) with straight-through gradients to z, in z's dtype.
    commit_loss: scalar float32 commitment loss (unweighted; multiply by beta).
    """

    codes: jax.Array
    zhat_cum: jax.Array
    quantized: jax.Array
    commit_loss: jax.Array


def check_inputs(z: jax.Array, codebook_KxC: jax.Array, depth: int) -> None:
    """Raises one clear ValueError for rank/dimension mismatches and a depth below 1."""
    if codebook_KxC.ndim != 2:
        raise ValueError(f"The codebook must have shape [K, C], got {codebook_KxC.shape}.")
    if z.ndim < 1 or z.shape[-1] != codebook_KxC.shape[-1]:
        raise ValueError(
            f"Features {z.shape} do not end in the codebook's embedding dimension "
            f"{codebook_KxC.shape[-1]} (codebook {codebook_KxC.shape}); features must be [..., C]."
        )
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"The quantization depth must be an integer >= 1, got {depth!r}.")


def straight_through(z: jax.Array, zhat: jax.Array) -> jax.Array:
    """z + sg(zhat - z): the value of zhat with the gradient of the identity to z."""
    return z + jax.lax.stop_gradient(zhat.astype(z.dtype) - z)


def commitment_loss(
    z: jax.Array, zhat_cum: jax.Array, reduction: str = QuantizerConfig.commitment_reduction
) -> jax.Array:
    """Reduce over depths of mean((z - sg(zhat(d)))^2); gradients reach z only."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unknown commitment reduction {reduction!r}; choose 'mean' or 'sum'.")
    zf = z.astype(jnp.float32)[..., None, :]
    per_depth_D = jnp.mean(
        jnp.square(zf - jax.lax.stop_gradient(zhat_cum)), axis=tuple(range(zhat_cum.ndim - 2)) + (-1,)
    )
    return jnp.mean(per_depth_D) if reduction == "mean" else jnp.sum(per_depth_D)


def rq_encode(
    z: jax.Array, codebook_KxC: jax.Array, depth: int, *, impl: str = QuantizerConfig.impl
) -> tuple[jax.Array, jax.Array]:
    """Codes [..., D] and partial sums [..., D, C] of features z [..., C] with a frozen codebook."""
    check_inputs(z, codebook_KxC, depth)
    emb = jax.lax.stop_gradient(codebook_KxC).astype(jnp.float32)
    residual = jax.lax.stop_gradient(z).astype(jnp.float32)
    acc = jnp.zeros_like(residual)
    codes, partials = [], []
    for _ in range(depth):
        idx = nearest_code(residual, emb, impl=impl)
        e = jnp.take(emb, idx, axis=0)
        residual = residual - e
        acc = acc + e
        codes.append(idx)
        partials.append(acc)
    return jnp.stack(codes, axis=-1), jnp.stack(partials, axis=-2)


def rq_decode(codes: jax.Array, codebook_KxC: jax.Array, depth: int | None = None) -> jax.Array:
    """zhat(depth) [..., C] from codes [..., D]: the sum of the first `depth` (default: all) codes."""
    d_all = codes.shape[-1]
    depth = d_all if depth is None else depth
    if not isinstance(depth, int) or not 1 <= depth <= d_all:
        raise ValueError(f"Decoding depth must be an integer in [1, {d_all}], got {depth!r}.")
    vecs = jnp.take(codebook_KxC.astype(jnp.float32), codes[..., :depth], axis=0)
    return jnp.sum(vecs, axis=-2)


def rq_quantize(
    z: jax.Array,
    codebook_KxC: jax.Array,
    depth: int,
    *,
    impl: str = QuantizerConfig.impl,
    commitment_reduction: str = QuantizerConfig.commitment_reduction,
) -> RQOutput:
    """Residual quantization with a frozen codebook: codes, partial sums, straight-through, loss."""
    codes, zhat_cum = rq_encode(z, codebook_KxC, depth, impl=impl)
    return RQOutput(
        codes=codes,
        zhat_cum=zhat_cum,
        quantized=straight_through(z, zhat_cum[..., -1, :]),
        commit_loss=commitment_loss(z, zhat_cum, commitment_reduction),
    )


def rq_quantize_train(
    z: jax.Array,
    state: cb.CodebookState,
    depth: int,
    rng: jax.Array | None,
    *,
    decay: float = QuantizerConfig.decay,
    eps: float = QuantizerConfig.eps,
    restart: bool = QuantizerConfig.restart,
    restart_threshold: float = QuantizerConfig.restart_threshold,
    update: str = QuantizerConfig.update_mode,
    impl: str = QuantizerConfig.impl,
    commitment_reduction: str = QuantizerConfig.commitment_reduction,
    restart_from: str = QuantizerConfig.restart_from,
) -> tuple[RQOutput, cb.CodebookState]:
    """Training-mode residual quantization: the forward of `rq_quantize` plus the EMA codebook update.

    Returns (output, new codebook state). `rng` is needed only when `restart` is on. See the module
    docstring for the two `update` orders.
    """
    if update not in UPDATE_MODES:
        raise ValueError(f"Unknown codebook update mode {update!r}; choose one of {UPDATE_MODES}.")
    if restart_from not in RESTART_SOURCES:
        raise ValueError(f"Unknown restart source {restart_from!r}; choose one of {RESTART_SOURCES}.")
    if restart_from != "all" and update != "once":
        raise ValueError(f"restart_from={restart_from!r} needs update mode 'once' (all depths' residuals at hand).")
    check_inputs(z, state.embedding_KxC, depth)
    if restart and rng is None:
        raise ValueError("Restarting unused codes needs a PRNG key: pass rng=..., or restart=False.")
    upd = dict(decay=decay, eps=eps, restart=restart, restart_threshold=restart_threshold)
    state = jax.tree.map(lambda a: jax.lax.stop_gradient(a).astype(jnp.float32), state)
    if update == "once":
        codes, zhat_cum, state = _search_then_update(z, state, depth, rng, impl, restart_from, upd)
    else:
        codes, zhat_cum, state = _update_per_depth(z, state, depth, rng, impl, upd)
    out = RQOutput(
        codes=codes,
        zhat_cum=zhat_cum,
        quantized=straight_through(z, zhat_cum[..., -1, :]),
        commit_loss=commitment_loss(z, zhat_cum, commitment_reduction),
    )
    return out, state


def _search_then_update(z, state, depth, rng, impl, restart_from, upd):
    """update="once": search all depths with the old codebook, then one EMA update from every depth's
    residuals (codes, zhat_cum, new state)."""
    c = z.shape[-1]
    codes, zhat_cum = rq_encode(z, state.embedding_KxC, depth, impl=impl)
    zf = jax.lax.stop_gradient(z).astype(jnp.float32)[..., None, :]
    # The residual each depth searched: r_{d-1} = z - zhat(d-1).
    prev = jnp.concatenate([jnp.zeros_like(zf), zhat_cum[..., :-1, :]], axis=-2)
    residuals_NxDxC = (zf - prev).reshape(-1, depth, c)
    pool = None
    if restart_from == "least_used_depth":
        codes_NxD = codes.reshape(-1, depth)
        k = state.num_codes
        used_D = jax.vmap(lambda c_N: jnp.sum(jnp.zeros((k,), jnp.float32).at[c_N].max(1.0)), in_axes=1)(codes_NxD)
        pool = jnp.take(residuals_NxDxC, jnp.argmin(used_D), axis=1)
    state = cb.ema_update(state, residuals_NxDxC.reshape(-1, c), codes.reshape(-1), rng=rng,
                          restart_vectors_MxC=pool, **upd)
    return codes, zhat_cum, state


def _update_per_depth(z, state, depth, rng, impl, upd):
    """update="per_depth": depth d searches the codebook as updated by depths < d (codes, zhat_cum, new state)."""
    c = z.shape[-1]
    rngs = [None] * depth if rng is None else list(jax.random.split(rng, depth))
    residual = jax.lax.stop_gradient(z).astype(jnp.float32)
    acc = jnp.zeros_like(residual)
    codes_l, partials = [], []
    for d in range(depth):
        idx = nearest_code(residual, state.embedding_KxC, impl=impl)
        e = jnp.take(state.embedding_KxC, idx, axis=0)  # the pre-update code vectors
        state = cb.ema_update(state, residual.reshape(-1, c), idx.reshape(-1), rng=rngs[d], **upd)
        residual = residual - e
        acc = acc + e
        codes_l.append(idx)
        partials.append(acc)
    return jnp.stack(codes_l, axis=-1), jnp.stack(partials, axis=-2), state
