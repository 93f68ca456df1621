"""Cross-entropy with the soft labels Q_tau, fused: neither Q_tau nor log p is stored as an [N, K] array.

The stage-2 loss is CE(Q_tau(. | r), p) = logsumexp(l) - sum_k q_k l_k, with q = softmax(a) and
a_k = -||r - e_k||^2 / tau (paper Sec. 3.2.3). Materialising the soft labels and the log-probabilities
costs two float32 arrays of the logits' size [B, T, D, K]: at K = 16384 and 256 images per device that is
most of a 1.4B model's step memory. Here both come from the residuals r [N, C] and the codebook one block
of `block_k` codes at a time, with running (max, sum) accumulators as in a streaming softmax:

  lse_l = m_l + log sum_k exp(l_k - m_l)                      (the logits' log-normaliser)
  z     = sum_k exp(a_k - m_a),  s_l = sum_k exp(a_k - m_a) l_k,  s_a = sum_k exp(a_k - m_a) a_k
  CE    = lse_l - s_l / z,   H(Q_tau) = log z + m_a - s_a / z,   max_k q_k = 1 / z  (m_a = max_k a_k)

The gradient dCE/dl = softmax(l) - q is rebuilt blockwise in the backward pass (custom VJP) from the
saved per-row normalisers, so the only [N, K] arrays are the logits and their gradient.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


class SoftCE(NamedTuple):
    """Per-row results of `soft_label_cross_entropy` (each [N] float32)."""

    loss: jax.Array           # CE(Q_tau, softmax(logits)) in nats
    logsumexp: jax.Array      # logsumexp of the logits (log p(k) = l_k - logsumexp)
    target_entropy: jax.Array  # H(Q_tau) in nats (a metric: no gradient)
    target_p_max: jax.Array   # max_k Q_tau(k) (a metric: no gradient)


def default_block(k: int, n: int, budget_bytes: int = 1 << 27) -> int:
    """A codebook block whose few [N, block] float32 temporaries stay near `budget_bytes` (a power of 2)."""
    block = 1 << max(7, (budget_bytes // (16 * max(n, 1))).bit_length() - 1)
    return int(min(block, 1 << max(k - 1, 0).bit_length()))


def _codebook(codebook_KxC: jax.Array, block: int) -> tuple[jax.Array, jax.Array, int]:
    """The codebook in float32, its squared norms and the number of blocks of `block` codes (the last block
    is shifted back to end at K, so no padding is needed)."""
    e = codebook_KxC.astype(jnp.float32)
    return e, jnp.sum(e * e, -1), -(-e.shape[0] // block)


def _block_terms(j, logits_NxK, r_NxC, r_sq_N, inv_tau_N, e_KxC, e_sq_K, block):
    """(l, a, valid, start) of codebook block j: logits and a = -dist / tau [N, block], the mask of the codes
    not counted by an earlier block, and the block's first code."""
    n, k = logits_NxK.shape
    start = jnp.minimum(j * block, k - block) if k >= block else 0
    width = min(block, k)
    l_blk = jax.lax.dynamic_slice(logits_NxK, (0, start), (n, width)).astype(jnp.float32)
    e_blk = jax.lax.dynamic_slice_in_dim(e_KxC, start, width)
    e_sq = jax.lax.dynamic_slice_in_dim(e_sq_K, start, width)
    dist = (r_sq_N[:, None] + e_sq[None, :]) - 2.0 * jnp.dot(r_NxC, e_blk.T, precision=_HIGHEST)
    a_blk = -dist * inv_tau_N[:, None]
    # the last block may overlap the one before it (start clamped): count each code once
    cols = start + jnp.arange(width)
    valid = (cols >= j * block)[None, :]
    return l_blk, a_blk, valid, start


def _forward_stats(logits_NxK, r_NxC, inv_tau_N, codebook_KxC, block):
    n, k = logits_NxK.shape
    block = min(block, k)
    e, e_sq, nb = _codebook(codebook_KxC, block)
    r = r_NxC.astype(jnp.float32)
    r_sq = jnp.sum(r * r, -1)
    neg = jnp.full((n,), -jnp.inf, jnp.float32)
    zero = jnp.zeros((n,), jnp.float32)

    def body(j, carry):
        m_l, s_exp_l, m_a, z, s_l, s_a = carry
        l_blk, a_blk, valid, _ = _block_terms(j, logits_NxK, r, r_sq, inv_tau_N, e, e_sq, block)
        l_m = jnp.where(valid, l_blk, -jnp.inf)
        a_m = jnp.where(valid, a_blk, -jnp.inf)
        new_m_l = jnp.maximum(m_l, jnp.max(l_m, -1))
        s_exp_l = s_exp_l * jnp.exp(m_l - new_m_l) + jnp.sum(jnp.exp(l_m - new_m_l[:, None]), -1)
        new_m_a = jnp.maximum(m_a, jnp.max(a_m, -1))
        scale = jnp.exp(m_a - new_m_a)
        w = jnp.exp(a_m - new_m_a[:, None])  # 0 on padding / overlap
        z = z * scale + jnp.sum(w, -1)
        s_l = s_l * scale + jnp.sum(jnp.where(valid, w * l_blk, 0.0), -1)
        s_a = s_a * scale + jnp.sum(jnp.where(valid, w * a_blk, 0.0), -1)
        return new_m_l, s_exp_l, new_m_a, z, s_l, s_a

    m_l, s_exp_l, m_a, z, s_l, s_a = jax.lax.fori_loop(0, nb, body, (neg, zero, neg, zero, zero, zero))
    lse_l = m_l + jnp.log(s_exp_l)
    lse_a = m_a + jnp.log(z)
    return SoftCE(lse_l - s_l / z, lse_l, lse_a - s_a / z, 1.0 / z), lse_a


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _soft_ce(logits_NxK, r_NxC, inv_tau_N, codebook_KxC, block):
    return _forward_stats(logits_NxK, r_NxC, inv_tau_N, codebook_KxC, block)[0]


def _soft_ce_fwd(logits_NxK, r_NxC, inv_tau_N, codebook_KxC, block):
    out, lse_a = _forward_stats(logits_NxK, r_NxC, inv_tau_N, codebook_KxC, block)
    return out, (logits_NxK, r_NxC, inv_tau_N, codebook_KxC, out.logsumexp, lse_a)


def _soft_ce_bwd(block, res, g):
    logits_NxK, r_NxC, inv_tau_N, codebook_KxC, lse_l, lse_a = res
    n, k = logits_NxK.shape
    block = min(block, k)
    e, e_sq, nb = _codebook(codebook_KxC, block)
    r = r_NxC.astype(jnp.float32)
    r_sq = jnp.sum(r * r, -1)
    g_ce, g_lse = g.loss.astype(jnp.float32), g.logsumexp.astype(jnp.float32)

    def body(j, grad):
        l_blk, a_blk, valid, start = _block_terms(j, logits_NxK, r, r_sq, inv_tau_N, e, e_sq, block)
        p = jnp.exp(l_blk - lse_l[:, None])
        q = jnp.exp(a_blk - lse_a[:, None])
        d = (g_ce + g_lse)[:, None] * p - g_ce[:, None] * q
        old = jax.lax.dynamic_slice(grad, (0, start), d.shape)
        return jax.lax.dynamic_update_slice(grad, jnp.where(valid, d, old).astype(grad.dtype), (0, start))

    d_logits = jax.lax.fori_loop(0, nb, body, jnp.zeros_like(logits_NxK))
    # Q_tau is a training target: no gradient reaches the residuals, tau or the codebook.
    return d_logits, jnp.zeros_like(r_NxC), jnp.zeros_like(inv_tau_N), jnp.zeros_like(codebook_KxC)


_soft_ce.defvjp(_soft_ce_fwd, _soft_ce_bwd)


def soft_label_cross_entropy(
    logits_NxK: jax.Array,
    residual_NxC: jax.Array,
    codebook_KxC: jax.Array,
    inv_tau_N: jax.Array,
    *,
    block_k: int | None = None,
) -> SoftCE:
    """Per-row CE(Q_tau(. | r), softmax(logits)) without materialising Q_tau or log p.

    `residual_NxC` holds the residual each row's code was drawn from (depth d of a position: z minus the
    first d codes), `inv_tau_N` each row's 1 / tau (tau may differ per depth). Gradients flow to the logits
    only. With one-hot targets use `one_hot_cross_entropy` instead.
    """
    n, k = logits_NxK.shape
    if residual_NxC.shape != (n, codebook_KxC.shape[1]) or codebook_KxC.shape[0] != k:
        raise ValueError(
            f"soft_label_cross_entropy needs logits [N, K], residuals [N, C] and a codebook [K, C]; got "
            f"{logits_NxK.shape}, {residual_NxC.shape} and {codebook_KxC.shape}."
        )
    block = default_block(k, n) if block_k is None else int(block_k)
    inv_tau = jnp.broadcast_to(jnp.asarray(inv_tau_N, jnp.float32), (n,))
    return _soft_ce(logits_NxK, jax.lax.stop_gradient(residual_NxC), inv_tau,
                    jax.lax.stop_gradient(codebook_KxC), block)


def one_hot_cross_entropy(logits_NxK: jax.Array, codes_N: jax.Array) -> SoftCE:
    """The same outputs for one-hot targets: CE = logsumexp(l) - l[code] (entropy 0, p_max 1)."""
    lse = jax.nn.logsumexp(logits_NxK.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logits_NxK, codes_N[:, None], axis=-1)[:, 0].astype(jnp.float32)
    return SoftCE(lse - picked, lse, jnp.zeros_like(lse), jnp.ones_like(lse))
