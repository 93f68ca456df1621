"""The shared codebook as explicit state: EMA statistics, the EMA update, restarts, health metrics.

The codebook receives no gradient. It follows exponential moving averages of the cluster sizes and
of the per-cluster feature sums (van den Oord et al. 2017), Laplace-smoothed, and codes whose EMA
count falls below a threshold are restarted from random current feature vectors (JukeBox). This
reproduces the official RQ-VAE implementation:

  cs  <- decay * cs  + (1 - decay) * counts          (counts: vectors assigned to each code)
  sum <- decay * sum + (1 - decay) * sums            (sums:   sum of the vectors assigned)
  [restart] codes with cs < 1: sum <- random current vector, cs <- 1
  n = sum(cs);  weight = sum / (n * (cs + eps) / (n + K * eps))

Everything is a pure function of arrays. Under `jit` with a batch sharded over devices, the sums over
the batch below are global sums (XLA inserts the all-reduce), and the restart draws from the global
batch with a replicated key, so every replica ends with the same codebook.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rq_jax.quantizer.config import QuantizerConfig


class CodebookState(NamedTuple):
    """The codebook and its EMA statistics (all float32).

    embedding_KxC: the code vectors used for search and lookup.
    cluster_size_K: EMA of the number of vectors assigned to each code (`cluster_size_ema`).
    embed_sum_KxC: EMA of the sum of the vectors assigned to each code (`embed_ema`).
    """

    embedding_KxC: jax.Array
    cluster_size_K: jax.Array
    embed_sum_KxC: jax.Array

    @property
    def num_codes(self) -> int:
        return self.embedding_KxC.shape[0]

    @property
    def dim(self) -> int:
        return self.embedding_KxC.shape[1]


def init_codebook(rng: jax.Array, num_codes: int, dim: int, *, stddev: float = 1.0) -> CodebookState:
    """A codebook drawn from N(0, stddev^2) (as torch's nn.Embedding), zero counts, sums = embedding."""
    if num_codes < 1 or dim < 1:
        raise ValueError(f"A codebook needs num_codes >= 1 and dim >= 1, got {num_codes} and {dim}.")
    emb = stddev * jax.random.normal(rng, (num_codes, dim), jnp.float32)
    return CodebookState(emb, jnp.zeros((num_codes,), jnp.float32), emb)


def cluster_statistics(
    vectors_NxC: jax.Array, codes_N: jax.Array, num_codes: int, weights_N: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(counts [K], sums [K, C]) of the vectors assigned to each code, in float32.

    A scatter-add (segment sum) rather than a one-hot matmul, so memory is O(N*C + K*C).
    `weights_N` (0/1) can mask padded vectors out.
    """
    v = vectors_NxC.astype(jnp.float32)
    ones = jnp.ones(codes_N.shape, jnp.float32) if weights_N is None else weights_N.astype(jnp.float32)
    if weights_N is not None:
        v = v * ones[:, None]
    counts_K = jax.ops.segment_sum(ones, codes_N, num_segments=num_codes)
    sums_KxC = jax.ops.segment_sum(v, codes_N, num_segments=num_codes)
    return counts_K, sums_KxC


def ema_accumulate(
    state: CodebookState, counts_K: jax.Array, sums_KxC: jax.Array, decay: float
) -> CodebookState:
    """Decays the EMA statistics and adds (1 - decay) times this batch's; the embedding is unchanged."""
    cs = state.cluster_size_K * decay + counts_K * (1.0 - decay)
    es = state.embed_sum_KxC * decay + sums_KxC * (1.0 - decay)
    return state._replace(cluster_size_K=cs, embed_sum_KxC=es)


def restart_candidates(rng: jax.Array, vectors_NxC: jax.Array, num_codes: int) -> jax.Array:
    """K random current feature vectors [K, C] (float32) to restart codes from.

    With N >= K, K distinct vectors by a random permutation; with N < K, the vectors are tiled
    ceil(K / N) times with uniform noise of scale 0.01 / sqrt(C) first (as JukeBox / the official code).
    """
    v = vectors_NxC.astype(jnp.float32)
    n, c = v.shape
    rng_perm, rng_noise = jax.random.split(rng)
    if n < num_codes:
        reps = -(-num_codes // n)
        v = jnp.tile(v, (reps, 1))
        v = v + jax.random.uniform(rng_noise, v.shape, jnp.float32) * (0.01 / jnp.sqrt(float(c)))
    perm = jax.random.permutation(rng_perm, v.shape[0])[:num_codes]
    return v[perm]


def restart_unused(
    state: CodebookState,
    rng: jax.Array,
    vectors_NxC: jax.Array,
    *,
    threshold: float = QuantizerConfig.restart_threshold,
) -> tuple[CodebookState, jax.Array]:
    """Restarts codes whose EMA count is below `threshold` from random current vectors.

    A restarted code gets embed_sum = the vector and cluster_size = 1. Returns the new state and
    the boolean mask [K] of restarted codes.
    """
    candidates_KxC = restart_candidates(rng, vectors_NxC, state.num_codes)
    dead_K = state.cluster_size_K < threshold
    es = jnp.where(dead_K[:, None], candidates_KxC, state.embed_sum_KxC)
    cs = jnp.where(dead_K, 1.0, state.cluster_size_K)
    return state._replace(cluster_size_K=cs, embed_sum_KxC=es), dead_K


def embedding_from_ema(state: CodebookState, eps: float = QuantizerConfig.eps) -> CodebookState:
    """Recomputes the embedding from the EMA statistics with Laplace smoothing of the counts."""
    k = state.num_codes
    n = jnp.sum(state.cluster_size_K)
    smoothed_K = n * (state.cluster_size_K + eps) / (n + k * eps)
    return state._replace(embedding_KxC=state.embed_sum_KxC / smoothed_K[:, None])


def ema_update(
    state: CodebookState,
    vectors_NxC: jax.Array,
    codes_N: jax.Array,
    *,
    decay: float = QuantizerConfig.decay,
    eps: float = QuantizerConfig.eps,
    restart: bool = QuantizerConfig.restart,
    restart_threshold: float = QuantizerConfig.restart_threshold,
    rng: jax.Array | None = None,
    weights_N: jax.Array | None = None,
    restart_vectors_MxC: jax.Array | None = None,
) -> CodebookState:
    """One EMA codebook step from vectors and their codes: accumulate, [restart], re-embed.

    Restarted codes are drawn from `restart_vectors_MxC` when given, else from `vectors_NxC`.
    """
    counts_K, sums_KxC = cluster_statistics(vectors_NxC, codes_N, state.num_codes, weights_N)
    state = ema_accumulate(state, counts_K, sums_KxC, decay)
    if restart:
        if rng is None:
            raise ValueError("Restarting unused codes needs a PRNG key: pass rng=..., or restart=False.")
        pool = vectors_NxC if restart_vectors_MxC is None else restart_vectors_MxC
        state, _ = restart_unused(state, rng, pool, threshold=restart_threshold)
    return embedding_from_ema(state, eps)


def codebook_usage(codes: jax.Array, num_codes: int) -> dict[str, jax.Array]:
    """Health metrics per depth from codes [..., D]: perplexity, fraction of codes used, dead codes.

    Returns arrays of shape [D]: `perplexity` = exp(entropy of the code histogram), `usage` = the
    fraction of the K codes used at least once in `codes`, `dead` = K minus the number used.
    """
    d = codes.shape[-1]
    codes_NxD = codes.reshape(-1, d)

    def per_depth(c_N):
        counts_K = jnp.zeros((num_codes,), jnp.float32).at[c_N].add(1.0)
        p_K = counts_K / jnp.maximum(jnp.sum(counts_K), 1.0)
        entropy = -jnp.sum(jnp.where(p_K > 0, p_K * jnp.log(jnp.where(p_K > 0, p_K, 1.0)), 0.0))
        used = jnp.sum(counts_K > 0)
        return jnp.exp(entropy), used / num_codes, (num_codes - used).astype(jnp.int32)

    perplexity, usage, dead = jax.vmap(per_depth, in_axes=1)(codes_NxD)
    return {"perplexity": perplexity, "usage": usage, "dead": dead}


def ema_dead_codes(state: CodebookState, threshold: float = QuantizerConfig.restart_threshold) -> jax.Array:
    """How many codes have an EMA count below `threshold` (the ones a restart would replace)."""
    return jnp.sum(state.cluster_size_K < threshold).astype(jnp.int32)
