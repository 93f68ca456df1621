"""EMA updates, restarts and health metrics against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np

from rq_jax import quantizer as q


def test_ema_update_by_hand():
    emb = jnp.asarray([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]])
    state = q.CodebookState(emb, jnp.asarray([2.0, 1.0, 0.5]), jnp.asarray([[2.0, 2.0], [10.0, 10.0], [-5.0, 2.5]]))
    vectors = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0]])
    codes = jnp.asarray([0, 0, 1])
    new = q.ema_update(state, vectors, codes, decay=0.9, eps=1e-5, restart=False)
    cs = np.array([0.9 * 2 + 0.1 * 2, 0.9 * 1 + 0.1 * 1, 0.9 * 0.5])
    es = np.array([[0.9 * 2 + 0.1 * 1, 0.9 * 2 + 0.1 * 1], [0.9 * 10 + 0.1 * 9, 0.9 * 10 + 0.1 * 11],
                   [0.9 * -5, 0.9 * 2.5]])
    n = cs.sum()
    smoothed = n * (cs + 1e-5) / (n + 3 * 1e-5)
    np.testing.assert_allclose(np.asarray(new.cluster_size_K), cs, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.embed_sum_KxC), es, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.embedding_KxC), es / smoothed[:, None], rtol=1e-6)


def test_restart_replaces_only_dead_codes_with_current_vectors():
    state = q.CodebookState(jnp.zeros((4, 3)), jnp.asarray([5.0, 0.2, 3.0, 0.99]), jnp.ones((4, 3)))
    vectors = jnp.arange(30, dtype=jnp.float32).reshape(10, 3)
    new, dead = q.restart_unused(state, jax.random.key(0), vectors, threshold=1.0)
    np.testing.assert_array_equal(np.asarray(dead), [False, True, False, True])
    np.testing.assert_array_equal(np.asarray(new.cluster_size_K), [5.0, 1.0, 3.0, 1.0])
    es = np.asarray(new.embed_sum_KxC)
    np.testing.assert_array_equal(es[[0, 2]], 1.0)
    rows = {tuple(r) for r in np.asarray(vectors)}
    assert tuple(es[1]) in rows and tuple(es[3]) in rows and tuple(es[1]) != tuple(es[3])


def test_restart_tiles_with_small_noise_when_few_vectors():
    vectors = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    cand = np.asarray(q.restart_candidates(jax.random.key(1), vectors, 7))
    assert cand.shape == (7, 2)
    dist = np.abs(cand[:, None, :] - np.asarray(vectors)[None]).min(1).max()
    assert 0 < dist <= 0.01 / np.sqrt(2) + 1e-7


def test_train_with_restart_revives_all_dead_codes():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(64, 8)).astype(np.float32))
    state = q.init_codebook(jax.random.key(0), 16, 8)  # counts start at 0: everything is dead
    _, new = q.rq_quantize_train(z, state, 2, jax.random.key(1), restart=True)
    assert int(q.ema_dead_codes(new)) == 0
    assert np.all(np.asarray(new.cluster_size_K) >= 1.0)


def test_once_mode_pools_all_depths_into_one_update():
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(40, 4)).astype(np.float32))
    state = q.init_codebook(jax.random.key(2), 8, 4)
    out, new = q.rq_quantize_train(z, state, 3, None, restart=False, update="once", decay=0.5)
    codes_eval = q.rq_quantize(z, state.embedding_KxC, 3).codes
    np.testing.assert_array_equal(np.asarray(out.codes), np.asarray(codes_eval))
    counts = np.bincount(np.asarray(out.codes).reshape(-1), minlength=8)
    np.testing.assert_allclose(np.asarray(new.cluster_size_K), 0.5 * counts, rtol=1e-6)
    assert float(new.cluster_size_K.sum()) == 0.5 * 40 * 3


def test_codebook_usage_metrics():
    codes = jnp.asarray([[0, 1], [0, 1], [1, 1], [2, 1]])  # depth 0: {0:2, 1:1, 2:1}; depth 1: {1:4}
    m = q.codebook_usage(codes, 4)
    p = np.array([0.5, 0.25, 0.25])
    np.testing.assert_allclose(np.asarray(m["perplexity"]), [np.exp(-(p * np.log(p)).sum()), 1.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(m["usage"]), [0.75, 0.25])
    np.testing.assert_array_equal(np.asarray(m["dead"]), [1, 3])
