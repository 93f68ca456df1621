"""The convolution with the CPU-fast backward pass: values and gradients equal XLA's own convolution."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from rq_jax.models import conv as conv_module
from rq_jax.models.conv import conv_general_dilated, use_winograd

DN = ("NHWC", "HWIO", "NHWC")
CASES = [  # (H, Cin, Cout, kernel, stride, padding)
    (9, 4, 6, 3, 1, ((1, 1), (1, 1))),
    (8, 4, 6, 3, 1, "SAME"),
    (9, 3, 5, 3, 2, "VALID"),
    (8, 4, 4, 4, 2, ((1, 1), (1, 1))),  # the discriminator's 4x4 stride-2 conv
    (7, 4, 8, 1, 1, "VALID"),
    (6, 2, 3, 3, 1, ((0, 2), (2, 0))),
]


def _loss(conv, stride, padding):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (stride, stride), padding, dimension_numbers=DN)))


@pytest.mark.parametrize("case,dtype", list(itertools.product(CASES, [jnp.float32, jnp.bfloat16])))
def test_value_and_gradients_equal_xla(case, dtype):
    h, cin, cout, k, stride, padding = case
    x = jax.random.normal(jax.random.key(0), (2, h, h, cin)).astype(dtype)
    w = (jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.3).astype(dtype)
    want = jax.jit(jax.value_and_grad(_loss(lax.conv_general_dilated, stride, padding), (0, 1)))(x, w)
    got = jax.jit(jax.value_and_grad(_loss(conv_general_dilated, stride, padding), (0, 1)))(x, w)
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.abs(a).max())


def test_other_layouts_and_groups_fall_through_to_xla():
    x = jax.random.normal(jax.random.key(0), (2, 4, 8, 8))
    w = jax.random.normal(jax.random.key(1), (6, 2, 3, 3))
    kw = dict(dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=2)
    np.testing.assert_array_equal(np.asarray(conv_general_dilated(x, w, (1, 1), "SAME", **kw)),
                                  np.asarray(lax.conv_general_dilated(x, w, (1, 1), "SAME", **kw)))


def _second_order(conv, h):
    """d/dx of |dL/dw|^2: a gradient through a kernel gradient."""
    x = jax.random.normal(jax.random.key(0), (1, h, h, 2))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 2))

    def f(x):
        dw = jax.grad(_loss(conv, 1, "SAME"), 1)(x, w)
        return jnp.sum(dw ** 2)
    return np.asarray(jax.grad(f)(x))


def test_second_order_gradient():
    """The trainer differentiates through a kernel gradient (the GAN loss's adaptive weight)."""
    np.testing.assert_allclose(_second_order(conv_general_dilated, 5), _second_order(lax.conv_general_dilated, 5),
                               rtol=1e-4, atol=1e-5)


def test_gpu_programs_keep_xlas_backward():
    """Lowered for CUDA, the kernel gradient is XLA's convolution, not the per-tap matrix products."""
    x, w = jnp.zeros((2, 16, 16, 8)), jnp.zeros((3, 3, 8, 8))
    grad = jax.jit(jax.grad(_loss(conv_general_dilated, 1, "SAME"), (0, 1)))
    cuda = grad.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    cpu = grad.lower(x, w).as_text()
    assert cuda.count("stablehlo.dot_general") == 0 and cuda.count("stablehlo.convolution") == 3
    assert cpu.count("stablehlo.dot_general") == 9


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Winograd for every eligible shape, however small (the real thresholds need ~64x64x128 inputs)."""
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_TILES", 1)
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_CHANNELS", 1)


@pytest.mark.parametrize("h,cin,cout", [(8, 4, 6), (12, 8, 8)])
def test_winograd_path_values_and_gradients_equal_xla(winograd_everywhere, h, cin, cout):
    """Forward and both gradients by Winograd F(4x4) on CPU: the same numbers as XLA."""
    x = jax.random.normal(jax.random.key(0), (2, h, h, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.3
    loss = _loss(conv_general_dilated, 1, "SAME")
    assert "optimization_barrier" in jax.jit(jax.grad(loss, (0, 1))).lower(x, w).as_text()  # Winograd is used
    want = jax.jit(jax.value_and_grad(_loss(lax.conv_general_dilated, 1, "SAME"), (0, 1)))(x, w)
    got = jax.jit(jax.value_and_grad(loss, (0, 1)))(x, w)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=3e-5, atol=3e-5 * np.abs(a).max())


def test_winograd_is_for_large_float32_3x3_convs_on_cpu_only(monkeypatch):
    big, k = (2, 64, 64, 128), (3, 3, 128, 128)
    one = ((1, 1), (1, 1))
    assert use_winograd(big, k, (jnp.float32, jnp.float32), (1, 1), one)
    assert not use_winograd(big, k, (jnp.bfloat16, jnp.float32), (1, 1), one)
    assert not use_winograd(big, k, (jnp.float32, jnp.float32), (2, 2), one)
    assert not use_winograd(big, k, (jnp.float32, jnp.float32), (1, 1), ((0, 2), (0, 2)))
    assert not use_winograd((2, 32, 32, 128), k, (jnp.float32,), (1, 1), one)  # 128 tiles: too few
    assert not use_winograd((2, 64, 64, 64), (3, 3, 64, 64), (jnp.float32,), (1, 1), one)  # 64 channels
    x, w = jnp.zeros(big), jnp.zeros(k)
    fwd = jax.jit(lambda x, w: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN))
    assert "optimization_barrier" in fwd.lower(x, w).as_text()
    assert "optimization_barrier" not in fwd.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    monkeypatch.setenv("RQ_JAX_WINOGRAD", "0")
    assert not use_winograd(big, k, (jnp.float32, jnp.float32), (1, 1), one)


def test_second_order_gradient_through_winograd(winograd_everywhere):
    want = _second_order(lax.conv_general_dilated, 8)  # F(4x4) rounding: ~1e-5 of the largest value
    np.testing.assert_allclose(_second_order(conv_general_dilated, 8), want, rtol=1e-4,
                               atol=3e-5 * np.abs(want).max())


@pytest.mark.parametrize("winograd", [False, True])
def test_gradients_inside_shard_map_equal_xla(monkeypatch, winograd):
    """Per-device images and a replicated kernel (data parallelism written with jax.shard_map): the kernel's
    gradient is summed over the devices as JAX's own transpose sums it (the CPU branch's gradient varied
    over the mesh axis, and `platform_dependent` refused the two branches' types)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    if winograd:
        monkeypatch.setattr(conv_module, "WINOGRAD_MIN_TILES", 1)
        monkeypatch.setattr(conv_module, "WINOGRAD_MIN_CHANNELS", 1)
    mesh = jax.make_mesh((4,), ("i",), devices=jax.devices()[:4])
    x = jax.device_put(jax.random.normal(jax.random.key(0), (8, 8, 8, 4)), NamedSharding(mesh, P("i")))
    w = jax.device_put(jax.random.normal(jax.random.key(1), (3, 3, 4, 6)) * 0.3, NamedSharding(mesh, P()))

    def grads(conv):
        loss = lambda x, w: lax.psum(_loss(conv, 1, "SAME")(x, w), "i")  # noqa: E731
        fn = jax.shard_map(jax.grad(loss, (0, 1)), mesh=mesh, in_specs=(P("i"), P()), out_specs=(P("i"), P()))
        return jax.jit(fn)(x, w)

    want, got = grads(lax.conv_general_dilated), grads(conv_general_dilated)
    for a, b in zip(want, got, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=3e-5, atol=3e-5 * np.abs(a).max())
