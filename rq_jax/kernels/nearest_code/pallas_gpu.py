"""Fused nearest-code search on GPU: a Pallas kernel lowered through Triton.

Each program of the 1-D grid owns `block_n` rows of z, keeps them on chip, and walks the codebook in
tiles of `block_k` rows with `lax.fori_loop`: one tensor-core dot per tile gives the fp32 distance
tile ||z||^2 + ||e||^2 - 2 z.e, reduced at once into a running (score, argmin, distance). Only
O(block_n * block_k) values are alive at a time; the N x K matrix is never written.

The wrapper pads everything to the block grid: padded codes get an +inf norm so they never win,
padded rows are sliced off, and the feature dimension is zero-padded to a power of two >= 16
(Triton wants power-of-two tensor shapes and dot dimensions of at least 16). Norms are computed
outside the kernel with the reference's formula, so the kernel reproduces the reference's distances
up to the summation order of the dot.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from rq_jax.kernels.nearest_code.reference import gumbel_from_uniform, hash_uniform


@dataclasses.dataclass(frozen=True)
class GpuBlockConfig:
    """Tile sizes and Triton launch parameters (powers of two; clamped to the problem size).

    block_n: rows of z per program (the dot's M, >= 16).
    block_k: codebook rows per loop step (the dot's N, >= 16).
    num_warps / num_stages: Triton's warps per program and software-pipelining depth of the loop.
    """

    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_n", "block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"GpuBlockConfig.{name} must be a power of two >= 16, got {v}.")


def default_gpu_config(c: int, dtype: jnp.dtype) -> GpuBlockConfig:
    """The blocks used when `config` is None (untuned heuristics): a z block of at most 64 KiB and
    codebook tiles of at most 32 KiB, so the resident z block and `num_stages` pipelined codebook
    tiles fit in shared memory (H100: 227 KiB) whatever C is."""
    row_bytes = max(16, _next_pow2(c)) * jnp.dtype(dtype).itemsize

    def rows(budget: int, cap: int) -> int:
        return min(cap, max(16, 1 << (budget // row_bytes).bit_length() - 1))

    return GpuBlockConfig(
        block_n=rows(64 * 1024, 64), block_k=rows(32 * 1024, 128), num_warps=4, num_stages=2
    )


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _dot_dtype(a: jnp.dtype, b: jnp.dtype) -> jnp.dtype:
    """Operand dtype of the kernel's dot: bf16/f16 only when both inputs already are (their products
    are exact in the fp32 accumulator); anything else runs in float32 like the reference."""
    a, b = jnp.dtype(a), jnp.dtype(b)
    if a == b and a in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return a
    return jnp.dtype(jnp.float32)


def _kernel(
    *refs,
    block_n: int,
    block_k: int,
    num_k_blocks: int,
    gumbel: bool,
    inv_tau: float,
    precision: lax.Precision | None,
):
    """One program: rows [i * block_n, (i + 1) * block_n) against the whole (padded) codebook."""
    if gumbel:
        seed_ref, z_ref, z_sq_ref, e_ref, e_sq_ref, idx_ref, dist_ref = refs
        seed, row0 = seed_ref[0], seed_ref[1].astype(jnp.int32)  # (seed, global index of row 0)
    else:
        z_ref, z_sq_ref, e_ref, e_sq_ref, idx_ref, dist_ref = refs
        seed, row0 = None, 0
    row0 = row0 + pl.program_id(0) * block_n
    z_BxC = z_ref[...]
    z_sq_B = z_sq_ref[...]
    rows_Bx1 = (row0 + jnp.arange(block_n, dtype=jnp.int32))[:, None]

    def body(j, carry):
        best_score_B, best_idx_B, best_dist_B = carry
        col0 = j * block_k
        e_TxC = e_ref[pl.ds(col0, block_k), :]
        e_sq_T = e_sq_ref[pl.ds(col0, block_k)]
        dot_BxT = pltriton.dot(z_BxC, e_TxC, trans_b=True, precision=precision)
        dist_BxT = (z_sq_B[:, None] + e_sq_T[None, :]) - 2.0 * dot_BxT
        cols_T = col0 + jnp.arange(block_k, dtype=jnp.int32)
        if gumbel:
            u_BxT = hash_uniform(seed, rows_Bx1, cols_T[None, :])
            score_BxT = dist_BxT * jnp.float32(inv_tau) - gumbel_from_uniform(u_BxT)
            score_BxT = jnp.where(jnp.isinf(e_sq_T)[None, :], jnp.inf, score_BxT)
        else:
            score_BxT = dist_BxT
        local_B = jnp.argmin(score_BxT, axis=1).astype(jnp.int32)  # first minimum on ties
        local_score_B = jnp.min(score_BxT, axis=1)
        if gumbel:
            hit_BxT = cols_T[None, :] == (col0 + local_B)[:, None]
            local_dist_B = jnp.min(jnp.where(hit_BxT, dist_BxT, jnp.inf), axis=1)
        else:
            local_dist_B = local_score_B
        better_B = local_score_B < best_score_B  # strict: an earlier tile wins ties
        return (
            jnp.where(better_B, local_score_B, best_score_B),
            jnp.where(better_B, col0 + local_B, best_idx_B),
            jnp.where(better_B, local_dist_B, best_dist_B),
        )

    init = (
        jnp.full((block_n,), jnp.inf, jnp.float32),
        jnp.zeros((block_n,), jnp.int32),
        jnp.full((block_n,), jnp.inf, jnp.float32),
    )
    _, idx_B, dist_B = lax.fori_loop(0, num_k_blocks, body, init)
    idx_ref[...] = idx_B
    dist_ref[...] = jnp.maximum(dist_B, 0.0)


@functools.partial(jax.jit, static_argnames=("config", "interpret", "temperature"))
def _nearest_code_gpu(
    z_NxC: jax.Array,
    codebook_KxC: jax.Array,
    gumbel_seed: jax.Array | None,
    row_offset: jax.Array,
    *,
    config: GpuBlockConfig,
    interpret: bool,
    temperature: float,
) -> tuple[jax.Array, jax.Array]:
    n, c = z_NxC.shape
    k = codebook_KxC.shape[0]
    block_n = min(config.block_n, max(16, _next_pow2(n)))
    block_k = min(config.block_k, max(16, _next_pow2(k)))
    n_pad, k_pad, c_pad = _round_up(n, block_n), _round_up(k, block_k), max(16, _next_pow2(c))
    dtype = _dot_dtype(z_NxC.dtype, codebook_KxC.dtype)
    precision = lax.Precision.HIGHEST if dtype == jnp.float32 else None

    # Norms with the reference's own expression (same rounding), before any padding.
    z32 = z_NxC.astype(jnp.float32)
    e32 = codebook_KxC.astype(jnp.float32)
    z_sq_N = jnp.pad(jnp.sum(z32 * z32, axis=-1), (0, n_pad - n))
    e_sq_K = jnp.pad(jnp.sum(e32 * e32, axis=-1), (0, k_pad - k), constant_values=jnp.inf)
    z_pad = jnp.pad(z_NxC.astype(dtype), ((0, n_pad - n), (0, c_pad - c)))
    e_pad = jnp.pad(codebook_KxC.astype(dtype), ((0, k_pad - k), (0, c_pad - c)))

    gumbel = gumbel_seed is not None
    kernel = functools.partial(
        _kernel,
        block_n=block_n,
        block_k=block_k,
        num_k_blocks=k_pad // block_k,
        gumbel=gumbel,
        inv_tau=float(1.0 / temperature),
        precision=precision,
    )
    in_specs = [
        pl.BlockSpec((block_n, c_pad), lambda i: (i, 0)),
        pl.BlockSpec((block_n,), lambda i: (i,)),
        pl.BlockSpec((k_pad, c_pad), lambda i: (0, 0)),  # whole codebook: tiles are loaded in the loop
        pl.BlockSpec((k_pad,), lambda i: (0,)),
    ]
    args = [z_pad, z_sq_N, e_pad, e_sq_K]
    if gumbel:
        in_specs.insert(0, pl.BlockSpec((2,), lambda i: (0,)))
        args.insert(0, jnp.stack([jnp.reshape(gumbel_seed, ()), jnp.asarray(row_offset, jnp.uint32)]))
    idx_N, dist_N = pl.pallas_call(
        kernel,
        grid=(n_pad // block_n,),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((block_n,), lambda i: (i,)),
            pl.BlockSpec((block_n,), lambda i: (i,)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((n_pad,), jnp.int32),
            jax.ShapeDtypeStruct((n_pad,), jnp.float32),
        ],
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
        interpret=interpret,
        name="nearest_code_gpu",
    )(*args)
    return idx_N[:n], dist_N[:n]


def nearest_code_gpu(
    z_NxC: jax.Array,
    codebook_KxC: jax.Array,
    *,
    config: GpuBlockConfig | None = None,
    interpret: bool = False,
    gumbel_seed: jax.Array | int | None = None,
    temperature: float = 1.0,
    row_offset: jax.Array | int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Returns (indices [N] int32, squared distances [N] float32): the reference's indices (ties to the
    lowest index) and its distances up to the summation order of the dot.

    `temperature` must be a Python number (it is baked into the kernel); `gumbel_seed` and `row_offset`
    (the global index of row 0 for the Gumbel noise) may be traced.
    """
    if z_NxC.ndim != 2 or codebook_KxC.ndim != 2 or z_NxC.shape[1] != codebook_KxC.shape[1]:
        raise ValueError(
            f"Expected z [N, C] and codebook [K, C]; got {z_NxC.shape} and {codebook_KxC.shape}."
        )
    seed = None if gumbel_seed is None else jnp.asarray(gumbel_seed, jnp.uint32)
    if config is None:
        config = default_gpu_config(z_NxC.shape[1], _dot_dtype(z_NxC.dtype, codebook_KxC.dtype))
    return _nearest_code_gpu(
        z_NxC,
        codebook_KxC,
        seed,
        jnp.asarray(row_offset, jnp.int32),
        config=config,
        interpret=interpret,
        temperature=float(temperature),
    )
