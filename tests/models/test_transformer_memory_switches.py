"""remat and scan_layers change memory and compile time, not the function: same loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rq_jax.models.rq_transformer import RQTransformer, rq_transformer_model_config


def tiny(**kw):
    return rq_transformer_model_config(vocab_size=16, code_shape=(2, 2, 3), embed_dim=8, d_model=32, num_heads=2,
                                       spatial_layers=3, depth_layers=2, num_classes=5, **kw)


def loss_and_grads(config, codes, cond, codebook, rng):
    graph, params = nnx.split(RQTransformer(config, rngs=nnx.Rngs(0)))

    def loss(p):
        logits = nnx.merge(graph, p)(codes, cond, codebook_KxC=codebook, train=True, rng=rng)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, codes[..., None], -1)[..., 0])

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat,scan", [("full", False), ("none", True), ("dots", True), ("dots_no_batch", False)])
def test_remat_and_scan_give_the_same_loss_and_gradients(remat, scan):
    rng = np.random.default_rng(0)
    codes = jnp.asarray(rng.integers(0, 16, size=(4, 2, 2, 3)), jnp.int32)
    cond = jnp.asarray(rng.integers(0, 5, size=4), jnp.int32)
    codebook = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    key = jax.random.key(3)  # dropout on: block i draws from fold_in(key, i) in both paths
    ref_loss, ref_grads = loss_and_grads(tiny(), codes, cond, codebook, key)
    loss, grads = loss_and_grads(tiny(remat=remat, scan_layers=scan), codes, cond, codebook, key)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_parameters_do_not_depend_on_the_switches():
    a = nnx.state(RQTransformer(tiny(), rngs=nnx.Rngs(0)))
    b = nnx.state(RQTransformer(tiny(remat="full", scan_layers=True), rngs=nnx.Rngs(0)))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_unknown_remat_policy_is_one_sentence():
    with pytest.raises(ValueError, match="Unknown remat policy 'some'"):
        RQTransformer(tiny(remat="some"), rngs=nnx.Rngs(0))
