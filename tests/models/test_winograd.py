"""Winograd F(2x2, 3x3) and F(4x4, 3x3): the same convolution as XLA's, up to float32 rounding."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from rq_jax.models import winograd

SHAPES = [(1, 8, 8, 3, 5), (2, 12, 16, 8, 4), (3, 4, 20, 6, 6)]  # (B, H, W, Cin, Cout), H != W included
# Largest |difference| / largest |output| seen against the direct conv: F(2x2) rounds like it, F(4x4)'s
# constants (1/24, 8) cost about a decimal digit (benchmarks/conv3x3.py: 1e-6 and 1-2e-5 at 128-512 channels).
TOLERANCE = {2: 3e-6, 4: 3e-5}


def _direct(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("tile,shape", list(itertools.product([2, 4], SHAPES)))
def test_conv3x3_equals_the_direct_convolution(tile, shape):
    b, h, w, cin, cout = shape
    x = jax.random.normal(jax.random.key(0), (b, h, w, cin))
    k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) / np.sqrt(9 * cin)
    want = np.asarray(_direct(x, k))
    got = np.asarray(jax.jit(lambda x, k: winograd.conv3x3(x, k, tile))(x, k))
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.abs(got - want).max() <= TOLERANCE[tile] * np.abs(want).max()


def test_kernel_transform_matches_float64():
    """G w G^T, checked against numpy in float64 (the transform is exact up to rounding)."""
    w = np.asarray(jax.random.normal(jax.random.key(2), (3, 3, 2, 3)))
    for tile in (2, 4):
        g = winograd.MATRICES[tile][1]
        want = np.einsum("ai,ijco,bj->abco", g, w.astype(np.float64), g).reshape((tile + 2) ** 2, 2, 3)
        np.testing.assert_allclose(np.asarray(winograd.kernel_transform(jnp.asarray(w), tile)), want,
                                   rtol=1e-6, atol=1e-6)


def test_transform_matrices_compute_a_3_tap_correlation():
    """A^T [(G g) * (B^T d)] = the valid correlation of d (tile + 2 values) with g (3 taps), in 1-D."""
    rng = np.random.default_rng(0)
    for tile, (bt, g, at) in winograd.MATRICES.items():
        d, taps = rng.normal(size=tile + 2), rng.normal(size=3)
        want = np.array([d[i:i + 3] @ taps for i in range(tile)])
        np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), want, rtol=1e-12, atol=1e-12)


def test_shapes_it_does_not_handle_get_one_clear_error():
    assert not winograd.applies((1, 6, 8, 2), (3, 3, 2, 2), 4) and winograd.applies((1, 8, 8, 2), (3, 3, 2, 2), 4)
    with pytest.raises(ValueError, match=r"H, W multiples of 4; got input \(1, 6, 8, 2\)"):
        winograd.conv3x3(jnp.zeros((1, 6, 8, 2)), jnp.zeros((3, 3, 2, 2)), 4)


@pytest.mark.parametrize("tile,shape", list(itertools.product([2, 4], SHAPES)))
def test_kernel_grad3x3_equals_the_direct_convolutions_kernel_gradient(tile, shape):
    b, h, w, cin, cout = shape
    x = jax.random.normal(jax.random.key(0), (b, h, w, cin))
    k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
    g = jax.random.normal(jax.random.key(3), (b, h, w, cout))
    want = np.asarray(jax.vjp(lambda k: _direct(x, k), k)[1](g)[0])
    got = np.asarray(jax.jit(lambda x, g: winograd.kernel_grad3x3(x, g, tile))(x, g))
    assert got.shape == want.shape == (3, 3, cin, cout)
    assert np.abs(got - want).max() <= TOLERANCE[tile] * np.abs(want).max()
