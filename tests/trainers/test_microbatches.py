"""Gradient accumulation (config.train.microbatches) computes the full batch's gradient: with deterministic
codes, one-hot labels and no dropout, M = 2 or 4 slices give the loss and Adam moments of M = 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rq_jax import sharding
from rq_jax.trainers import rq_transformer as t2
from tests.helpers import load_repo_config


def config(m):
    c = load_repo_config("configs/transformer/demo.py", "runlocal")
    c.soft.soft_labels, c.soft.stochastic_codes = False, False
    c.model.dropout, c.train.cond_drop_prob = 0.0, 0.0
    c.train.batch_size, c.train.microbatches = 8, m
    return c


def one_step(c):
    mesh = sharding.mesh_from_config({"data": -1, "fsdp": 1, "tensor": 1})
    tx, _ = t2.make_optimizer(c.train, 10)
    setup = t2.setup_state(c, mesh, tx)
    rng = np.random.default_rng(0)
    h, w, _ = c.model.code_shape
    batch = dict(features=rng.normal(size=(8, h, w, c.model.embed_dim)).astype(np.float32),
                 label=rng.integers(0, c.model.num_classes, size=8).astype(np.int32), caption=np.zeros(8, np.int32))
    codebook = jnp.asarray(rng.normal(size=(c.model.vocab_size, c.model.embed_dim)).astype(np.float32))
    with jax.set_mesh(mesh):
        state, m = t2.jit_train_step(c, mesh, setup)(setup.init(), sharding.global_batch(mesh, batch), codebook,
                                                     jnp.zeros((1, 1), jnp.int32))
    return jax.device_get(state), jax.device_get(m)


@pytest.mark.slow
def test_accumulated_gradient_equals_the_full_batch_gradient():
    ref_state, ref_m = one_step(config(1))
    for m in (2, 4):
        state, metrics = one_step(config(m))
        np.testing.assert_allclose(metrics["loss"], ref_m["loss"], rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], ref_m["grad_norm"], rtol=1e-4)
        for a, b in zip(jax.tree.leaves(state["opt"]), jax.tree.leaves(ref_state["opt"]), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-7)


def test_batch_not_divisible_by_microbatches_is_one_sentence():
    with pytest.raises(ValueError, match="batch_size=8 is not divisible by config.train.microbatches=3"):
        t2._microbatches({"x": jnp.zeros((8, 2))}, 3)


def cc3m_step(text_w):
    c = load_repo_config("configs/transformer/cc3m.py", "runlocal")
    c.train.text_loss_weight, c.model.dropout, c.train.batch_size = text_w, 0.0, 4
    mesh = sharding.mesh_from_config({"data": 1}, devices=jax.devices()[:1])
    tx, _ = t2.make_optimizer(c.train, 10)
    setup = t2.setup_state(c, mesh, tx)
    rng = np.random.default_rng(0)
    h, w, _ = c.model.code_shape
    table = rng.integers(0, c.model.text_vocab_size, size=(5, c.model.text_len)).astype(np.int32)
    batch = dict(features=rng.normal(size=(4, h, w, c.model.embed_dim)).astype(np.float32),
                 label=np.zeros(4, np.int32), caption=np.arange(4, dtype=np.int32))
    codebook = jnp.asarray(rng.normal(size=(c.model.vocab_size, c.model.embed_dim)).astype(np.float32))
    with jax.set_mesh(mesh):
        state, m = t2.jit_train_step(c, mesh, setup)(setup.init(), sharding.global_batch(mesh, batch), codebook,
                                                     jnp.asarray(table))
    return jax.device_get(state), float(m["loss"])


def test_cc3m_trains_the_next_text_token_head():
    assert config_text_weight() == 0.1
    with_text, loss_w = cc3m_step(0.1)
    image_only, loss_0 = cc3m_step(0.0)
    moved = jax.tree.leaves(jax.tree.map(lambda a: np.abs(a).max(), with_text["opt"][1][0].mu["cond_classifier"]))
    still = jax.tree.leaves(jax.tree.map(lambda a: np.abs(a).max(), image_only["opt"][1][0].mu["cond_classifier"]))
    assert max(moved) > 0 and max(still) == 0  # only the text loss reaches cond_classifier
    assert loss_w != loss_0


def config_text_weight():
    return load_repo_config("configs/transformer/cc3m.py").train.text_loss_weight
