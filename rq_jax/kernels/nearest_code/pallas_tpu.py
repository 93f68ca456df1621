"""Fused nearest-code search on TPU: a Pallas kernel lowered through Mosaic.

A 2-D grid: axis 0 walks blocks of `block_n` rows of z ("parallel": split across TensorCores), axis
1 walks codebook tiles of `block_k` rows ("arbitrary": sequential, so state may be carried). The z
block and the output blocks keep the same block index along axis 1, so they stay resident in VMEM
while codebook tiles stream past; the running best score lives in a VMEM scratch and the running
(argmin, distance) directly in the resident output blocks. Only one block_n x block_k distance tile
exists at a time; the N x K matrix is never materialised.

TPU tiling: block_n is a multiple of 16 (sublanes, bf16 packing included), block_k a multiple of 128
(lanes), and the feature dimension is zero-padded to a multiple of 128 (lane-aligned loads, MXU-
aligned contraction). Padded codes get an +inf norm so they never win; padded rows are sliced off.
The per-tile argmin is taken as "min, then the smallest column index attaining it" with float32
reductions only, which fixes the tie rule (lowest index) independently of Mosaic's argmin.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from rq_jax.kernels.nearest_code.reference import gumbel_from_uniform, hash_uniform


@dataclasses.dataclass(frozen=True)
class TpuBlockConfig:
    """Tile sizes (clamped to the padded problem size).

    block_n: rows of z per grid step (multiple of 16).
    block_k: codebook rows per grid step (multiple of 128, the lane width; at most 2**24).
    vmem_limit_bytes: optional override of Mosaic's scoped-VMEM limit for large tiles.
    """

    block_n: int = 256
    block_k: int = 512
    vmem_limit_bytes: int | None = None

    def __post_init__(self):
        if self.block_n < 16 or self.block_n % 16:
            raise ValueError(f"TpuBlockConfig.block_n must be a positive multiple of 16, got {self.block_n}.")
        if self.block_k < 128 or self.block_k % 128 or self.block_k > 1 << 24:
            raise ValueError(
                f"TpuBlockConfig.block_k must be a positive multiple of 128, got {self.block_k}."
            )


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _dot_dtype(a: jnp.dtype, b: jnp.dtype) -> jnp.dtype:
    """bf16 operands only when both inputs are bf16 (exact products, fp32 accumulation); else fp32."""
    a, b = jnp.dtype(a), jnp.dtype(b)
    if a == b == jnp.dtype(jnp.bfloat16):
        return a
    return jnp.dtype(jnp.float32)


def _kernel(
    *refs,
    block_n: int,
    block_k: int,
    gumbel: bool,
    inv_tau: float,
    precision: lax.Precision | None,
):
    """Grid step (i, j): rows block i against codebook tile j, folded into the running best."""
    if gumbel:
        seed_ref, z_ref, z_sq_ref, e_ref, e_sq_ref, idx_ref, dist_ref, best_ref = refs
    else:
        z_ref, z_sq_ref, e_ref, e_sq_ref, idx_ref, dist_ref, best_ref = refs
    i, j = pl.program_id(0), pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        best_ref[...] = jnp.full(best_ref.shape, jnp.inf, jnp.float32)
        idx_ref[...] = jnp.zeros(idx_ref.shape, jnp.int32)
        dist_ref[...] = jnp.full(dist_ref.shape, jnp.inf, jnp.float32)

    dot_BxT = lax.dot_general(
        z_ref[...],
        e_ref[...],
        (((1,), (1,)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
    )
    e_sq_1xT = e_sq_ref[...]
    dist_BxT = (z_sq_ref[...] + e_sq_1xT) - 2.0 * dot_BxT
    local_1xT = lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
    if gumbel:
        rows_Bx1 = seed_ref[1] + i * block_n + lax.broadcasted_iota(jnp.int32, (block_n, 1), 0)
        cols_1xT = j * block_k + local_1xT
        u_BxT = hash_uniform(seed_ref[0], rows_Bx1, cols_1xT)
        score_BxT = dist_BxT * jnp.float32(inv_tau) - gumbel_from_uniform(u_BxT)
        score_BxT = jnp.where(jnp.isinf(e_sq_1xT), jnp.inf, score_BxT)
    else:
        score_BxT = dist_BxT
    # Tile argmin with the lowest index on ties, from float32 min-reductions (indices < 2**24 are exact).
    local_f_1xT = local_1xT.astype(jnp.float32)
    min_Bx1 = jnp.min(score_BxT, axis=1, keepdims=True)
    arg_f_Bx1 = jnp.min(jnp.where(score_BxT == min_Bx1, local_f_1xT, jnp.inf), axis=1, keepdims=True)
    if gumbel:
        hit_BxT = local_f_1xT == arg_f_Bx1
        local_dist_Bx1 = jnp.min(jnp.where(hit_BxT, dist_BxT, jnp.inf), axis=1, keepdims=True)
    else:
        local_dist_Bx1 = min_Bx1
    better_Bx1 = min_Bx1 < best_ref[...]  # strict: an earlier tile wins ties
    best_ref[...] = jnp.where(better_Bx1, min_Bx1, best_ref[...])
    idx_ref[...] = jnp.where(better_Bx1, j * block_k + arg_f_Bx1.astype(jnp.int32), idx_ref[...])
    dist_ref[...] = jnp.where(better_Bx1, local_dist_Bx1, dist_ref[...])

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        dist_ref[...] = jnp.maximum(dist_ref[...], 0.0)


@functools.partial(jax.jit, static_argnames=("config", "interpret", "temperature"))
def _nearest_code_tpu(
    z_NxC: jax.Array,
    codebook_KxC: jax.Array,
    gumbel_seed: jax.Array | None,
    row_offset: jax.Array,
    *,
    config: TpuBlockConfig,
    interpret: bool,
    temperature: float,
) -> tuple[jax.Array, jax.Array]:
    n, c = z_NxC.shape
    k = codebook_KxC.shape[0]
    block_n = min(config.block_n, _round_up(n, 16))
    block_k = min(config.block_k, _round_up(k, 128))
    n_pad, k_pad, c_pad = _round_up(n, block_n), _round_up(k, block_k), _round_up(c, 128)
    dtype = _dot_dtype(z_NxC.dtype, codebook_KxC.dtype)
    precision = lax.Precision.HIGHEST if dtype == jnp.float32 else None

    # Norms with the reference's own expression (same rounding), before any padding.
    z32 = z_NxC.astype(jnp.float32)
    e32 = codebook_KxC.astype(jnp.float32)
    z_sq_Nx1 = jnp.pad(jnp.sum(z32 * z32, axis=-1), (0, n_pad - n))[:, None]
    e_sq_1xK = jnp.pad(jnp.sum(e32 * e32, axis=-1), (0, k_pad - k), constant_values=jnp.inf)[None, :]
    z_pad = jnp.pad(z_NxC.astype(dtype), ((0, n_pad - n), (0, c_pad - c)))
    e_pad = jnp.pad(codebook_KxC.astype(dtype), ((0, k_pad - k), (0, c_pad - c)))

    gumbel = gumbel_seed is not None
    kernel = functools.partial(
        _kernel,
        block_n=block_n,
        block_k=block_k,
        gumbel=gumbel,
        inv_tau=float(1.0 / temperature),
        precision=precision,
    )
    in_specs = [
        pl.BlockSpec((block_n, c_pad), lambda i, j: (i, 0)),  # resident along j
        pl.BlockSpec((block_n, 1), lambda i, j: (i, 0)),
        pl.BlockSpec((block_k, c_pad), lambda i, j: (j, 0)),  # streamed
        pl.BlockSpec((1, block_k), lambda i, j: (0, j)),
    ]
    args = [z_pad, z_sq_Nx1, e_pad, e_sq_1xK]
    if gumbel:
        # Mosaic has no unsigned scalars in SMEM: carry the seed's bits as int32, then the global row 0.
        in_specs.insert(0, pl.BlockSpec(memory_space=pltpu.SMEM))
        seed_bits = lax.bitcast_convert_type(jnp.reshape(gumbel_seed, ()), jnp.int32)
        args.insert(0, jnp.stack([seed_bits, jnp.asarray(row_offset, jnp.int32)]))
    out_spec = pl.BlockSpec((block_n, 1), lambda i, j: (i, 0))  # resident along j: the running state
    idx_Nx1, dist_Nx1 = pl.pallas_call(
        kernel,
        grid=(n_pad // block_n, k_pad // block_k),
        in_specs=in_specs,
        out_specs=[out_spec, out_spec],
        out_shape=[
            jax.ShapeDtypeStruct((n_pad, 1), jnp.int32),
            jax.ShapeDtypeStruct((n_pad, 1), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((block_n, 1), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary"),
            vmem_limit_bytes=config.vmem_limit_bytes,
        ),
        interpret=interpret,
        name="nearest_code_tpu",
    )(*args)
    return idx_Nx1[:n, 0], dist_Nx1[:n, 0]


def nearest_code_tpu(
    z_NxC: jax.Array,
    codebook_KxC: jax.Array,
    *,
    config: TpuBlockConfig | None = None,
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
    return _nearest_code_tpu(
        z_NxC,
        codebook_KxC,
        seed,
        jnp.asarray(row_offset, jnp.int32),
        config=TpuBlockConfig() if config is None else config,
        interpret=interpret,
        temperature=float(temperature),
    )
