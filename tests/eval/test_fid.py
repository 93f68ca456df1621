"""FID, its statistics files and the Inception Score against references written here."""

import numpy as np
import pytest
from scipy import linalg, stats

from rq_jax.eval import fid


def reference_fid(f1, f2):
    """FID by a symmetric eigendecomposition: Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), no sqrtm."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sum(np.sqrt(np.clip(linalg.eigvalsh(root1 @ s2 @ root1), 0, None)))
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean


def feature_sets(n1, n2, dim, seed=0):
    """Two feature sets with different means and (non-diagonal) covariances."""
    r = np.random.default_rng(seed)
    f1 = r.normal(size=(n1, dim)) @ r.normal(size=(dim, dim)) * 0.5
    f2 = r.normal(size=(n2, dim)) @ r.normal(size=(dim, dim)) * 0.3 + r.normal(size=dim)
    return f1, f2


def test_statistics_are_float64_mean_and_unbiased_covariance():
    f, _ = feature_sets(50, 2, 8)
    mu, sigma = fid.activation_statistics(f.astype(np.float32))
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, (f - f.mean(0)).T @ (f - f.mean(0)) / 49, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        fid.activation_statistics(f[:1])


def test_fid_of_a_set_against_itself_is_zero():
    f, _ = feature_sets(300, 2, 32)
    mu, sigma = fid.activation_statistics(f)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)
    assert abs(fid.frechet_distance_from_features(f, f)) < 1e-8 * np.trace(sigma)


def test_fid_matches_the_reference_on_random_features():
    f1, f2 = feature_sets(400, 300, 48)
    want = reference_fid(f1, f2)
    got = fid.frechet_distance(*fid.activation_statistics(f1), *fid.activation_statistics(f2))
    assert want > 10
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(fid.frechet_distance_from_features(f1, f2), want, rtol=1e-6)


@pytest.mark.parametrize("n1,n2", [(20, 30), (30, 20), (20, 150)])
def test_fid_from_few_features_uses_the_exact_low_rank_formula(n1, n2):
    f1, f2 = feature_sets(n1, n2, 64, seed=1)  # a set with fewer vectors than dimensions: a singular covariance
    want = reference_fid(f1, f2)
    np.testing.assert_allclose(fid.frechet_distance_from_features(f1, f2), want, rtol=1e-6)
    sqrtm_value = fid.frechet_distance(*fid.activation_statistics(f1), *fid.activation_statistics(f2))
    np.testing.assert_allclose(sqrtm_value, want, rtol=1e-5)


def test_fid_retries_with_eps_when_sqrtm_is_not_finite(monkeypatch):
    f1, f2 = feature_sets(200, 200, 16)
    s = [*fid.activation_statistics(f1), *fid.activation_statistics(f2)]
    real_sqrtm, calls = fid._sqrtm, []

    def flaky(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid, "_sqrtm", flaky)
    got = fid.frechet_distance(*s, eps=1e-6)
    offset = np.eye(16) * 1e-6
    np.testing.assert_allclose(calls[1], (s[1] + offset) @ (s[3] + offset))
    np.testing.assert_allclose(got, reference_fid(f1, f2), rtol=1e-5)


def test_fid_drops_small_imaginary_parts_and_rejects_large_ones(monkeypatch):
    f1, f2 = feature_sets(200, 200, 16)
    s = [*fid.activation_statistics(f1), *fid.activation_statistics(f2)]
    real_sqrtm = fid._sqrtm
    monkeypatch.setattr(fid, "_sqrtm", lambda a: real_sqrtm(a) + 1e-6j)
    np.testing.assert_allclose(fid.frechet_distance(*s), reference_fid(f1, f2), rtol=1e-6)
    monkeypatch.setattr(fid, "_sqrtm", lambda a: real_sqrtm(a) + 0.5j * np.eye(len(a)))
    with pytest.raises(ValueError, match="imaginary component"):
        fid.frechet_distance(*s)


def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="different shapes"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="do not match"):
        fid.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(4))


def test_statistics_files_round_trip_and_read_pytorch_fid_files(tmp_path):
    f, _ = feature_sets(40, 2, 6)
    mu, sigma = fid.activation_statistics(f)
    path = tmp_path / "sub" / "stats.npz"
    fid.save_statistics(path, mu, sigma)
    mu2, sigma2 = fid.load_statistics(path)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    # pytorch-fid writes np.savez_compressed(path, mu=..., sigma=...); ADM's reference batches add more arrays
    np.savez_compressed(tmp_path / "torch.npz", mu=mu.astype(np.float32), sigma=sigma, mu_s=mu, arr_0=np.zeros(2))
    np.testing.assert_allclose(fid.load_statistics(tmp_path / "torch.npz")[0], mu, rtol=1e-6)


def test_bad_statistics_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        fid.load_statistics(tmp_path / "missing.npz")
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(2))
    with pytest.raises(ValueError, match=r"images\.npz.*'mu' and 'sigma'.*'arr_0', 'labels'"):
        fid.load_statistics(tmp_path / "images.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"text\.npz.*could not be read"):
        fid.load_statistics(tmp_path / "text.npz")
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"bad\.npz.*mu \(3,\) and sigma \(2, 2\)"):
        fid.load_statistics(tmp_path / "bad.npz")


def test_inception_score_on_known_probabilities():
    classes = 10
    one_hot = np.eye(classes)[np.arange(100) % classes]  # every chunk of 10 holds every class once
    assert fid.inception_score(one_hot, splits=10) == pytest.approx((10.0, 0.0))
    assert fid.inception_score(np.full((40, classes), 0.1), splits=4) == pytest.approx((1.0, 0.0))
    # two equally likely classes per image, four classes overall: KL = log 2 for every image
    half = np.zeros((40, 4))
    half[:20, :2] = half[20:, 2:] = 0.5
    assert fid.inception_score(half, splits=1)[0] == pytest.approx(2.0)


def test_inception_score_matches_a_reference_and_accepts_logits():
    r = np.random.default_rng(0)
    logits = r.normal(size=(60, 7)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = [np.exp(np.mean([stats.entropy(p, chunk.mean(0)) for p in chunk])) for chunk in np.split(probs, 3)]
    want = (np.mean(scores), np.std(scores))
    assert fid.inception_score(probs, splits=3) == pytest.approx(want, rel=1e-10)
    assert fid.inception_score(logits, splits=3) == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match="at least 10"):
        fid.inception_score(probs[:5], splits=10)
