"""Q_tau diagnostics and per-depth temperature calibration (rq_jax/quantizer/calibrate.py)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from rq_jax import quantizer as q


def _residual_data(scale: float, n: int = 2048, k: int = 64, c: int = 8, seed: int = 0):
    """Features and a codebook whose distances are `scale`^2 times those of a unit-scale problem."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(k, c)).astype(np.float32) * 0.7
    z = rng.normal(size=(n, c)).astype(np.float32)
    return z * scale, e * scale


@pytest.mark.parametrize("scale", [1e-2, 1.0, 30.0])
@pytest.mark.parametrize("target", [0.5, 1.0, 3.0])
def test_calibration_hits_its_entropy_target_at_every_depth(scale, target):
    z, e = _residual_data(scale)
    taus = q.calibrate_temperature(z, e, 4, target)
    stats = q.q_tau_stats(z, e, 4, taus)
    np.testing.assert_allclose(stats["entropy_bits"], target, atol=0.05)
    assert all(a > b for a, b in zip(taus, taus[1:], strict=False))  # residuals shrink with depth, so does tau


def test_calibrated_tau_scales_with_the_squared_feature_scale():
    z, e = _residual_data(1.0)
    base = np.asarray(q.calibrate_temperature(z, e, 3, 1.0))
    for s in (0.1, 10.0):
        np.testing.assert_allclose(np.asarray(q.calibrate_temperature(z * s, e * s, 3, 1.0)), base * s * s, rtol=1e-3)


def test_per_depth_targets_and_deterministic_walk():
    z, e = _residual_data(1.0)
    taus = q.calibrate_temperature(z, e, 3, (0.5, 1.0, 2.0), stochastic=False)
    stats = q.q_tau_stats(z, e, 3, taus, stochastic=False)
    np.testing.assert_allclose(stats["entropy_bits"], [0.5, 1.0, 2.0], atol=0.05)


def test_stats_match_a_numpy_computation_on_one_depth():
    z, e = _residual_data(1.0, n=300, k=16)
    tau = 0.8
    d = ((z[:, None].astype(np.float64) - e[None]) ** 2).sum(-1)
    p = np.exp(-(d - d.min(-1, keepdims=True)) / tau)
    p /= p.sum(-1, keepdims=True)
    ent = -(p * np.log2(np.maximum(p, 1e-300))).sum(-1).mean()
    two = np.sort(d, -1)[:, :2].mean(0)
    s = q.q_tau_stats(z, e, 1, tau)
    np.testing.assert_allclose(s["entropy_bits"][0], ent, rtol=1e-4)
    np.testing.assert_allclose(s["p_nearest"][0], p.max(-1).mean(), rtol=1e-4)
    np.testing.assert_allclose([s["sq_dist_nearest"][0], s["sq_dist_second"][0]], two, rtol=1e-4)


def test_per_depth_temperature_in_soft_codes():
    z, e = _residual_data(1.0, n=64, k=16)
    taus = (0.9, 0.3, 0.05)
    soft, codes = q.rq_soft_codes(jnp.asarray(z), jnp.asarray(e), 3, taus)
    r = z.astype(np.float32)
    for d in range(3):
        np.testing.assert_allclose(np.asarray(soft[:, d]), np.asarray(q.soft_labels(jnp.asarray(r), e, taus[d])),
                                   atol=1e-5)
        r = r - e[np.asarray(codes[:, d])]
    one = q.rq_soft_codes(jnp.asarray(z), jnp.asarray(e), 3, 0.3)[0]
    np.testing.assert_allclose(np.asarray(one), np.asarray(q.rq_soft_codes(z, e, 3, (0.3,) * 3)[0]))
    sto = q.gumbel_codes(jnp.asarray(z), jnp.asarray(e), 3, (1e-7, 1e-7, 1e-7), 3)
    np.testing.assert_array_equal(np.asarray(sto), np.asarray(codes))


def test_temperature_errors_are_one_sentence():
    z, e = _residual_data(1.0, n=8, k=4)
    with pytest.raises(ValueError, match=r"has 2 values \(0.1, 0.2\) but the codes have depth 3"):
        q.rq_soft_codes(z, e, 3, (0.1, 0.2))
    with pytest.raises(ValueError, match=r"'auto:1.0' is a calibration target: resolve it to numbers first"):
        q.rq_soft_codes(z, e, 3, "auto:1.0")
    with pytest.raises(ValueError, match=r"must be > 0, got -1"):
        q.rq_soft_codes(z, e, 2, (0.5, -1.0))
    with pytest.raises(ValueError, match=r"must lie in \(0, log2 K = 2.00\) bits"):
        q.calibrate_temperature(z, e, 1, 2.5)


def test_parse_auto():
    assert q.parse_auto(0.5) is None and q.parse_auto((0.1, 0.2)) is None
    assert q.parse_auto("auto:1.0") == 1.0 and q.parse_auto("auto: 2") == 2.0 and q.parse_auto("auto:.5") == 0.5
    for bad in ("auto", "0.5", "auto:x", "calibrate:1"):
        with pytest.raises(ValueError, match=r"is not understood: give a number \(0.5\), one number per depth"):
            q.parse_auto(bad)


def test_uniform_targets_warning():
    assert q.uniform_targets_warning([0.4, 1.2, 3.4], 128) is None
    msg = q.uniform_targets_warning([1.6, 5.7, 6.4], 128)
    assert msg.count(".") >= 1 and "depth 2, 3" in msg and "log2 K = 7.00" in msg and "auto:1.0" in msg


def test_sample_vectors_caps_the_distance_matrix():
    z = np.arange(1000 * 4, dtype=np.float32).reshape(10, 10, 10, 4)
    s = q.sample_vectors(z, 16, max_elements=16 * 100)
    assert s.shape == (100, 4) and s.dtype == np.float32
    np.testing.assert_array_equal(s, q.sample_vectors(z, 16, max_elements=16 * 100))  # fixed sample
    assert q.sample_vectors(z, 16).shape == (1000, 4)


def test_entropy_is_log_k_for_equidistant_codes():
    e = jnp.eye(8, dtype=jnp.float32)
    z = jnp.zeros((5, 8))
    s = q.q_tau_stats(z, e, 1, 0.5)
    assert math.isclose(s["entropy_bits"][0], 3.0, rel_tol=1e-5) and math.isclose(s["p_nearest"][0], 0.125,
                                                                                  rel_tol=1e-5)
