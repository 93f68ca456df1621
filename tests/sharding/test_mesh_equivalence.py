"""A train step of each stage on meshes (data, fsdp, tensor) = (8,1,1), (2,4,1), (2,2,2) equals the step on
one device: same loss and the same updated parameters, optimizer state and codebook EMA statistics.

The parameters carry logical axis names; `rq_jax.sharding` maps them onto the mesh (FSDP over "fsdp",
heads / MLP / vocabulary / conv outputs over "tensor"), so these meshes really split the state.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rq_jax import sharding
from tests.helpers import load_repo_config as load_config

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def mesh_of(shape):
    d, f, t = shape
    devices = jax.devices()[: d * f * t]
    return sharding.mesh_from_config({"data": d, "fsdp": f, "tensor": t}, devices=devices)


def assert_close(a, b, rtol, atol, mean_atol=None):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    diffs = []
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
        diffs.append(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).ravel())
    if mean_atol is not None:
        assert np.mean(np.concatenate(diffs)) < mean_atol


def split_leaves(state) -> int:
    """How many state leaves are actually split over devices."""
    return sum(1 for x in jax.tree.leaves(state) if not x.sharding.is_fully_replicated)


# ---- stage 1 ----------------------------------------------------------------------------------------
def stage1_config():
    c = load_config("configs/rqvae/demo.py", "runlocal")
    c.loss.disc_start = 0  # the discriminator and the adaptive weight take part in the step
    c.train.batch_size = 8
    return c


def stage1_steps(config, mesh, images, num_steps=2):
    from rq_jax.trainers import rqvae as t1

    tx_gen, _ = t1.make_optimizer(config.train.lr, config.train, 1)
    tx_disc, _ = t1.make_optimizer(config.train.disc_lr, config.train, 1)
    setup = t1.setup_state(config, mesh, tx_gen, tx_disc)
    state = setup.init()
    step = t1.jit_train_step(config, mesh, setup, None, False)
    losses = []
    for i in range(num_steps):
        batch = sharding.global_batch(mesh, {"image": images[i]})
        with jax.set_mesh(mesh):
            state, m = step(state, batch, None)
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state), split_leaves(state)


@pytest.fixture(scope="module")
def stage1_reference():
    config = stage1_config()
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(2, 8, 32, 32, 3)).astype(np.float32)
    return config, images, stage1_steps(config, mesh_of((1, 1, 1)), images)


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES)
def test_stage1_step_is_the_same_on_every_mesh(stage1_reference, shape):
    config, images, (ref_losses, ref_state, _) = stage1_reference
    losses, state, num_split = stage1_steps(config, mesh_of(shape), images)
    if shape[1] * shape[2] > 1:
        assert num_split > 0  # FSDP / tensor parallelism really split some parameters
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert_close(state["codebook"], ref_state["codebook"], rtol=1e-4, atol=1e-5)  # EMA statistics
    # The gradients agree: Adam's moments are averages of them. The parameters agree to a fraction of one
    # Adam step: Adam normalises each update (~lr * g / |g|), so a weight whose true gradient is ~0 (a conv
    # bias before a GroupNorm) moves by rounding noise of another summation order, up to a sizeable part of
    # lr; on average the weights agree to 1% of a step, and the second step's loss (which sees the first
    # update) agrees to 1e-5.
    lr, disc_lr = config.train.lr, config.train.disc_lr
    assert_close(state["gen_opt"], ref_state["gen_opt"], rtol=1e-3, atol=1e-5)
    assert_close(state["gen"], ref_state["gen"], rtol=1e-4, atol=0.5 * lr, mean_atol=0.01 * lr)
    assert_close(state["disc"], ref_state["disc"], rtol=1e-4, atol=0.5 * disc_lr, mean_atol=0.01 * disc_lr)


# ---- stage 2 ----------------------------------------------------------------------------------------
def stage2_config():
    c = load_config("configs/transformer/demo.py", "runlocal")
    c.train.batch_size = 8
    c.train.cond_drop_prob = 0.1
    return c


def stage2_steps(config, mesh, batches, codebook, num_steps=2):
    from rq_jax.trainers import rq_transformer as t2

    tx, _ = t2.make_optimizer(config.train, 10)
    setup = t2.setup_state(config, mesh, tx)
    state = setup.init()
    step = t2.jit_train_step(config, mesh, setup)
    text_table = jnp.zeros((1, 1), jnp.int32)
    losses = []
    for i in range(num_steps):
        with jax.set_mesh(mesh):
            state, m = step(state, sharding.global_batch(mesh, batches[i]), codebook, text_table)
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state), split_leaves(state)


@pytest.fixture(scope="module")
def stage2_reference():
    config = stage2_config()
    h, w, _ = config.model.code_shape
    rng = np.random.default_rng(1)
    batches = [dict(features=rng.normal(size=(8, h, w, config.model.embed_dim)).astype(np.float32),
                    label=rng.integers(0, config.model.num_classes, size=8).astype(np.int32),
                    caption=np.zeros(8, np.int32)) for _ in range(2)]
    codebook = jnp.asarray(rng.normal(size=(config.model.vocab_size, config.model.embed_dim)).astype(np.float32))
    return config, batches, codebook, stage2_steps(config, mesh_of((1, 1, 1)), batches, codebook)


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES)
def test_stage2_step_is_the_same_on_every_mesh(stage2_reference, shape):
    config, batches, codebook, (ref_losses, ref_state, _) = stage2_reference
    losses, state, num_split = stage2_steps(config, mesh_of(shape), batches, codebook)
    if shape[1] * shape[2] > 1:
        assert num_split > 0
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    lr = config.train.lr
    assert_close(state["opt"], ref_state["opt"], rtol=1e-3, atol=1e-6)
    assert_close(state["params"], ref_state["params"], rtol=1e-4, atol=0.5 * lr, mean_atol=0.01 * lr)


def test_rules_map_logical_axes_onto_the_mesh():
    mesh = mesh_of((2, 2, 2))
    assert sharding.mesh_spec(("embed", "heads"), (64, 64), mesh) == jax.sharding.PartitionSpec("fsdp", "tensor")
    # a dimension the mesh axis does not divide stays unsplit; a mesh axis is used once per array
    assert sharding.mesh_spec(("embed", "mlp"), (63, 64), mesh) == jax.sharding.PartitionSpec(None, "tensor")
    assert sharding.mesh_spec(("embed", "embed"), (64, 64), mesh) == jax.sharding.PartitionSpec("fsdp")
    custom = sharding.rules_from_config([["embed", None], ["heads", ["fsdp", "tensor"]]])
    assert sharding.mesh_spec(("embed", "heads"), (64, 64), mesh, custom) == jax.sharding.PartitionSpec(
        None, ("fsdp", "tensor"))
    with pytest.raises(ValueError, match="mesh.rules entries"):
        sharding.rules_from_config([["embed"]])


def test_throughput_and_mfu_from_the_flop_count():
    from rq_jax import metrics

    f = jax.jit(lambda a, b: a @ b)
    x = jnp.ones((64, 32), jnp.float32)
    flops = metrics.step_flops(f, x, x.T)
    assert flops == pytest.approx(2 * 64 * 32 * 64, rel=0.01)
    t = metrics.throughput(10.0, examples_per_step=8, tokens_per_step=8 * 256, flops_per_step=1e12,
                           peak_per_device=1e14, num_devices=4)
    assert t == pytest.approx({"examples_per_sec": 80.0, "tokens_per_sec": 20480.0, "mfu": 0.025})
    assert metrics.peak_flops(jax.devices()[0]) is None  # a CPU has no entry: no MFU is logged
    assert metrics.peak_flops(jax.devices()[0], 5e12) == 5e12

    class H100:
        device_kind = "NVIDIA H100 80GB HBM3"

    assert metrics.peak_flops(H100()) == 989e12


def test_activation_constraints_apply_only_inside_the_mesh_context():
    mesh = mesh_of((2, 2, 2))
    x = jnp.ones((8, 6, 4))
    def f(a):
        return sharding.constrain(a * 2, "batch", None, "heads")

    jitted = jax.jit(f)  # the same jitted function: the mesh context is part of jit's cache key
    assert len(jitted(x).sharding.device_set) == 1  # no context: untouched, stays on its one device
    with jax.set_mesh(mesh):
        y = jitted(x)
    assert y.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor")
    np.testing.assert_array_equal(np.asarray(y), 2 * np.ones((8, 6, 4)))


def test_multislice_mesh_needs_slices():
    with pytest.raises(ValueError, match="needs 2 slices of equal size whose devices report a slice_index"):
        sharding.mesh_from_config({"data": -1, "fsdp": 2}, dcn_shape={"data": 2})
    with pytest.raises(ValueError, match=r"names axes \['pipe'\]"):
        sharding.mesh_from_config({"data": -1}, dcn_shape={"pipe": 2})
    # dcn_shape of ones is a single slice
    assert dict(sharding.mesh_from_config({"data": -1, "fsdp": 2}, dcn_shape={"data": 1}).shape) == {"data": 4,
                                                                                                    "fsdp": 2}
