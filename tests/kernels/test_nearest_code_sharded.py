"""Under a mesh, `nearest_code` searches each shard's rows (shard_map over the batch axes, codebook
replicated): the indices, distances and Gumbel samples equal the unsharded search, and the compiled
program never gathers z across devices for the search (8 fake CPU devices; the Pallas GPU kernel in
interpret mode takes the same path)."""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rq_jax.kernels.nearest_code import nearest_code, row_shard_axes

MESHES = {"data8": ((8,), ("data",)), "data2_fsdp4": ((2, 4), ("data", "fsdp")),
          "data4_tensor2": ((4, 2), ("data", "tensor"))}


def _mesh(name):
    shape, names = MESHES[name]
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def _inputs(b=16, k=96, c=8):
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(b, 4, 4, c)).astype(np.float32))
    e = jnp.asarray(rng.normal(size=(k, c)).astype(np.float32))
    e = e.at[5].set(e[3])  # a tie: both the sharded and the global search must pick 3
    return z, e


def _search(impl, gumbel):
    def f(z, e):
        kw = dict(gumbel_seed=jnp.uint32(11), temperature=0.7) if gumbel else {}
        return nearest_code(z, e, impl=impl, return_distance=True, interpret=impl != "xla", **kw)
    return f


@pytest.mark.parametrize("mesh_name, impl, gumbel",
                         list(itertools.product(MESHES, ["xla", "pallas_gpu"], [False, True])))
def test_sharded_search_equals_global(mesh_name, impl, gumbel):
    z, e = _inputs()
    ref_idx, ref_dist = jax.jit(_search(impl, gumbel))(z, e)
    mesh = _mesh(mesh_name)
    batch = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    zs = jax.device_put(z, NamedSharding(mesh, P(batch)))
    es = jax.device_put(e, NamedSharding(mesh, P()))
    with jax.set_mesh(mesh):
        assert row_shard_axes(z.size // z.shape[-1]) == batch
        idx, dist = jax.jit(_search(impl, gumbel))(zs, es)
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
    np.testing.assert_allclose(np.asarray(dist), np.asarray(ref_dist), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mesh_name", ["data8", "data2_fsdp4"])
def test_no_gather_of_z_for_the_search(mesh_name):
    """The Pallas kernel (interpret mode: plain XLA ops XLA could partition, but the dispatcher must not rely
    on that) runs on each device's rows: no all-gather of the 512 rows (without the shard_map the optimized
    program gathers f32[512,16] and f32[512] onto every device)."""
    z, e = _inputs(b=32, k=256, c=16)
    mesh = _mesh(mesh_name)
    batch = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    with jax.set_mesh(mesh):
        compiled = jax.jit(_search("pallas_gpu", True), in_shardings=(NamedSharding(mesh, P(batch)), None)).lower(
            jax.ShapeDtypeStruct(z.shape, z.dtype), jax.ShapeDtypeStruct(e.shape, e.dtype)).compile()
    n = z.size // z.shape[-1]
    gathers = re.findall(r"= \S+\[[\d,]*\][^\n]*all-gather\(", compiled.as_text())
    assert not [g for g in gathers if re.search(rf"\[{n}[,\]]|\[{z.shape[0]},", g)], gathers


def test_gpu_lowering_runs_the_kernel_on_local_rows():
    """Lowered for CUDA (no GPU needed): the Triton call sits inside the manual (per-shard) computation and
    its grid covers one device's 64 rows, not all 512."""
    z, e = _inputs(b=32, k=256, c=16)
    mesh = _mesh("data8")

    def search(z, e):
        return nearest_code(z, e, impl="pallas_gpu", gumbel_seed=jnp.uint32(1))

    with jax.set_mesh(mesh):
        text = jax.jit(search, in_shardings=(NamedSharding(mesh, P("data")), None)).trace(
            jax.ShapeDtypeStruct(z.shape, z.dtype), jax.ShapeDtypeStruct(e.shape, e.dtype)).lower(
            lowering_platforms=("cuda",)).as_text()
    manual = text.index("sdy.manual_computation")
    triton = text.index("xla.gpu.triton")
    assert manual < triton
    grid = int(re.search(r"grid_x = (\d+)", text[triton:]).group(1))
    assert grid == 1  # 64 local rows in one block of the default config (8 blocks for the global 512)


def test_global_search_outside_a_mesh_or_when_rows_do_not_divide():
    assert row_shard_axes(12) == ()
    with jax.set_mesh(_mesh("data8")):
        assert row_shard_axes(12) == ()  # 8 does not divide 12: one global search
        assert row_shard_axes(16) == ("data",)
