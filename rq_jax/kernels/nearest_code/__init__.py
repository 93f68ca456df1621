"""Nearest-code search: `nearest_code(z, codebook, impl=...)`, the hot spot of residual quantization.

Three implementations return the same indices (ties to the lowest index):
  * "xla":        `reference.py`, plain jnp, chunked over the codebook (runs everywhere);
  * "pallas_gpu": `pallas_gpu.py`, a fused Triton kernel, running (min, argmin) over codebook tiles;
  * "pallas_tpu": `pallas_tpu.py`, the same on TPU through Mosaic.
"auto" picks the Pallas kernel of the default backend (GPU/TPU) and the reference elsewhere;
"pallas" picks the Pallas kernel of the default backend. None of them builds the N x K matrix
(the reference holds one N x block_k tile at a time).

Under a mesh (`jax.set_mesh`) whose data-parallel axes ("data", "fsdp") split the rows, the search runs
per shard (`jax.shard_map` over those axes, the codebook replicated): XLA cannot partition a
`pallas_call`, and without this every device would gather the whole batch and repeat the search.
Each shard draws the Gumbel noise of its global rows, so the result equals the unsharded search.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rq_jax.kernels.nearest_code.reference import (
    default_block_k,
    gumbel_from_uniform,
    hash_uniform,
    nearest_code_reference,
)

IMPLS = ("auto", "xla", "pallas", "pallas_gpu", "pallas_tpu")
ROW_AXES = ("data", "fsdp")  # the mesh axes that split a batch (rq_jax.sharding.BATCH_AXES)

__all__ = [
    "IMPLS",
    "default_block_k",
    "gumbel_from_uniform",
    "hash_uniform",
    "nearest_code",
    "nearest_code_reference",
    "resolve_impl",
    "row_shard_axes",
]


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """Maps "auto"/"pallas" to a concrete implementation for `backend` (default: the current mesh's platform,
    else JAX's default backend)."""
    if impl not in IMPLS:
        raise ValueError(f"Unknown nearest_code impl {impl!r}; choose one of {', '.join(IMPLS)}.")
    backend = backend or mesh_platform() or jax.default_backend()
    if impl in ("auto", "pallas"):
        if backend == "gpu" or backend == "cuda":
            return "pallas_gpu"
        if backend == "tpu":
            return "pallas_tpu"
        if impl == "pallas":
            raise ValueError(
                f"impl='pallas' needs a GPU or TPU backend, but JAX's backend is {backend!r}; "
                "use impl='xla' (or 'auto'), or pass interpret=True to run a Pallas kernel on the CPU."
            )
        return "xla"
    return impl


def mesh_platform() -> str | None:
    """The platform of the current mesh's devices (`jax.set_mesh`), e.g. "tpu" while compiling for a TPU
    topology on a CPU machine (`rq_jax.compile_check`); None outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return getattr(device, "platform", None)


def nearest_code(
    z: jax.Array,
    codebook_KxC: jax.Array,
    *,
    impl: str = "auto",
    return_distance: bool = False,
    gumbel_seed: jax.Array | int | None = None,
    temperature: float = 1.0,
    block_k: int | None = None,
    block_config: Any = None,
    interpret: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Index of the nearest codebook row for every vector of `z` [..., C].

    Args:
      z: features [..., C] (any float dtype; distances are computed in float32).
      codebook_KxC: the codebook [K, C].
      impl: "auto" | "xla" | "pallas" | "pallas_gpu" | "pallas_tpu".
      return_distance: also return the squared distance to the chosen code.
      gumbel_seed: if given, sample k ~ softmax(-||z - e_k||^2 / temperature) by Gumbel-max with
        hash-based noise (identical across implementations) instead of taking the argmin.
      temperature: the softmax temperature of the Gumbel-max variant (> 0).
      block_k: codebook chunk of the reference (default: bounded N x block_k tile).
      block_config: the Pallas kernel's block sizes (`GpuBlockConfig` / `TpuBlockConfig`).
      interpret: run a Pallas kernel in interpret mode (CPU testing).

    Returns:
      indices [...] int32, and the squared distances [...] float32 when `return_distance`.
    """
    if z.ndim < 1 or codebook_KxC.ndim != 2:
        raise ValueError(
            f"nearest_code expects features [..., C] and a codebook [K, C]; got shapes {z.shape} and "
            f"{codebook_KxC.shape}."
        )
    if z.shape[-1] != codebook_KxC.shape[-1]:
        raise ValueError(
            f"Feature dimension {z.shape[-1]} does not match the codebook's embedding dimension "
            f"{codebook_KxC.shape[-1]} (features {z.shape}, codebook {codebook_KxC.shape})."
        )
    if gumbel_seed is not None and not temperature > 0:
        raise ValueError(f"The Gumbel-max temperature must be > 0, got {temperature}.")
    impl = resolve_impl(impl) if not (interpret and impl == "pallas") else "pallas_gpu"

    lead = z.shape[:-1]
    z_NxC = z.reshape(-1, z.shape[-1])
    search = functools.partial(_search, impl=impl, block_k=block_k, block_config=block_config, interpret=interpret,
                               temperature=temperature)
    seed = None if gumbel_seed is None else jnp.asarray(gumbel_seed, jnp.uint32)
    axes = row_shard_axes(z_NxC.shape[0])
    manual = _kernel_axes() if impl != "xla" else ()
    if axes or manual:
        idx_N, dist_N = _search_per_shard(search, z_NxC, codebook_KxC, seed, axes, manual)
    else:
        idx_N, dist_N = search(z_NxC, codebook_KxC, seed, 0)
    idx = idx_N.reshape(lead).astype(jnp.int32)
    if return_distance:
        return idx, dist_N.reshape(lead)
    return idx


def row_shard_axes(n: int) -> tuple[str, ...]:
    """The axes of the current mesh (`jax.set_mesh`) over which `n` rows are searched per shard.

    The data-parallel axes (ROW_AXES) of size > 1 that are not already manual (inside a shard_map) and
    whose sizes divide `n`; () outside a mesh, or when nothing divides: then the search is global.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    manual = set(mesh.manual_axes)
    axes: list[str] = []
    for a in ROW_AXES:
        size = dict(mesh.shape).get(a, 1)
        if size > 1 and a not in manual and n % (size * math.prod(mesh.shape[b] for b in axes)) == 0:
            axes.append(a)
    return tuple(axes)


def _kernel_axes() -> tuple[str, ...]:
    """Every axis of the current mesh that is not manual yet, when it has more than one device: a Pallas kernel
    must run inside a shard_map over all of them (XLA cannot partition a Mosaic or Triton kernel, not even
    over an axis of size 1). () outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return ()
    return tuple(a for a in mesh.axis_names if a not in set(mesh.manual_axes))


def _search_per_shard(search, z_NxC, codebook_KxC, seed, axes, manual=()):
    """`search` on each shard's rows (z split over `axes`, codebook replicated), noise by global row. The
    shard_map is manual over `axes` and `manual` (a kernel's: all free axes; the rows are split over `axes`
    only, the other axes compute the same rows)."""

    def local(z_nxC, e_KxC, *seed_arg):
        offset = jax.lax.axis_index(axes) * z_nxC.shape[0] if axes else 0
        return search(z_nxC, e_KxC, seed_arg[0] if seed_arg else None, offset)

    args = (z_NxC, codebook_KxC) + (() if seed is None else (seed,))
    specs = (P(axes), P()) + (() if seed is None else (P(),))
    return jax.shard_map(local, in_specs=specs, out_specs=(P(axes), P(axes)), axis_names=set(axes) | set(manual),
                         check_vma=False)(*args)


def _search(z_NxC, codebook_KxC, seed, row_offset, *, impl, block_k, block_config, interpret, temperature):
    """(indices [N], distances [N]) of one implementation; Gumbel noise of rows row_offset + [0, N)."""
    kwargs = dict(gumbel_seed=seed, temperature=temperature, row_offset=row_offset)
    if impl == "xla":
        return nearest_code_reference(z_NxC, codebook_KxC, block_k=block_k, **kwargs)
    if impl == "pallas_gpu":
        from rq_jax.kernels.nearest_code import pallas_gpu

        return pallas_gpu.nearest_code_gpu(z_NxC, codebook_KxC, config=block_config, interpret=interpret, **kwargs)
    from rq_jax.kernels.nearest_code import pallas_tpu

    return pallas_tpu.nearest_code_tpu(z_NxC, codebook_KxC, config=block_config, interpret=interpret, **kwargs)
