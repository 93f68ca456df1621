"""The per-channel-sum GroupNorm computes nnx.GroupNorm's function, values and gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rq_jax.models.group_norm import GroupNorm
from rq_jax.models.layers import group_norm

CASES = [((2, 8, 8, 64), 32), ((1, 4, 6, 8), 4), ((3, 5, 5, 12), 1)]  # (NHWC shape, groups)


def _pair(channels, groups, dtype):
    kw = dict(num_groups=groups, epsilon=1e-6, use_fast_variance=False, dtype=dtype, rngs=nnx.Rngs(0))
    ours, theirs = GroupNorm(channels, **kw), nnx.GroupNorm(channels, **kw)
    for m in (ours, theirs):
        m.scale.value = 1 + 0.5 * jax.random.normal(jax.random.key(1), (channels,))
        m.bias.value = jax.random.normal(jax.random.key(2), (channels,))
    return ours, theirs


@pytest.mark.parametrize("case,dtype", list(itertools.product(CASES, [jnp.float32, jnp.bfloat16, None])))
def test_values_and_gradients_equal_nnx_group_norm(case, dtype):
    shape, groups = case
    ours, theirs = _pair(shape[-1], groups, dtype)
    x = (3 * jax.random.normal(jax.random.key(0), shape) + 1).astype(dtype or jnp.float32)

    def value_and_grads(module):
        graph, state = nnx.split(module)
        loss = lambda state, x: jnp.sum(jnp.sin(nnx.merge(graph, state)(x).astype(jnp.float32)))  # noqa: E731
        y = nnx.merge(graph, state)(x)
        return y, jax.grad(loss, (0, 1))(state, x)

    (y_ours, g_ours), (y_theirs, g_theirs) = value_and_grads(ours), value_and_grads(theirs)
    assert y_ours.dtype == y_theirs.dtype and y_ours.shape == y_theirs.shape
    tol = 1e-5 if dtype != jnp.bfloat16 else 5e-2  # bfloat16: 3 digits, rounded in other places
    for a, b in zip(jax.tree.leaves((y_theirs, g_theirs)), jax.tree.leaves((y_ours, g_ours)), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * max(1.0, np.abs(a).max()))


def test_masks_go_to_nnx_group_norm():
    ours, theirs = _pair(8, 4, jnp.float32)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    mask = jnp.arange(2 * 4 * 4 * 8).reshape(2, 4, 4, 8) % 3 > 0
    np.testing.assert_array_equal(np.asarray(ours(x, mask=mask)), np.asarray(theirs(x, mask=mask)))


def test_the_rqvae_blocks_use_it_with_the_same_parameter_names():
    m = group_norm(64, rngs=nnx.Rngs(0))
    assert isinstance(m, GroupNorm) and set(nnx.state(m, nnx.Param).keys()) == {"scale", "bias"}
