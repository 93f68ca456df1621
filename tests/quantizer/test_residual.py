"""Residual quantization against the golden official outputs and an independent numpy version."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rq_jax import quantizer as q


def numpy_rq(z, codebook, depth):
    """Eq. 3-5 written directly with numpy in float64: codes and partial sums."""
    r = z.reshape(-1, z.shape[-1]).astype(np.float64)
    e = codebook.astype(np.float64)
    codes, partials, acc = [], [], np.zeros_like(r)
    for _ in range(depth):
        d = ((r[:, None, :] - e[None, :, :]) ** 2).sum(-1)
        k = d.argmin(-1)
        r = r - e[k]
        acc = acc + e[k]
        codes.append(k)
        partials.append(acc.copy())
    lead = z.shape[:-1]
    return np.stack(codes, -1).reshape(*lead, depth), np.stack(partials, -2).reshape(*lead, depth, -1)


def golden_state(golden):
    p = "vae/param/quantizer.codebooks.0."
    return q.CodebookState(
        jnp.asarray(golden[p + "weight"][:-1]),
        jnp.asarray(golden[p + "cluster_size_ema"]),
        jnp.asarray(golden[p + "embed_ema"]),
    )


def test_golden_eval_forward(golden):
    w = golden["vae/param/quantizer.codebooks.0.weight"]
    np.testing.assert_array_equal(w[-1], 0.0)  # the padding row, never searched
    out = q.rq_quantize(jnp.asarray(golden["vae/z_e"]), jnp.asarray(w[:-1]), 4)
    np.testing.assert_array_equal(np.asarray(out.codes), golden["vae/codes"])
    np.testing.assert_allclose(np.asarray(out.zhat_cum[..., -1, :]), golden["vae/zq_sum"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.quantized), golden["vae/zq_sum"], atol=1e-5)
    np.testing.assert_allclose(float(out.commit_loss), golden["vae/commit_loss"], rtol=1e-5)


def test_golden_train_step(golden):
    """One official training forward (shared codebook updated depth by depth, restarts off)."""
    out, new = q.rq_quantize_train(jnp.asarray(golden["vae/z_e"]), golden_state(golden), 4, None, restart=False)
    np.testing.assert_array_equal(np.asarray(out.codes), golden["vae/train/codes"])
    np.testing.assert_allclose(float(out.commit_loss), golden["vae/train/commit_loss"], rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(new.cluster_size_K), golden["vae/train/cluster_size_ema"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(new.embed_sum_KxC), golden["vae/train/embed_ema"], rtol=1e-5, atol=1e-5)
    # Unused codes have tiny smoothed counts, so weights reach ~3e5: compare relatively.
    np.testing.assert_allclose(np.asarray(new.embedding_KxC), golden["vae/train/weight"][:-1], rtol=1e-5)


def test_golden_soft_codes(golden):
    w = jnp.asarray(golden["vae/param/quantizer.codebooks.0.weight"][:-1])
    soft, codes = q.rq_soft_codes(jnp.asarray(golden["vae/z_e"]), w, 4, 0.5)
    np.testing.assert_array_equal(np.asarray(codes), golden["tf/soft_code_codes"])
    np.testing.assert_allclose(np.asarray(soft), golden["tf/soft_code"], atol=1e-5)


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_matches_numpy_equations(depth):
    z = np.random.default_rng(0).normal(size=(3, 5, 7, 16)).astype(np.float32)
    e = np.random.default_rng(1).normal(size=(50, 16)).astype(np.float32)
    codes_ref, partial_ref = numpy_rq(z, e, depth)
    out = q.rq_quantize(jnp.asarray(z), jnp.asarray(e), depth, commitment_reduction="sum")
    np.testing.assert_array_equal(np.asarray(out.codes), codes_ref)
    np.testing.assert_allclose(np.asarray(out.zhat_cum), partial_ref, atol=1e-5)
    # Eq. 7: sum over depths of the squared error (here as a per-element mean per depth).
    loss_ref = sum(((z - partial_ref[..., d, :]) ** 2).mean() for d in range(depth))
    np.testing.assert_allclose(float(out.commit_loss), loss_ref, rtol=1e-5)
    mean = q.rq_quantize(jnp.asarray(z), jnp.asarray(e), depth).commit_loss
    np.testing.assert_allclose(float(mean), loss_ref / depth, rtol=1e-5)
    # decoding the codes gives the partial sums at every depth
    for d in range(1, depth + 1):
        np.testing.assert_allclose(
            np.asarray(q.rq_decode(out.codes, jnp.asarray(e), d)), partial_ref[..., d - 1, :], atol=1e-5
        )


def test_straight_through_gradients_numerically():
    """d/dz of f(quantized) equals d/dz of f(z) evaluated at zhat: the identity Jacobian."""
    rng = np.random.default_rng(2)
    z = jnp.asarray(rng.normal(size=(4, 8)).astype(np.float32))
    e = jnp.asarray(rng.normal(size=(10, 8)).astype(np.float32))
    a = jnp.asarray(rng.normal(size=(4, 8)).astype(np.float32))

    def f(zz):
        return jnp.sum(a * q.rq_quantize(zz, e, 2).quantized ** 2)

    g = np.asarray(jax.grad(f)(z))
    zhat = np.asarray(q.rq_quantize(z, e, 2).quantized)
    np.testing.assert_allclose(g, 2 * np.asarray(a) * zhat, rtol=1e-5)
    # the forward value is zhat exactly, and a finite-difference of the surrogate z + sg(zhat - z)
    # along a direction is that directional derivative
    v = rng.normal(size=(4, 8)).astype(np.float32)
    surrogate = lambda t: float(np.sum(np.asarray(a) * (zhat + t * v) ** 2))
    fd = (surrogate(1e-3) - surrogate(-1e-3)) / 2e-3
    np.testing.assert_allclose(float(np.sum(g * v)), fd, rtol=1e-3)
    # commitment loss: gradient 2 (z - zhat(d)) / numel averaged over depth reaches z, none reaches e
    gz, ge = jax.grad(lambda zz, ee: q.rq_quantize(zz, ee, 2).commit_loss, argnums=(0, 1))(z, e)
    zc = np.asarray(q.rq_quantize(z, e, 2).zhat_cum)
    expect = sum(2 * (np.asarray(z) - zc[:, d]) / z.size for d in range(2)) / 2
    np.testing.assert_allclose(np.asarray(gz), expect, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(ge), 0.0)


def test_jit_vmap_and_bf16():
    rng = np.random.default_rng(3)
    z = jnp.asarray(rng.normal(size=(6, 4, 16)).astype(np.float32))
    e = jnp.asarray(rng.normal(size=(32, 16)).astype(np.float32))
    eager = q.rq_quantize(z, e, 3)
    jitted = jax.jit(lambda a, b: q.rq_quantize(a, b, 3))(z, e)
    vmapped = jax.vmap(lambda a: q.rq_quantize(a, e, 3).codes)(z)
    np.testing.assert_array_equal(np.asarray(eager.codes), np.asarray(jitted.codes))
    np.testing.assert_array_equal(np.asarray(eager.codes), np.asarray(vmapped))
    zb = z.astype(jnp.bfloat16)
    out = q.rq_quantize(zb, e, 3)
    assert out.quantized.dtype == jnp.bfloat16
    assert out.zhat_cum.dtype == jnp.float32 and out.commit_loss.dtype == jnp.float32
    codes_ref, _ = numpy_rq(np.asarray(zb.astype(jnp.float32)), np.asarray(e), 3)
    np.testing.assert_array_equal(np.asarray(out.codes), codes_ref)
    st = q.init_codebook(jax.random.key(0), 32, 16)
    (o, s) = jax.jit(lambda a, b, r: q.rq_quantize_train(a, b, 3, r))(zb, st, jax.random.key(1))
    assert s.embedding_KxC.dtype == jnp.float32 and np.isfinite(np.asarray(s.embedding_KxC)).all()


def test_bad_inputs_give_clear_errors():
    z = jnp.zeros((2, 8))
    e = jnp.zeros((4, 8))
    with pytest.raises(ValueError, match="embedding dimension 6"):
        q.rq_quantize(z, jnp.zeros((4, 6)), 2)
    with pytest.raises(ValueError, match=r"shape \[K, C\]"):
        q.rq_quantize(z, jnp.zeros((4, 8, 1)), 2)
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        q.rq_quantize(z, e, 0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        q.rq_soft_codes(z, e, 2, 0.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        q.soft_labels(z, e, -1.0)
    with pytest.raises(ValueError, match="Unknown nearest_code impl 'cuda-fast'"):
        q.rq_quantize(z, e, 2, impl="cuda-fast")
    with pytest.raises(ValueError, match="Unknown codebook update mode"):
        q.rq_quantize_train(z, q.init_codebook(jax.random.key(0), 4, 8), 2, None, restart=False, update="x")
    with pytest.raises(ValueError, match="Decoding depth"):
        q.rq_decode(jnp.zeros((2, 3), jnp.int32), e, 4)


def test_restart_from_the_least_used_depth():
    """Dead codes restart on residuals of the depth that used the fewest distinct codes in the batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rq_jax import quantizer as q

    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(64, 8)).astype(np.float32))
    state = q.init_codebook(jax.random.key(0), 32, 8)
    state = state._replace(cluster_size_K=jnp.asarray(np.r_[np.full(16, 50.0), np.zeros(16)], jnp.float32))
    codes, zhat = q.rq_encode(z, state.embedding_KxC, 3)
    prev = np.concatenate([np.zeros((64, 1, 8)), np.asarray(zhat)[:, :-1]], axis=1)
    residuals = np.asarray(z)[:, None] - prev  # [N, D, C]: what each depth searched
    used = [len(np.unique(np.asarray(codes)[:, d])) for d in range(3)]
    d_star = int(np.argmin(used))
    _, new = q.rq_quantize_train(z, state, 3, jax.random.key(1), update="once", restart_from="least_used_depth",
                                 restart_threshold=1.0)
    restarted = np.asarray(new.embedding_KxC)[16:]  # the 16 dead codes (no vector reaches 1 count in one step)
    for vec in restarted:
        dist = np.min(np.linalg.norm(residuals[:, d_star] - vec, axis=-1))
        assert dist < 1e-3 * max(1.0, np.linalg.norm(vec)), dist
    with pytest.raises(ValueError, match="needs update mode 'once'"):
        q.rq_quantize_train(z, state, 3, jax.random.key(1), restart_from="least_used_depth")
