"""Stage-1 loss functions on hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rq_jax.losses import (
    adaptive_generator_weight,
    discriminator_factor,
    generator_adv_loss,
    hinge_d_loss,
    reconstruction_loss,
    vanilla_d_loss,
)


def test_reconstruction_loss():
    x = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    x_rec = jnp.array([[1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(reconstruction_loss(x, x_rec), (1 + 0 + 2 + 1) / 4)
    np.testing.assert_allclose(reconstruction_loss(x, x_rec, kind="l2"), (1 + 0 + 4 + 1) / 4)
    with pytest.raises(ValueError, match="Unknown reconstruction loss 'l3'"):
        reconstruction_loss(x, x_rec, kind="l3")


def test_hinge_d_loss():
    real = jnp.array([2.0, 0.5, -1.0, 1.0])  # relu(1 - real) = 0, 0.5, 2, 0 -> mean 0.625
    fake = jnp.array([-2.0, 0.0, 1.0])  # relu(1 + fake) = 0, 1, 2 -> mean 1
    np.testing.assert_allclose(hinge_d_loss(real, fake), 0.5 * (0.625 + 1.0))
    np.testing.assert_allclose(hinge_d_loss(jnp.full((2, 3, 3, 1), 5.0), jnp.full((2, 3, 3, 1), -5.0)), 0.0)


def test_vanilla_d_and_generator_losses():
    real, fake = jnp.array([0.0, 2.0]), jnp.array([0.0, -1.0])
    softplus = lambda v: np.log1p(np.exp(v))
    want = 0.5 * ((softplus(0.0) + softplus(-2.0)) / 2 + (softplus(0.0) + softplus(-1.0)) / 2)
    np.testing.assert_allclose(vanilla_d_loss(real, fake), want, rtol=1e-6)
    np.testing.assert_allclose(generator_adv_loss(jnp.array([[1.0, -3.0], [0.5, 0.5]])), 0.25)


def test_adaptive_generator_weight():
    nll = jnp.array([3.0, 4.0])  # norm 5
    np.testing.assert_allclose(adaptive_generator_weight(nll, jnp.array([6.0, 8.0])), 5.0 / (10.0 + 1e-4))
    np.testing.assert_allclose(adaptive_generator_weight(nll, jnp.zeros(2)), 1e4)  # 5 / 1e-4, clipped
    np.testing.assert_allclose(adaptive_generator_weight(nll, jnp.zeros(2), max_weight=10.0), 10.0)
    # Pytrees reduce to one global norm: ||(3, 4)|| = 5, ||(0, 2), (1,)|| = sqrt(5).
    tree = {"kernel": jnp.array([[0.0, 2.0]]), "bias": jnp.array([1.0])}
    np.testing.assert_allclose(adaptive_generator_weight(nll, tree, eps=0.0), 5.0 / np.sqrt(5.0), rtol=1e-6)
    # The weight is a constant for the optimizer: no gradient flows through it.
    grads = jax.grad(lambda a, b: adaptive_generator_weight(a, b) * 2.0, argnums=(0, 1))(nll, jnp.ones(2))
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_discriminator_factor():
    assert float(discriminator_factor(4, 5)) == 0.0
    assert float(discriminator_factor(5, 5)) == 1.0
    assert float(discriminator_factor(10, 0, factor=0.75)) == 0.75
    steps = jnp.arange(4)
    np.testing.assert_array_equal(jax.jit(jax.vmap(lambda s: discriminator_factor(s, 2)))(steps), [0, 0, 1, 1])
