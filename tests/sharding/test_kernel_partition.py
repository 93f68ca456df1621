"""The stage-1 train step runs the nearest-code search per shard: lowered for CUDA (no GPU needed) on a data mesh
and on an FSDP mesh of 8 fake devices, every Triton nearest-code call of the step sits inside a manual (shard_map)
computation and its grid covers one device's rows, never the whole batch (XLA cannot partition a pallas_call: without
this each device would gather z and repeat the search). The step's results on these meshes equal one device's:
tests/sharding/test_mesh_equivalence.py."""

import re

import jax
import jax.numpy as jnp
import pytest
from test_mesh_equivalence import mesh_of, stage1_config

from rq_jax import sharding


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1)])
def test_stage1_step_searches_codes_per_shard(shape):
    from rq_jax.trainers import rqvae as t1

    config = stage1_config()
    config.model.quantizer.impl = "pallas_gpu"
    mesh = mesh_of(shape)
    tx_gen, _ = t1.make_optimizer(config.train.lr, config.train, 1)
    tx_disc, _ = t1.make_optimizer(config.train.disc_lr, config.train, 1)
    setup = t1.setup_state(config, mesh, tx_gen, tx_disc)
    b, s = config.train.batch_size, config.data.image_size
    batch = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32, sharding=sharding.batch_sharding(mesh))}
    with jax.set_mesh(mesh):
        text = t1.jit_train_step(config, mesh, setup, None, False).trace(setup.abstract, batch, None).lower(
            lowering_platforms=("cuda",)).as_text()
    calls = re.findall(r"xla\.gpu\.triton.*?: \(tensor<(\d+)x\d+xf32>", text)
    assert calls, "the step should call the Triton nearest-code kernel"
    h, w, _ = config.model.code_shape
    assert {int(rows) for rows in calls} == {b * h * w // 8}  # each device's 1/8 of the 8 x 16 x 16 positions
    assert text.count("sdy.manual_computation") >= 1
