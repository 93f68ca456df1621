"""A run's compiled programs, built for abstract inputs on any mesh (`python -m rq_jax.compile_check`).

The train step, the evaluation step and the sample-grid sampler of a config, exactly as the trainers
jit them (the same functions, shardings and donation), with `jax.ShapeDtypeStruct` arguments instead of
arrays: nothing is allocated, so a mesh of compile-only TPU devices works on a CPU machine.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from rq_jax import sharding
from rq_jax.sampling import jit_sampler
from rq_jax.trainers import rq_transformer as t2
from rq_jax.trainers import rqvae as t1
from rq_jax.trainers import sample_grid as grid

# Captions of CC-3M's training split: rows of the text-token table a text-conditioned step holds on every device.
CC3M_CAPTIONS = 3_318_333


class Program(NamedTuple):
    """One program to compile: `jitted.trace(*args)` under `jax.set_mesh(mesh)`."""

    name: str
    jitted: Any
    args: tuple
    mesh: Mesh
    note: str = ""


def _sds(shape: tuple, dtype: Any, sh: NamedSharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), jnp.dtype(dtype), sharding=sh)


def _batch_spec(mesh: Mesh, n: int) -> NamedSharding:
    """Split over the data axes when they divide `n` (as the trainers' batches are), else replicated."""
    return sharding.batch_sharding(mesh) if n % sharding.data_parallel_size(mesh) == 0 else sharding.replicated(mesh)


def _num_processes(mesh: Mesh) -> int:
    return len({d.process_index for d in mesh.devices.flat})


def stage1(config: ml_collections.ConfigDict, mesh: Mesh) -> list[Program]:
    """The RQ-VAE train step (generator + discriminator, LPIPS) and its evaluation step on `mesh`."""
    from rq_jax.models.lpips import LPIPS

    tc = config.train
    tx_gen, _ = t1.make_optimizer(tc.lr, tc, 1)
    tx_disc, _ = t1.make_optimizer(tc.disc_lr, tc, 1)
    setup = t1.setup_state(config, mesh, tx_gen, tx_disc)
    repl = sharding.replicated(mesh)
    has_lpips = config.loss.perceptual_weight > 0
    lpips_graph, lpips_state = None, None
    if has_lpips:  # random weights of the real shapes: the compiler needs no values
        lpips_graph, lpips_state = nnx.split(nnx.eval_shape(lambda: LPIPS(rngs=nnx.Rngs(0))))
        lpips_state = jax.tree.map(lambda a: _sds(a.shape, a.dtype, repl), lpips_state)
    size = int(config.data.image_size)
    bs = int(tc.batch_size)
    image = _sds((bs, size, size, 3), jnp.float32, sharding.batch_sharding(mesh))
    train = Program("train step", t1.jit_train_step(config, mesh, setup, lpips_graph, has_lpips),
                    (setup.abstract, {"image": image}, lpips_state), mesh, f"batch {bs}")
    eval_bs = min(bs // _num_processes(mesh), 32) * _num_processes(mesh)
    eval_fn = jax.jit(partial(t1.eval_step, gen_graph=setup.graphs[0]))
    evaluate = Program("eval step", eval_fn, (setup.abstract, _sds((eval_bs, size, size, 3), jnp.float32,
                                                                   _batch_spec(mesh, eval_bs))),
                       mesh, f"batch {eval_bs}")
    return [train, evaluate]


def stage2(config: ml_collections.ConfigDict, mesh: Mesh, *, text_rows: int = CC3M_CAPTIONS,
           sample_batch: int | None = None) -> list[Program]:
    """The RQ-Transformer train step, its validation step and the sample-grid sampler on `mesh`.

    `text_rows`: captions in the token table of a text-conditioned run (CC-3M's by default). The sampler is
    compiled as the trainer runs it (`trainers.sample_grid.sample_grid`): over the mesh; on several CPU
    processes, on one device of each with the parameters gathered there. `sample_batch` replaces the grid's
    batch (throughput tables).
    """
    tc = config.train
    tx, _ = t2.make_optimizer(tc, 1000)
    setup = t2.setup_state(config, mesh, tx)
    h, w, depth = (int(v) for v in config.model.code_shape)
    repl, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    bs = int(tc.batch_size)
    processes = _num_processes(mesh)
    rows = text_rows + 1 if config.model.cond == "text" else 1
    text = _sds((rows, int(config.model.text_len) if config.model.cond == "text" else 1), jnp.int32, repl)
    codebook = _sds((config.model.vocab_size, config.model.embed_dim), jnp.float32, repl)

    def batch(n: int, sh: NamedSharding) -> dict:
        return {"features": _sds((n, h, w, config.model.embed_dim), jnp.float32, sh),
                "label": _sds((n,), jnp.int32, sh), "caption": _sds((n,), jnp.int32, sh)}

    micro = int(tc.get("microbatches", 1))
    train = Program("train step", t2.jit_train_step(config, mesh, setup),
                    (setup.abstract, batch(bs, bsh), codebook, text), mesh,
                    f"batch {bs}" + (f", {micro} microbatches" if micro > 1 else ""))
    eval_bs = min(bs // processes, 64) * processes
    evaluate = Program("eval step", jax.jit(partial(t2.eval_step, graph=setup.graph, config=config)),
                       (setup.abstract["params"], batch(eval_bs, _batch_spec(mesh, eval_bs)), codebook, text), mesh,
                       f"batch {eval_bs}")
    return [train, evaluate, sampler(config, setup, mesh, sample_batch)]


def grid_condition(config: ml_collections.ConfigDict, batch: int | None = None) -> tuple[int, tuple | None]:
    """(batch, cond shape) of one sampler call of the trainer's sample grid (`trainers.sample_grid.grid_rows`,
    sampled `grid_chunk` images at a time), or of `batch` images."""
    n = int(config.sample.num)
    rows = len(grid.grid_rows(config, int(config.model.get("num_classes", 0) or 0), 4))
    total = batch or grid.grid_chunk(rows * n)
    if config.model.cond == "class":
        return total, (total,)
    if config.model.cond == "text":
        return total, (total, int(config.model.text_len))
    return (batch or n), None


def sampler(config: ml_collections.ConfigDict, setup: Any, mesh: Mesh, batch: int | None) -> Program:
    """The sample-grid sampler (see `stage2`)."""
    n, cond_shape = grid_condition(config, batch)
    where = "the mesh"
    if grid.gather_for_grid(mesh.devices.flat[0].platform, _num_processes(mesh)):  # as the trainer does on CPU hosts
        mesh = jax.make_mesh((1,), ("data",), devices=[mesh.devices.flat[0]],
                             axis_types=(jax.sharding.AxisType.Auto,))
        where = "one device (parameters gathered, as on several CPU processes)"
        state_sh = sharding.replicated(mesh)
        params = jax.tree.map(lambda a: _sds(a.shape, a.dtype, state_sh), setup.abstract["params"])
    else:
        params = setup.abstract["params"]
    repl = sharding.replicated(mesh)
    codebook = _sds((config.model.vocab_size, config.model.embed_dim), jnp.float32, repl)
    cond = None if cond_shape is None else _sds(cond_shape, jnp.int32, repl)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=repl)
    fn = jit_sampler(setup.graph, batch=n, cfg=grid.sampling_config(config))
    return Program("sampler", fn, (params, codebook, cond, rng), mesh, f"batch {n} on {where}")
