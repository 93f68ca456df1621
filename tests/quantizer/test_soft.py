"""Soft labels Q_tau and stochastic code sampling."""

import jax
import jax.numpy as jnp
import numpy as np

from rq_jax import quantizer as q


def test_soft_labels_match_definition():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5, 6)).astype(np.float32)
    e = rng.normal(size=(9, 6)).astype(np.float32)
    tau = 0.7
    d = ((r[:, None] - e[None]) ** 2).sum(-1).astype(np.float64)
    expect = np.exp(-d / tau) / np.exp(-d / tau).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(q.soft_labels(jnp.asarray(r), jnp.asarray(e), tau)), expect, atol=1e-6)


def test_tiny_temperature_gives_the_deterministic_codes_exactly():
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(200, 8)).astype(np.float32))
    e = jnp.asarray(rng.normal(size=(32, 8)).astype(np.float32))
    det = q.rq_quantize(z, e, 4).codes
    _, sto = q.rq_soft_codes(z, e, 4, 1e-7, stochastic=True, rng=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(sto), np.asarray(det))
    np.testing.assert_array_equal(np.asarray(q.gumbel_codes(z, e, 4, 1e-7, 5)), np.asarray(det))


def test_stochastic_codes_follow_q_tau():
    e = jnp.asarray([[0.0], [1.0], [3.0]])
    z = jnp.zeros((20000, 1)) + 0.4
    tau = 1.0
    _, codes = q.rq_soft_codes(z, e, 1, tau, stochastic=True, rng=jax.random.key(3))
    freq = np.bincount(np.asarray(codes)[:, 0], minlength=3) / 20000
    d = np.array([0.16, 0.36, 6.76])
    p = np.exp(-d / tau) / np.exp(-d / tau).sum()
    np.testing.assert_allclose(freq, p, atol=0.015)
    freq_k = np.bincount(np.asarray(q.gumbel_codes(z, e, 1, tau, 11))[:, 0], minlength=3) / 20000
    np.testing.assert_allclose(freq_k, p, atol=0.015)
