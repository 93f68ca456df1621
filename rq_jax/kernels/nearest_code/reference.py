"""Plain-jnp nearest-code search: the oracle every kernel is tested against.

Squared distances ||z||^2 - 2 z.e + ||e||^2 are computed in float32 one codebook chunk at a time,
keeping a running (min, argmin), so memory is O(N * block_k) instead of O(N * K). Ties go to the
lowest index (inside a chunk `argmin` returns the first minimum; across chunks a later chunk wins
only when strictly smaller).

The optional Gumbel-max variant returns argmin_k d(n, k) / tau - g(n, k) with Gumbel noise g drawn
from a counter-based hash of (seed, n, k): a sample from softmax(-d / tau) that every
implementation reproduces bit for bit without ever storing an N x K noise array.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def default_block_k(n: int, k: int, budget_bytes: int = 1 << 28) -> int:
    """Largest power-of-two codebook chunk whose N x chunk fp32 tile stays within `budget_bytes`."""
    block = 1 << max(7, (budget_bytes // (4 * max(n, 1))).bit_length() - 1)
    return int(min(block, max(k, 1)))


def hash_uniform(seed: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Uniform(0, 1) floats from a murmur3-style hash of (seed, row, col); uint32 arithmetic only.

    Kernels call this same function on their tile's global row/column indices, so the noise is
    identical across implementations and block sizes.
    """
    x = rows.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) + cols.astype(jnp.uint32) * jnp.uint32(0x85EBCA77)
    x = x ^ seed.astype(jnp.uint32)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    x = x ^ (x >> 16)
    # 24 high-quality bits -> (0, 1), never exactly 0 or 1. They fit an int32 exactly; converting through
    # int32 gives the same floats and avoids an unsigned -> float cast that not all Pallas backends lower.
    return ((x >> 8).astype(jnp.int32).astype(jnp.float32) + 0.5) * jnp.float32(1.0 / (1 << 24))


def gumbel_from_uniform(u: jax.Array) -> jax.Array:
    return -jnp.log(-jnp.log(u))


def nearest_code_reference(
    z_NxC: jax.Array,
    codebook_KxC: jax.Array,
    *,
    block_k: int | None = None,
    gumbel_seed: jax.Array | int | None = None,
    temperature: float = 1.0,
    row_offset: jax.Array | int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Returns (indices [N] int32, squared distance to the chosen code [N] float32).

    `row_offset` is the global index of row 0 for the Gumbel noise (a shard of a larger batch draws the
    noise of its own rows, so a sharded search equals the unsharded one).
    """
    n, c = z_NxC.shape
    k = codebook_KxC.shape[0]
    block_k = default_block_k(n, k) if block_k is None else int(min(block_k, k))
    num_blocks = -(-k // block_k)
    k_pad = num_blocks * block_k

    z = z_NxC.astype(jnp.float32)
    e = codebook_KxC.astype(jnp.float32)
    z_sq_N = jnp.sum(z * z, axis=-1)
    e_sq_K = jnp.sum(e * e, axis=-1)
    # Padded codes get +inf norms so they never win.
    e = jnp.pad(e, ((0, k_pad - k), (0, 0)))
    e_sq_K = jnp.pad(e_sq_K, (0, k_pad - k), constant_values=jnp.inf)
    e_blocks = e.reshape(num_blocks, block_k, c)
    e_sq_blocks = e_sq_K.reshape(num_blocks, block_k)
    rows = (jnp.arange(n, dtype=jnp.int32) + jnp.asarray(row_offset, jnp.int32))[:, None]
    seed = None if gumbel_seed is None else jnp.asarray(gumbel_seed, jnp.uint32)
    inv_tau = jnp.float32(1.0 / temperature)

    def body(carry, inputs):
        best_score, best_idx, best_dist = carry
        j, e_blk, e_sq_blk = inputs
        dot = jnp.dot(z, e_blk.T, precision=_HIGHEST)
        dist = (z_sq_N[:, None] + e_sq_blk[None, :]) - 2.0 * dot
        if seed is None:
            score = dist
        else:
            cols = j * block_k + jnp.arange(block_k, dtype=jnp.int32)[None, :]
            score = dist * inv_tau - gumbel_from_uniform(hash_uniform(seed, rows, cols))
            score = jnp.where(jnp.isinf(e_sq_blk)[None, :], jnp.inf, score)
        local = jnp.argmin(score, axis=-1).astype(jnp.int32)
        local_score = jnp.take_along_axis(score, local[:, None], axis=-1)[:, 0]
        local_dist = jnp.take_along_axis(dist, local[:, None], axis=-1)[:, 0]
        better = local_score < best_score
        return (
            jnp.where(better, local_score, best_score),
            jnp.where(better, j * block_k + local, best_idx),
            jnp.where(better, local_dist, best_dist),
        ), None

    init = (
        jnp.full((n,), jnp.inf, jnp.float32),
        jnp.zeros((n,), jnp.int32),
        jnp.full((n,), jnp.inf, jnp.float32),
    )
    xs = (jnp.arange(num_blocks, dtype=jnp.int32), e_blocks, e_sq_blocks)
    (_, idx, dist), _ = jax.lax.scan(body, init, xs)
    return idx, jnp.maximum(dist, 0.0)
