"""Fréchet Inception Distance, Inception Score, precision/recall from network outputs (numpy/scipy, JAX for k-NN).

The definitions follow the reference implementations the published numbers come from:
  * FID (Heusel et al. 2017, as in TTUR and pytorch-fid): features -> (mean, unbiased covariance),
    d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), the matrix square root by
    `scipy.linalg.sqrtm`, retried with eps on the diagonals when it is not finite;
  * IS (Salimans et al. 2016, openai/improved-gan): the softmax predictions are cut into `splits`
    consecutive chunks (no shuffle), exp(E_x KL(p(y|x) || p(y))) per chunk, mean and std over chunks;
  * improved precision and recall (Kynkaenniemi et al. 2019, as NVlabs' and ADM's evaluators): a
    sample is "covered" by a set when it lies within the k-NN radius (k = 3) of some member of it.

Statistics files are `.npz` archives with `mu` [F] and `sigma` [F, F], the format written by
pytorch-fid (`--save-stats`) and read from ADM's (guided-diffusion) reference batches.
"""

from __future__ import annotations

import logging
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

log = logging.getLogger(__name__)


def activation_statistics(feats_NxF: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu [F], sigma [F, F]) in float64: the mean and the unbiased covariance (np.cov, rowvar=False)."""
    feats_NxF = np.asarray(feats_NxF, np.float64)
    if feats_NxF.ndim != 2:
        raise ValueError(f"Features must be [N, F], got shape {feats_NxF.shape}.")
    if feats_NxF.shape[0] < 2:
        raise ValueError(f"A covariance needs at least 2 feature vectors, got {feats_NxF.shape[0]}.")
    return feats_NxF.mean(axis=0), np.cov(feats_NxF, rowvar=False)


def _sqrtm(a_FxF: np.ndarray) -> np.ndarray:
    """scipy's matrix square root, without the `disp` argument (deprecated in SciPy 1.16)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "singular matrix": handled by the caller
        out = linalg.sqrtm(a_FxF)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), the standard FID formula.

    When sqrtm(sigma1 @ sigma2) is not finite (a singular product), eps is added to both diagonals and
    it is recomputed; a small imaginary part of the result (numerical noise) is dropped, a large one
    (diagonal imaginary part above 1e-3) raises ValueError.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"The two means have different shapes: {mu1.shape} and {mu2.shape}.")
    if sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"The covariances {sigma1.shape} and {sigma2.shape} do not match the means' shape {mu1.shape}."
        )
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        log.warning("FID: sqrtm(sigma1 sigma2) is not finite (singular product); adding %g to the diagonals.", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"FID: sqrtm(sigma1 sigma2) has a large imaginary component ({np.max(np.abs(covmean.imag)):.3g}); "
                "the covariances are too ill-conditioned (too few samples for the feature dimension?)."
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_from_features(feats1_NxF: np.ndarray, feats2_MxF: np.ndarray) -> float:
    """FID between two feature sets; fast and exact when a set has no more vectors than dimensions.

    With n <= F vectors in a set (say set 1), S1 = X1^T X1 (X1: the centred features / sqrt(n - 1)) has
    rank < F and Tr sqrtm(S1 S2) = Tr sqrtm(X1^T X1 S2) = sum sqrt(eig(X1 S2 X1^T)): the same nonzero
    eigenvalues, of an n x n symmetric PSD matrix. This avoids a 2048 x 2048 sqrtm (about a minute on
    2 CPU cores) for small evaluation sets, where FID is anyway only indicative. Otherwise it is
    `frechet_distance` of the two `activation_statistics`.
    """
    f1, f2 = np.asarray(feats1_NxF, np.float64), np.asarray(feats2_MxF, np.float64)
    mu1, s1 = activation_statistics(f1)
    mu2, s2 = activation_statistics(f2)
    if min(f1.shape[0], f2.shape[0]) > f1.shape[1]:
        return frechet_distance(mu1, s1, mu2, s2)
    (few, mu_few), s_other = ((f1, mu1), s2) if f1.shape[0] <= f2.shape[0] else ((f2, mu2), s1)
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * _low_rank_trace_sqrt(few, mu_few, s_other))


def _low_rank_trace_sqrt(feats_NxF: np.ndarray, mu_F: np.ndarray, sigma_other_FxF: np.ndarray) -> float:
    """Tr sqrtm(S S_other) for S the covariance of `feats` (n <= F rows), by an n x n eigenproblem."""
    x = (feats_NxF - mu_F) / np.sqrt(feats_NxF.shape[0] - 1)
    inner = x @ sigma_other_FxF @ x.T
    return float(np.sum(np.sqrt(np.clip(linalg.eigvalsh((inner + inner.T) / 2), 0.0, None))))


def frechet_distance_to_statistics(feats_NxF: np.ndarray, mu_F: np.ndarray, sigma_FxF: np.ndarray) -> float:
    """FID between a feature set and reference statistics (mu, sigma), e.g. ADM's or pytorch-fid's files.

    Exact and fast (no F x F sqrtm) when the set has no more vectors than dimensions, as
    `frechet_distance_from_features`; otherwise `frechet_distance` of its statistics.
    """
    f = np.asarray(feats_NxF, np.float64)
    mu1, s1 = activation_statistics(f)
    mu2, s2 = np.asarray(mu_F, np.float64), np.asarray(sigma_FxF, np.float64)
    if mu2.shape != mu1.shape or s2.shape != s1.shape:
        raise ValueError(f"The statistics mu {mu2.shape}, sigma {s2.shape} do not match {f.shape[1]}-d features.")
    if f.shape[0] > f.shape[1]:
        return frechet_distance(mu1, s1, mu2, s2)
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * _low_rank_trace_sqrt(f, mu1, s2))


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Writes `mu` and `sigma` to an `.npz` file (the pytorch-fid format), creating its folder."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"Statistics must be mu [F] and sigma [F, F], got {mu.shape} and {sigma.shape}.")
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as f:  # a file object keeps np.savez from appending ".npz"
        np.savez(f, mu=mu, sigma=sigma)


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an `.npz` with `mu` and `sigma` keys (pytorch-fid's, ADM's reference batches)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID statistics file {path!r} not found.")
    try:
        archive = np.load(path)
    except Exception as e:  # noqa: BLE001 - np.load raises many types for a foreign file
        raise ValueError(f"{path!r} could not be read as an .npz archive ({type(e).__name__}: {e}).") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} holds a single array, not an .npz archive with 'mu' and 'sigma'.")
    with archive as f:
        keys = list(f.files)
        if "mu" not in keys or "sigma" not in keys:
            shown = ", ".join(repr(k) for k in keys[:8]) + (f", ... ({len(keys)} arrays)" if len(keys) > 8 else "")
            raise ValueError(
                f"{path!r} is not an FID statistics file: it needs arrays 'mu' and 'sigma' but has "
                f"{shown or 'no arrays'}."
            )
        mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path!r}: mu {mu.shape} and sigma {sigma.shape} are not [F] and [F, F].")
    return mu, sigma


def _softmax(logits_NxC: np.ndarray) -> np.ndarray:
    z = logits_NxC - logits_NxC.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(
    logits_or_probs_NxC: np.ndarray, splits: int = 10, *, is_probs: bool | None = None
) -> tuple[float, float]:
    """Inception Score (mean, std over `splits` consecutive chunks) of class logits or probabilities.

    `is_probs=None` decides by looking: rows that are non-negative and sum to 1 are probabilities,
    anything else is logits (softmax applied). Computed in float64 as openai/improved-gan does.
    """
    x = np.asarray(logits_or_probs_NxC, np.float64)
    if x.ndim != 2:
        raise ValueError(f"Inception Score needs [N, classes] predictions, got shape {x.shape}.")
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} predictions, got {n}.")
    if is_probs is None:
        is_probs = bool(np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-4))
    p = x if is_probs else _softmax(x)
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        p_y = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(p_y)), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------------------
# Improved precision and recall (Kynkaenniemi et al. 2019)
# ---------------------------------------------------------------------------------------------------
def _sq_dists(a_RxF: jax.Array, b_CxF: jax.Array) -> jax.Array:
    """Squared Euclidean distances [R, C] (float32, full-precision matmul: no TF32 on GPUs)."""
    ab = jnp.dot(a_RxF, b_CxF.T, precision=jax.lax.Precision.HIGHEST)
    d = jnp.sum(a_RxF**2, axis=1)[:, None] + jnp.sum(b_CxF**2, axis=1)[None, :] - 2.0 * ab
    return jnp.maximum(d, 0.0)


@jax.jit
def _knn_merge(best_RxK: jax.Array, a_RxF: jax.Array, b_CxF: jax.Array, b_valid_C: jax.Array) -> jax.Array:
    """The K smallest squared distances [R, K] (ascending) so far, updated with one column chunk."""
    d = jnp.where(b_valid_C[None, :], _sq_dists(a_RxF, b_CxF), jnp.inf)
    merged = jnp.concatenate([best_RxK, d], axis=1)
    return -jax.lax.top_k(-merged, best_RxK.shape[1])[0]


@jax.jit
def _covered_merge(covered_R: jax.Array, a_RxF: jax.Array, b_CxF: jax.Array, radii_sq_C: jax.Array) -> jax.Array:
    """covered | (some b within its radius of a); padded columns have radius -inf."""
    return covered_R | jnp.any(_sq_dists(a_RxF, b_CxF) <= radii_sq_C[None, :], axis=1)


def _chunks(x_NxF: np.ndarray, chunk: int) -> list[tuple[jax.Array, jax.Array, int]]:
    """(rows padded to `chunk`, validity mask, number of real rows) per chunk of rows."""
    out = []
    for start in range(0, x_NxF.shape[0], chunk):
        part = x_NxF[start : start + chunk]
        n = part.shape[0]
        padded = np.zeros((chunk, x_NxF.shape[1]), np.float32)
        padded[:n] = part
        out.append((jnp.asarray(padded), jnp.asarray(np.arange(chunk) < n), n))
    return out


def knn_radii_sq(feats_NxF: np.ndarray, k: int = 3, *, chunk: int = 10000) -> np.ndarray:
    """Squared distance [N] from each vector to its k-th nearest other vector of the set (self excluded)."""
    n = feats_NxF.shape[0]
    if n <= k:
        raise ValueError(f"A {k}-NN radius needs more than {k} vectors, got {n}.")
    chunk = min(chunk, n)
    parts = _chunks(np.asarray(feats_NxF, np.float32), chunk)
    radii = []
    for a, _, na in parts:
        best = jnp.full((chunk, k + 1), jnp.inf, jnp.float32)
        for b, valid, _ in parts:
            best = _knn_merge(best, a, b, valid)
        radii.append(np.asarray(best[:na, k]))  # entry 0 is the vector itself
    return np.concatenate(radii)


def coverage(query_MxF: np.ndarray, ref_NxF: np.ndarray, radii_sq_N: np.ndarray, *, chunk: int = 10000
             ) -> np.ndarray:
    """bool [M]: whether each query lies within the radius of at least one reference vector."""
    chunk_q, chunk_r = min(chunk, query_MxF.shape[0]), min(chunk, ref_NxF.shape[0])
    ref_parts = _chunks(np.asarray(ref_NxF, np.float32), chunk_r)
    radii = np.full((len(ref_parts) * chunk_r,), -np.inf, np.float32)
    radii[: len(radii_sq_N)] = radii_sq_N
    out = []
    for a, _, na in _chunks(np.asarray(query_MxF, np.float32), chunk_q):
        covered = jnp.zeros((chunk_q,), bool)
        for i, (b, _, _) in enumerate(ref_parts):
            covered = _covered_merge(covered, a, b, jnp.asarray(radii[i * chunk_r : (i + 1) * chunk_r]))
        out.append(np.asarray(covered[:na]))
    return np.concatenate(out)


def precision_recall(real_feats_NxF: np.ndarray, fake_feats_MxF: np.ndarray, k: int = 3, *, chunk: int = 10000
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) of fake against real features.

    Precision: the fraction of fake vectors within the k-NN radius of some real vector (radii among the
    real set); recall: the fraction of real vectors within the k-NN radius of some fake vector. Distances
    are computed on the default JAX device in float32 (features centred on the real mean first) in
    `chunk` x `chunk` blocks, so memory stays O(chunk^2) for sets of 50k.
    """
    real = np.asarray(real_feats_NxF, np.float64)
    fake = np.asarray(fake_feats_MxF, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"Precision/recall needs [N, F] and [M, F] features, got {real.shape} and {fake.shape}.")
    centre = real.mean(axis=0)  # distances are translation invariant; centring keeps float32 accurate
    real, fake = (real - centre).astype(np.float32), (fake - centre).astype(np.float32)
    precision = coverage(fake, real, knn_radii_sq(real, k, chunk=chunk), chunk=chunk)
    recall = coverage(real, fake, knn_radii_sq(fake, k, chunk=chunk), chunk=chunk)
    return float(precision.mean()), float(recall.mean())
