"""Stage-1 trainer: RQ-VAE with L1/L2 + commitment + LPIPS + PatchGAN losses (paper Sec. 4, App. A).

Read top to bottom:
  1. setup: mesh, data, models, optimizers and the train state (a plain dict pytree);
  2. the pure train step: (state, batch, lpips) -> (state, metrics), generator then discriminator,
     EMA codebook update and code restarts inside, jitted with explicit shardings, state donated;
  3. evaluation: held-out PSNR and codebook usage, image grids (inputs, reconstructions,
     coarse-to-fine partial reconstructions);
  4. the loop: resume (workdir -> config.init_from -> scratch), progress lines with steps/s and
     ETA, periodic checkpoints of the state and the data iterator, SIGTERM saves and exits, a
     NaN/Inf loss stops the run with the last good checkpoint intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from rq_jax import checkpoints, losses, metrics, sharding
from rq_jax.config_lib import check_known_keys, rqvae_config
from rq_jax.data.pipeline import build_image_pipeline, eval_batches
from rq_jax.metrics import TrainingDiverged  # noqa: F401 (re-exported: trainer.TrainingDiverged)
from rq_jax.models.discriminator import NLayerDiscriminator
from rq_jax.models.rqvae import RQVAE, CodebookVar
from rq_jax.quantizer import codebook_usage, ema_dead_codes


# ---------------------------------------------------------------------------------------------------
# 1. Setup
# ---------------------------------------------------------------------------------------------------
def _modules(config: ml_collections.ConfigDict, rng: jax.Array) -> tuple[RQVAE, NLayerDiscriminator]:
    r_gen, r_disc = jax.random.split(rng)
    model = RQVAE(config.model, rngs=nnx.Rngs(r_gen))
    disc = NLayerDiscriminator(
        config.model.out_channels, config.loss.disc_ndf, config.loss.disc_layers,
        norm=config.loss.disc_norm, rngs=nnx.Rngs(r_disc),
    )
    return model, disc


def _split(model: RQVAE, disc: NLayerDiscriminator):
    gen_graph, gen_params, codebook = nnx.split(model, nnx.Param, CodebookVar)
    disc_graph, disc_params, disc_stats = nnx.split(disc, nnx.Param, ...)
    return (gen_graph, disc_graph), dict(gen=gen_params, codebook=codebook, disc=disc_params,
                                         disc_stats=disc_stats)


def build_models(config: ml_collections.ConfigDict, rng: jax.Array):
    """Creates the RQ-VAE and the discriminator and splits them into graphs and state."""
    return _split(*_modules(config, rng))


class StateSetup(NamedTuple):
    """What the loop and the tests need to create, restore and step the train state on a mesh."""

    graphs: tuple            # (generator graph, discriminator graph)
    tx_gen: Any
    tx_disc: Any
    abstract: Any            # ShapeDtypeStructs with shardings (restore target)
    shardings: Any           # NamedShardings of the state (from the parameters' logical axes)
    init: Callable[[], Any]  # a fresh state, created already sharded


def setup_state(config: ml_collections.ConfigDict, mesh, tx_gen, tx_disc) -> StateSetup:
    """The train state's structure, shardings and sharded initialiser (nothing is allocated here).

    The state is a plain dict: step, generator params + Adam state, the codebook (EMA state, replicated),
    discriminator params, its batch statistics and Adam state, and the PRNG key data.
    """
    key = jax.random.key(config.seed)

    def init_state():
        _, parts = build_models(config, key)
        return dict(
            step=jnp.zeros((), jnp.int32), gen=parts["gen"], gen_opt=tx_gen.init(parts["gen"]),
            codebook=parts["codebook"], disc=parts["disc"], disc_stats=parts["disc_stats"],
            disc_opt=tx_disc.init(parts["disc"]), rng=jax.random.key_data(jax.random.fold_in(key, 1)),
        )

    graphs, _ = _split(*nnx.eval_shape(lambda: _modules(config, key)))
    abstract = jax.eval_shape(init_state)
    shardings = sharding.state_shardings(mesh, abstract, sharding.rules_from_config(config.mesh.get("rules")))
    return StateSetup(graphs, tx_gen, tx_disc, sharding.with_shardings(abstract, shardings), shardings,
                      lambda: sharding.sharded_init(init_state, shardings))


def jit_train_step(config: ml_collections.ConfigDict, mesh, setup: StateSetup, lpips_graph, has_lpips: bool):
    """`train_step` jitted with the state's shardings in and out, the batch split over the data axes, and
    the state donated."""
    repl = sharding.replicated(mesh)
    jitted = jax.jit(
        partial(train_step, graphs=setup.graphs, lpips_graph=lpips_graph, config=config,
                tx_gen=setup.tx_gen, tx_disc=setup.tx_disc),
        in_shardings=(setup.shardings, {"image": sharding.batch_sharding(mesh)}, repl if has_lpips else None),
        out_shardings=(setup.shardings, repl),
        donate_argnums=(0,),
    )
    return sharding.MeshJit(jitted, mesh, sharding.rules_from_config(config.mesh.get("rules")))


def load_perceptual(config: ml_collections.ConfigDict):
    """The frozen LPIPS network as (graph, state), or (None, None) when its weight is 0."""
    if config.loss.perceptual_weight <= 0:
        return None, None
    from rq_jax.models.lpips import load_lpips

    lp = load_lpips(os.path.expanduser(config.loss.lpips_path))
    return nnx.split(lp)


def make_optimizer(lr: float, tc: ml_collections.ConfigDict, warmup: int):
    """Adam(b1, b2) with linear warm-up to a constant learning rate, optional clipping and decay."""
    schedule = optax.linear_schedule(0.0, lr, max(warmup, 1)) if warmup > 0 else optax.constant_schedule(lr)
    parts = []
    if tc.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(tc.grad_clip))
    parts.append(optax.adamw(schedule, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay))
    return optax.chain(*parts), schedule


def steps_for(config: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[int, int]:
    """(total steps, warm-up steps) from epochs unless given in steps."""
    tc = config.train
    total = tc.num_steps if tc.num_steps > 0 else int(round(tc.num_epochs * steps_per_epoch))
    warmup = tc.warmup_steps if tc.warmup_steps > 0 else int(round(tc.warmup_epochs * steps_per_epoch))
    return max(total, 1), max(warmup, 0)


# ---------------------------------------------------------------------------------------------------
# 2. The pure train step
# ---------------------------------------------------------------------------------------------------
def _conv_kernel_grad(h_BxHxWxC: jax.Array, kernel: jax.Array, cot_BxHxWxO: jax.Array) -> jax.Array:
    """Gradient w.r.t. a 3x3 'SAME' conv kernel of <conv(h, kernel), cot>: the last layer's weight grad."""
    def conv(k):
        return jax.lax.conv_general_dilated(
            h_BxHxWxC, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    return jax.vjp(conv, kernel)[1](cot_BxHxWxO.astype(h_BxHxWxC.dtype))[0]


def train_step(state: dict, batch: dict, lpips_state: Any, *, graphs, lpips_graph, config, tx_gen, tx_disc):
    """One generator and one discriminator update. Pure: returns the new state and scalar metrics."""
    gen_graph, disc_graph = graphs
    lc = config.loss
    x = batch["image"]
    rng = jax.random.wrap_key_data(state["rng"])
    rng, r_fwd = jax.random.split(rng)
    disc_on = state["step"] >= lc.disc_start
    d_loss_fn = losses.hinge_d_loss if lc.disc_loss == "hinge" else losses.vanilla_d_loss

    def perceptual(a, b):
        if lpips_graph is None:
            return jnp.float32(0.0)
        return jnp.mean(nnx.merge(lpips_graph, lpips_state)(a, b))

    def disc_logits(params, images):
        disc = nnx.merge(disc_graph, params, state["disc_stats"])
        return disc(images)

    def gen_loss(params):
        model = nnx.merge(gen_graph, params, state["codebook"])
        recon, out, new_cb, h = model.forward_train(x, r_fwd, return_last_features=True)
        rec = losses.reconstruction_loss(x, recon, lc.recon)

        def nll_fn(r):
            return losses.reconstruction_loss(x, r, lc.recon) + lc.perceptual_weight * perceptual(x, r)

        def g_fn(r):
            return losses.generator_adv_loss(disc_logits(state["disc"], r))

        nll, nll_vjp = jax.vjp(nll_fn, recon)

        def with_adv(_):
            g, g_vjp = jax.vjp(g_fn, recon)
            if lc.adaptive_weight:
                kernel = jax.lax.stop_gradient(model.last_layer_kernel[...])
                hs = jax.lax.stop_gradient(h)
                d_nll = jax.lax.stop_gradient(nll_vjp(jnp.ones_like(nll))[0])
                d_g = jax.lax.stop_gradient(g_vjp(jnp.ones_like(g))[0])
                w = losses.adaptive_generator_weight(
                    _conv_kernel_grad(hs, kernel, d_nll), _conv_kernel_grad(hs, kernel, d_g)
                )
            else:
                w = jnp.float32(1.0)
            return lc.adv_weight * w * g, g, w

        zero = jnp.float32(0.0)
        adv, g, w = jax.lax.cond(disc_on, with_adv, lambda _: (zero, zero, zero), None)
        loss = nll + lc.beta * out.commit_loss + adv
        aux = dict(recon=recon, codes=out.codes, codebook=new_cb, rec_loss=rec, nll=nll,
                   commit_loss=out.commit_loss, g_loss=g, adaptive_weight=w)
        return loss, aux

    (loss, aux), grads = jax.value_and_grad(gen_loss, has_aux=True)(state["gen"])
    updates, gen_opt = tx_gen.update(grads, state["gen_opt"], state["gen"])
    gen = optax.apply_updates(state["gen"], updates)
    # The new codebook: write the EMA-updated CodebookState back into the codebook variable state.
    model = nnx.merge(gen_graph, gen, state["codebook"])
    model.set_codebook(aux["codebook"])
    codebook = nnx.state(model, CodebookVar)

    fake = jax.lax.stop_gradient(aux["recon"])

    def disc_update(_):
        def d_loss(params):
            disc = nnx.merge(disc_graph, params, state["disc_stats"])
            real_logits = disc(x)
            fake_logits = disc(fake)  # separate calls: each batch gets its own BatchNorm statistics
            _, _, stats = nnx.split(disc, nnx.Param, ...)
            return d_loss_fn(real_logits, fake_logits), (stats, jnp.mean(real_logits), jnp.mean(fake_logits))

        (dl, (stats, lr_, lf_)), dg = jax.value_and_grad(d_loss, has_aux=True)(state["disc"])
        d_updates, d_opt = tx_disc.update(dg, state["disc_opt"], state["disc"])
        return optax.apply_updates(state["disc"], d_updates), d_opt, stats, dl, lr_, lf_

    def no_disc(_):
        zero = jnp.float32(0.0)
        return state["disc"], state["disc_opt"], state["disc_stats"], zero, zero, zero

    disc, disc_opt, disc_stats, d_loss, logits_real, logits_fake = jax.lax.cond(disc_on, disc_update, no_disc, None)

    usage = codebook_usage(aux["codes"], config.model.codebook_size)
    mse = jnp.mean(jnp.square(fake - x), axis=(1, 2, 3))
    m = dict(
        loss=loss, rec_loss=aux["rec_loss"], nll=aux["nll"], commit_loss=aux["commit_loss"],
        g_loss=aux["g_loss"], adaptive_weight=aux["adaptive_weight"], d_loss=d_loss,
        logits_real=logits_real, logits_fake=logits_fake, psnr=jnp.mean(10 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))),
        grad_norm=optax.global_norm(grads), dead_codes_ema=ema_dead_codes(aux["codebook"]),
    )
    for d in range(usage["usage"].shape[0]):
        m[f"codebook/usage_d{d}"] = usage["usage"][d]
        m[f"codebook/perplexity_d{d}"] = usage["perplexity"][d]
    new_state = dict(
        step=state["step"] + 1, gen=gen, gen_opt=gen_opt, codebook=codebook, disc=disc,
        disc_stats=disc_stats, disc_opt=disc_opt, rng=jax.random.key_data(rng),
    )
    return new_state, m


# ---------------------------------------------------------------------------------------------------
# 3. Evaluation and images
# ---------------------------------------------------------------------------------------------------
def eval_step(state: dict, images: jax.Array, *, gen_graph) -> dict:
    """Reconstructions with the frozen codebook, their codes and the coarse-to-fine partial decodes."""
    model = nnx.merge(gen_graph, state["gen"], state["codebook"])
    codes = model.encode(images)
    partial_recons = [model.decode_partial(codes, d) for d in range(1, model.depth + 1)]
    return dict(recon=partial_recons[-1], codes=codes, partial=jnp.stack(partial_recons))


def evaluate(state, batches, eval_fn, num_codes: int) -> tuple[dict, dict]:
    """Held-out PSNR (per decoding depth) and codebook usage; returns (scalars, first batch's arrays)."""
    psnrs, codes, first = [], [], None
    for b in batches:
        out = jax.device_get(eval_fn(state, jnp.asarray(b["image"])))
        first = first or dict(image=np.asarray(b["image"]), **out)
        psnrs.append(np.stack([metrics.psnr(b["image"], p) for p in out["partial"]]))
        codes.append(out["codes"])
    p = np.concatenate(psnrs, axis=1).mean(axis=1)
    usage = jax.device_get(codebook_usage(jnp.asarray(np.concatenate(codes)), num_codes))
    scalars = {"eval/psnr": p[-1]}
    scalars.update({f"eval/psnr_depth{d + 1}": v for d, v in enumerate(p)})
    scalars.update({f"eval/codebook_usage_d{d}": v for d, v in enumerate(usage["usage"])})
    scalars.update({f"eval/perplexity_d{d}": v for d, v in enumerate(usage["perplexity"])})
    return scalars, first


def write_images(workdir: str, step: int, arrays: dict, n: int = 8) -> str:
    """inputs / reconstruction / coarse-to-fine (depth 1..D) rows for n held-out images."""
    rows = [arrays["image"][:n]] + [p[:n] for p in arrays["partial"]]
    path = os.path.join(workdir, "images", f"recon_{step:08d}.png")
    upscale = max(1, 128 // arrays["image"].shape[1])
    return metrics.save_png(path, metrics.image_grid(rows), upscale=upscale)


# ---------------------------------------------------------------------------------------------------
# 4. The loop
# ---------------------------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains stage 1 in `workdir` (resuming if it holds checkpoints); returns the last eval scalars."""
    check_known_keys(config, rqvae_config())
    os.makedirs(workdir, exist_ok=True)
    tc = config.train
    mesh = sharding.mesh_from_run_config(config.mesh)
    dp = sharding.data_parallel_size(mesh)
    if tc.batch_size % dp or tc.batch_size % jax.process_count():
        raise ValueError(
            f"config.train.batch_size={tc.batch_size} must be divisible by the {dp} data-parallel devices "
            f"and {jax.process_count()} processes."
        )
    local_bs = tc.batch_size // jax.process_count()
    data_iter, info = build_image_pipeline(config.data, split="train", batch_size=local_bs, seed=config.seed)
    eval_set, _ = eval_batches(config.data, batch_size=min(local_bs, 32), num_batches=tc.eval_batches)
    total, warmup = steps_for(config, info.steps_per_epoch)
    metrics.log_line(f"data: {info.description}; {info.num_examples} training images, {total} steps")

    tx_gen, lr_gen = make_optimizer(tc.lr, tc, warmup)
    tx_disc, _ = make_optimizer(tc.disc_lr, tc, warmup)
    lpips_graph, lpips_state = load_perceptual(config)
    setup = setup_state(config, mesh, tx_gen, tx_disc)
    ckpt = checkpoints.Checkpointer(workdir, max_to_keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
    state, start, how = checkpoints.restore_or_init(
        ckpt, setup.abstract, setup.init, data_iter,
        init_from=config.init_from, init_from_keys=("gen", "codebook", "disc", "disc_stats"),
    )
    metrics.log_line(f"state: {how} (step {start}); {sharding.describe(mesh, setup.shardings, setup.abstract)}")
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    step_fn = jit_train_step(config, mesh, setup, lpips_graph, lpips_state is not None)
    gen_graph = setup.graphs[0]
    eval_fn = jax.jit(partial(eval_step, gen_graph=gen_graph))
    writer = metrics.create_writer(workdir)
    progress = metrics.Progress(total, start)
    guard = checkpoints.PreemptionGuard()
    last_saved, scalars = start if ckpt.latest_step() is not None else None, {}
    peak, flops = metrics.peak_flops(jax.devices()[0], tc.peak_flops), None  # MFU on accelerators only
    step, pending = start, []
    try:
        while step < total:
            local = next(data_iter)
            batch = sharding.global_batch(mesh, {"image": local["image"]})
            state, m = step_fn(state, batch, lpips_state)
            pending.append(m)  # device arrays: no host sync until the log step
            step += 1
            if step % tc.log_every == 0 or step == total:
                m = metrics.mean_finite(pending, step, last_saved, ckpt.directory,
                                        "lower config.train.lr or enable config.train.grad_clip and restart.")
                m["lr"] = float(lr_gen(step))
                m["skipped_images"] = info.skipped.count
                line = progress.line(step, {k: m[k] for k in ("loss", "rec_loss", "commit_loss", "psnr", "d_loss")})
                if peak and flops is None:
                    flops = metrics.step_flops(step_fn, state, batch, lpips_state) or 0.0
                m["steps_per_sec"] = progress.last_rate
                m.update(metrics.throughput(progress.last_rate, examples_per_step=tc.batch_size, flops_per_step=flops,
                                            peak_per_device=peak, num_devices=mesh.size))
                writer.write_scalars(step, m)
                metrics.log_line(line + (f" | {m['mfu']:.1%} MFU" if "mfu" in m else ""))
            if step % tc.eval_every == 0 or step == total:
                scalars, arrays = evaluate(state, eval_set, eval_fn, config.model.codebook_size)
                writer.write_scalars(step, scalars)
                if jax.process_index() == 0 and (step % tc.image_every == 0 or step == total):
                    path = write_images(workdir, step, arrays)
                    writer.write_images(step, {"recon": metrics.image_grid(
                        [arrays["image"][:8]] + [p[:8] for p in arrays["partial"]])[None]})
                    metrics.log_line(f"eval step {step}: PSNR {scalars['eval/psnr']:.2f} dB; images {path}")
            stop = guard.should_stop(step)
            if step % tc.checkpoint_every == 0 or step == total or stop:
                ckpt.save(step, state, data_iter, force=True)
                last_saved = step
            if stop:
                metrics.log_line(f"preempted: saved step {step} to {ckpt.directory}; rerun the same command to resume")
                break
    finally:
        ckpt.close()
        guard.restore()
        writer.flush()
    if jax.process_index() == 0 and scalars:
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump({k: float(v) for k, v in scalars.items()} | {"step": step}, f, indent=2)
    return {k: float(v) for k, v in scalars.items()}

