"""The jaxpr cost counter: loops times their trip counts (the compiler counts a loop body once)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.sharding import PartitionSpec as P

from rq_jax.aot.cost import jaxpr_cost

X = jnp.zeros((64, 128), jnp.float32)
W = jnp.zeros((128, 128), jnp.float32)
ONE = 2 * 64 * 128 * 128


def test_fori_loop_and_scan_count_every_trip():
    def loop(x, w):
        return jax.lax.fori_loop(0, 10, lambda i, x: jnp.tanh(x @ w), x)

    def scan(x, w):
        return jax.lax.scan(lambda x, _: (x @ w, None), x, None, length=7)[0]

    assert jaxpr_cost(jax.make_jaxpr(loop)(X, W)).flops == 10 * ONE
    assert jaxpr_cost(jax.make_jaxpr(scan)(X, W)).flops == 7 * ONE
    # What this replaces: XLA's cost analysis sees the body once.
    assert jax.jit(loop).lower(X, W).compile().cost_analysis()["flops"] < 2 * ONE


def test_dynamic_loop_is_flagged_as_a_lower_bound():
    def loop(x, w, n):
        return jax.lax.fori_loop(0, n, lambda i, x: x @ w, x)

    c = jaxpr_cost(jax.make_jaxpr(loop)(X, W, 3))
    assert c.flops == ONE and c.unknown_loops == 1


def test_matmul_bytes_are_operands_and_result():
    c = jaxpr_cost(jax.make_jaxpr(lambda x, w: x @ w)(X, W))
    assert c.bytes == 4 * (64 * 128 + 128 * 128 + 64 * 128)


def _convnet(p, x):
    dn = ("NHWC", "HWIO", "NHWC")
    y = jax.nn.relu(jax.lax.conv_general_dilated(x, p[0], (1, 1), "SAME", dimension_numbers=dn))
    y = jax.lax.conv_general_dilated(y, p[1], (2, 2), "SAME", dimension_numbers=dn)
    y = jax.lax.conv_general_dilated(y, p[2], (1, 1), "SAME", dimension_numbers=dn, feature_group_count=4)
    return jnp.sum(y ** 2)


@pytest.mark.parametrize("grad", [False, True])
def test_convolutions_match_xla_without_loops(grad):
    """Strided, grouped and the gradients' dilated / batch-grouped convolutions: within 6% of XLA's count
    (XLA leaves out the taps that fall on the zero padding)."""
    p = [jnp.zeros((3, 3, 16, 32)), jnp.zeros((3, 3, 32, 64)), jnp.zeros((3, 3, 16, 64))]
    x = jnp.zeros((4, 32, 32, 16))
    fn = jax.grad(_convnet) if grad else _convnet
    ours = jaxpr_cost(jax.make_jaxpr(fn)(p, x)).flops
    xla = jax.jit(fn).lower(p, x).compile().cost_analysis()["flops"]
    assert xla <= ours <= 1.06 * xla


def test_shard_map_body_counts_once_per_shard():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    f = jax.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"))
    assert jaxpr_cost(jax.make_jaxpr(f)(X, W)).flops == ONE


def test_pallas_kernel_counts_every_grid_step():
    def kernel(x_ref, w_ref, o_ref):
        o_ref[...] = x_ref[...] @ w_ref[...]

    call = functools.partial(pl.pallas_call, kernel, out_shape=jax.ShapeDtypeStruct((64, 128), jnp.float32),
                             grid=(4,), in_specs=[pl.BlockSpec((16, 128), lambda i: (i, 0)),
                                                  pl.BlockSpec((128, 128), lambda i: (0, 0))],
                             out_specs=pl.BlockSpec((16, 128), lambda i: (i, 0)), interpret=True)
    c = jaxpr_cost(jax.make_jaxpr(lambda x, w: call()(x, w))(X, W))
    assert c.flops == ONE
    assert c.bytes == 4 * (64 * 128 + 128 * 128 + 64 * 128)  # the call's inputs and output, not its blocks
    np.testing.assert_allclose(call()(X + 1, W + 1), (X + 1) @ (W + 1))
