"""The fused soft-label cross-entropy equals the materialised one (loss, gradient, target statistics),
whatever the codebook block, with one tau per depth; `rq_residual_codes` draws `rq_soft_codes`' codes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rq_jax import quantizer as q


def _setup(b=3, t=5, d=3, k=37, c=6, seed=0):
    rng = np.random.default_rng(seed)
    z = jnp.asarray(rng.normal(size=(b, t, c)).astype(np.float32))
    e = jnp.asarray(rng.normal(size=(k, c)).astype(np.float32))
    logits = jnp.asarray(3 * rng.normal(size=(b, t, d, k)).astype(np.float32))
    return z, e, logits


def _materialised(logits, soft):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.sum(soft * logp, axis=-1))


def _fused(logits, residuals, e, taus, block):
    k = e.shape[0]
    inv_tau = jnp.broadcast_to(1.0 / jnp.asarray(taus, jnp.float32), logits.shape[:-1]).reshape(-1)
    out = q.soft_label_cross_entropy(logits.reshape(-1, k), residuals.reshape(-1, e.shape[1]), e, inv_tau,
                                     block_k=block)
    return jnp.mean(out.loss), out


@pytest.mark.parametrize("block", [8, 16, 37, 64, None])
@pytest.mark.parametrize("stochastic", [False, True])
def test_fused_equals_materialised(block, stochastic):
    z, e, logits = _setup()
    taus = (0.5, 0.1, 0.02)
    key = jax.random.key(3)
    soft, codes = q.rq_soft_codes(z, e, 3, taus, stochastic=stochastic, rng=key)
    codes2, residuals = q.rq_residual_codes(z, e, 3, taus, stochastic=stochastic, rng=key)
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(codes2))

    want, want_g = jax.value_and_grad(_materialised)(logits, soft)
    (got, out), got_g = jax.value_and_grad(lambda lg: _fused(lg, residuals, e, taus, block), has_aux=True)(logits)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), rtol=1e-5, atol=1e-6)

    flat = soft.reshape(-1, e.shape[0])
    ent = -jnp.sum(jnp.where(flat > 0, flat * jnp.log(jnp.where(flat > 0, flat, 1.0)), 0.0), -1)
    np.testing.assert_allclose(np.asarray(out.target_entropy), np.asarray(ent), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.target_p_max), np.asarray(flat.max(-1)), rtol=1e-5, atol=1e-6)
    lse = jax.nn.logsumexp(logits, -1).reshape(-1)
    np.testing.assert_allclose(np.asarray(out.logsumexp), np.asarray(lse), rtol=1e-6, atol=1e-6)


def test_gradient_of_the_normaliser_output_and_jit():
    """A loss that also uses logsumexp (the NLL metric inside a differentiated function) gets its share."""
    z, e, logits = _setup(k=20)
    codes, residuals = q.rq_residual_codes(z, e, 3, 0.3)

    def fused(lg):
        _, out = _fused(lg, residuals, e, 0.3, 8)
        return jnp.mean(out.loss) + 0.5 * jnp.mean(out.logsumexp)

    def reference(lg):
        soft, _ = q.rq_soft_codes(z, e, 3, 0.3)
        return _materialised(lg, soft) + 0.5 * jnp.mean(jax.nn.logsumexp(lg, -1))

    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(fused))(logits)), np.asarray(jax.grad(reference)(logits)),
                               rtol=1e-5, atol=1e-6)


def test_one_hot_cross_entropy_and_extreme_logits():
    _, _, logits = _setup(k=11)
    flat = logits.reshape(-1, 11).at[0, 3].set(1e4)  # a huge logit must not overflow
    codes = jnp.arange(flat.shape[0]) % 11
    out = q.one_hot_cross_entropy(flat, codes)
    want = -jnp.take_along_axis(jax.nn.log_softmax(flat, -1), codes[:, None], -1)[:, 0]
    np.testing.assert_allclose(np.asarray(out.loss), np.asarray(want), rtol=1e-6, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(out.loss)))


def test_no_KxN_float32_soft_labels_in_the_program():
    """The fused loss's compiled forward+backward holds no [N, K] float32 buffer besides the logits and their
    gradient (the materialised version needs two more: Q_tau and log p)."""
    n, k, c = 512, 4096, 8
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(n, k)).astype(np.float32))
    r = jnp.asarray(rng.normal(size=(n, c)).astype(np.float32))
    e = jnp.asarray(rng.normal(size=(k, c)).astype(np.float32))

    def fused(lg):
        return jnp.mean(q.soft_label_cross_entropy(lg, r, e, jnp.full((n,), 2.0), block_k=256).loss)

    def materialised(lg):
        return _materialised(lg, q.soft_labels(r, e, 0.5))

    def temp_bytes(f):
        return jax.jit(jax.grad(f)).lower(logits).compile().memory_analysis().temp_size_in_bytes

    nk = n * k * 4
    assert temp_bytes(fused) < 0.5 * nk, temp_bytes(fused) / nk
    assert temp_bytes(materialised) > 1.5 * nk  # the check can see the difference
    assert math.isfinite(float(fused(logits)))
