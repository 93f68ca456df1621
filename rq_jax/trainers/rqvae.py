"""Stage-1 trainer: RQ-VAE with L1/L2 + commitment + LPIPS + PatchGAN losses (paper Sec. 4, App. A).

Read top to bottom:
  1. setup: mesh, data, models, optimizers and the train state (a plain dict pytree);
  2. the pure train step: (state, batch, lpips) -> (state, metrics) from a few pure pieces:
     `generator_loss` (with `adversarial_loss` and its adaptive weight), `apply_generator` (Adam and
     the EMA codebook write-back), `discriminator_update`, `step_metrics`; jitted with explicit
     shardings, state donated, traced and called under `jax.set_mesh`;
  3. evaluation: held-out PSNR and codebook usage, image grids (inputs, reconstructions,
     coarse-to-fine partial reconstructions);
  4. the loop: resume (workdir -> config.init_from -> scratch), then `trainers.loop.run` (progress
     lines, periodic evaluation, checkpoints of the state and the data iterator, SIGTERM saves and
     exits, a NaN/Inf loss stops the run with the last good checkpoint intact).
"""

from __future__ import annotations

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
from rq_jax.models.abstract import ref_rngs
from rq_jax.models.conv import conv_general_dilated
from rq_jax.models.discriminator import NLayerDiscriminator
from rq_jax.models.rqvae import RQVAE, CodebookVar
from rq_jax.quantizer import codebook_usage, ema_dead_codes
from rq_jax.trainers import loop


# ---------------------------------------------------------------------------------------------------
# 1. Setup
# ---------------------------------------------------------------------------------------------------
def _modules(config: ml_collections.ConfigDict, rng: jax.Array) -> tuple[RQVAE, NLayerDiscriminator]:
    r_gen, r_disc = jax.random.split(rng)
    model = RQVAE(config.model, rngs=ref_rngs(r_gen))
    disc = NLayerDiscriminator(
        config.model.out_channels, config.loss.disc_ndf, config.loss.disc_layers,
        norm=config.loss.disc_norm, rngs=ref_rngs(r_disc),
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
    graphs_seen = []  # the (static) graphs, kept from the one abstract trace below instead of a second build

    def init_state():
        graphs, parts = build_models(config, key)
        graphs_seen.append(graphs)
        return dict(
            step=jnp.zeros((), jnp.int32), gen=parts["gen"], gen_opt=tx_gen.init(parts["gen"]),
            codebook=parts["codebook"], disc=parts["disc"], disc_stats=parts["disc_stats"],
            disc_opt=tx_disc.init(parts["disc"]), rng=jax.random.key_data(jax.random.fold_in(key, 1)),
        )

    abstract = jax.eval_shape(init_state)
    graphs = graphs_seen[0]
    shardings = sharding.state_shardings(mesh, abstract, sharding.rules_from_config(config.mesh.get("rules")))
    return StateSetup(graphs, tx_gen, tx_disc, sharding.with_shardings(abstract, shardings), shardings,
                      lambda: sharding.sharded_init(init_state, shardings))


def jit_train_step(config: ml_collections.ConfigDict, mesh, setup: StateSetup, lpips_graph, has_lpips: bool):
    """`train_step` jitted with the state's shardings in and out, the batch split over the data axes, and
    the state donated. Trace, call and lower it under `with jax.set_mesh(mesh):`."""
    repl = sharding.replicated(mesh)
    return jax.jit(
        partial(train_step, graphs=setup.graphs, lpips_graph=lpips_graph, config=config,
                tx_gen=setup.tx_gen, tx_disc=setup.tx_disc),
        in_shardings=(setup.shardings, {"image": sharding.batch_sharding(mesh)}, repl if has_lpips else None),
        out_shardings=(setup.shardings, repl),
        donate_argnums=(0,),
    )


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
        return conv_general_dilated(  # its kernel gradient is fast on CPU
            h_BxHxWxC, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    return jax.vjp(conv, kernel)[1](cot_BxHxWxO.astype(h_BxHxWxC.dtype))[0]


def perceptual_loss(lpips_graph, lpips_state, a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean LPIPS distance of two image batches; 0 without a perceptual network."""
    if lpips_graph is None:
        return jnp.float32(0.0)
    return jnp.mean(nnx.merge(lpips_graph, lpips_state)(a, b))


def adversarial_loss(state: dict, recon: jax.Array, nll: jax.Array, nll_vjp: Callable, h: jax.Array,
                     kernel: jax.Array, *, disc_graph, lc) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(adv_weight * w * g, g, w): the generator's GAN loss g on the reconstruction and its adaptive weight w,
    the ratio of the NLL's and g's gradient norms at the decoder's last layer (from its input h)."""
    def g_fn(r):
        # copy=True: fresh Variables of this trace; BatchNorm (the official discriminator) writes its running
        # statistics in training mode, and writing the state's own Variables from inside vjp and cond is a
        # TraceContextError. The generator pass's statistics are dropped, as only the discriminator's own
        # update keeps them.
        disc = nnx.merge(disc_graph, state["disc"], state["disc_stats"], copy=True)
        return losses.generator_adv_loss(disc(r))

    g, g_vjp = jax.vjp(g_fn, recon)
    w = jnp.float32(1.0)
    if lc.adaptive_weight:
        kernel, hs = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(h)
        d_nll = jax.lax.stop_gradient(nll_vjp(jnp.ones_like(nll))[0])
        d_g = jax.lax.stop_gradient(g_vjp(jnp.ones_like(g))[0])
        w = losses.adaptive_generator_weight(_conv_kernel_grad(hs, kernel, d_nll), _conv_kernel_grad(hs, kernel, d_g))
    return lc.adv_weight * w * g, g, w


def generator_loss(params: Any, state: dict, x: jax.Array, rng: jax.Array, lpips_state: Any, *, graphs,
                   lpips_graph, lc) -> tuple[jax.Array, dict]:
    """(loss, aux): reconstruction + perceptual NLL, beta * commitment, and (once the discriminator is on)
    the adaptively weighted GAN loss; aux holds the reconstruction, codes and the EMA-updated codebook."""
    gen_graph, disc_graph = graphs
    model = nnx.merge(gen_graph, params, state["codebook"])
    fwd = model.forward_train(x, rng)
    rec = losses.reconstruction_loss(x, fwd.recon, lc.recon)

    def nll_fn(r):
        return losses.reconstruction_loss(x, r, lc.recon) + lc.perceptual_weight * perceptual_loss(
            lpips_graph, lpips_state, x, r)

    nll, nll_vjp = jax.vjp(nll_fn, fwd.recon)
    kernel, zero = model.last_layer_kernel[...], jnp.float32(0.0)
    adv, g, w = jax.lax.cond(
        state["step"] >= lc.disc_start,
        lambda _: adversarial_loss(state, fwd.recon, nll, nll_vjp, fwd.last_features, kernel, disc_graph=disc_graph,
                                   lc=lc),
        lambda _: (zero, zero, zero), None)
    loss = nll + lc.beta * fwd.rq.commit_loss + adv
    aux = dict(recon=fwd.recon, codes=fwd.rq.codes, codebook=fwd.codebook, rec_loss=rec, nll=nll,
               commit_loss=fwd.rq.commit_loss, g_loss=g, adaptive_weight=w)
    return loss, aux


def apply_generator(state: dict, grads: Any, codebook: Any, *, gen_graph, tx_gen) -> tuple[Any, Any, Any]:
    """(params, Adam state, codebook variable state) after one generator update and the EMA codebook write."""
    updates, gen_opt = tx_gen.update(grads, state["gen_opt"], state["gen"])
    gen = optax.apply_updates(state["gen"], updates)
    model = nnx.merge(gen_graph, gen, state["codebook"])
    model.set_codebook(codebook)  # the EMA-updated CodebookState back into the codebook variable state
    return gen, gen_opt, nnx.state(model, CodebookVar)


def discriminator_update(state: dict, x: jax.Array, fake: jax.Array, *, disc_graph, tx_disc, lc) -> tuple:
    """(params, Adam state, batch stats, d_loss, mean real logit, mean fake logit) after one discriminator
    step, or the unchanged state and zeros before `disc_start`."""
    d_loss_fn = losses.hinge_d_loss if lc.disc_loss == "hinge" else losses.vanilla_d_loss

    def d_loss(params):
        disc = nnx.merge(disc_graph, params, state["disc_stats"], copy=True)  # BatchNorm writes (see g_fn)
        real_logits = disc(x)
        fake_logits = disc(fake)  # separate calls: each batch gets its own BatchNorm statistics
        _, _, stats = nnx.split(disc, nnx.Param, ...)
        return d_loss_fn(real_logits, fake_logits), (stats, jnp.mean(real_logits), jnp.mean(fake_logits))

    def update(_):
        (dl, (stats, lr_, lf_)), dg = jax.value_and_grad(d_loss, has_aux=True)(state["disc"])
        d_updates, d_opt = tx_disc.update(dg, state["disc_opt"], state["disc"])
        return optax.apply_updates(state["disc"], d_updates), d_opt, stats, dl, lr_, lf_

    def skip(_):
        zero = jnp.float32(0.0)
        return state["disc"], state["disc_opt"], state["disc_stats"], zero, zero, zero

    return jax.lax.cond(state["step"] >= lc.disc_start, update, skip, None)


def step_metrics(loss: jax.Array, aux: dict, grads: Any, x: jax.Array, fake: jax.Array, disc_out: tuple,
                 num_codes: int) -> dict:
    """The step's scalars: losses, logits, PSNR, gradient norm, EMA dead codes, per-depth usage/perplexity."""
    d_loss, logits_real, logits_fake = disc_out[3:]
    usage = codebook_usage(aux["codes"], num_codes)
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
    return m


def train_step(state: dict, batch: dict, lpips_state: Any, *, graphs, lpips_graph, config, tx_gen, tx_disc):
    """One generator and one discriminator update. Pure: returns the new state and scalar metrics.

    The run's logical-axis rules are entered here, inside the traced body (call it under `jax.set_mesh`)."""
    with sharding.axis_rules(sharding.rules_from_config(config.mesh.get("rules"))):
        lc, x = config.loss, batch["image"]
        rng = jax.random.wrap_key_data(state["rng"])
        rng, r_fwd = jax.random.split(rng)
        (loss, aux), grads = jax.value_and_grad(
            partial(generator_loss, graphs=graphs, lpips_graph=lpips_graph, lc=lc), has_aux=True,
        )(state["gen"], state, x, r_fwd, lpips_state)
        gen, gen_opt, codebook = apply_generator(state, grads, aux["codebook"], gen_graph=graphs[0], tx_gen=tx_gen)
        fake = jax.lax.stop_gradient(aux["recon"])
        disc_out = discriminator_update(state, x, fake, disc_graph=graphs[1], tx_disc=tx_disc, lc=lc)
        m = step_metrics(loss, aux, grads, x, fake, disc_out, config.model.codebook_size)
        disc, disc_opt, disc_stats = disc_out[:3]
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
class Evaluation:
    """The periodic evaluation action: held-out scalars to TensorBoard, image grids every `image_every`
    steps (process 0); keeps the last scalars for eval.json."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, eval_set: list, eval_fn: Callable,
                 writer: Any, total: int):
        self.config, self.workdir, self.eval_set, self.eval_fn = config, workdir, eval_set, eval_fn
        self.writer, self.total, self.scalars = writer, total, {}

    def __call__(self, step: int, state: dict) -> None:
        self.scalars, arrays = evaluate(state, self.eval_set, self.eval_fn, self.config.model.codebook_size)
        self.writer.write_scalars(step, self.scalars)
        if jax.process_index() == 0 and loop.due(step, self.config.train.image_every, self.total):
            path = write_images(self.workdir, step, arrays)
            self.writer.write_images(step, {"recon": metrics.image_grid(
                [arrays["image"][:8]] + [p[:8] for p in arrays["partial"]])[None]})
            metrics.log_line(f"eval step {step}: PSNR {self.scalars['eval/psnr']:.2f} dB; images {path}")


def check_batch_size(batch_size: int, mesh) -> None:
    """The global batch must split evenly over the data-parallel devices and the processes."""
    dp = sharding.data_parallel_size(mesh)
    if batch_size % dp or batch_size % jax.process_count():
        raise ValueError(
            f"config.train.batch_size={batch_size} must be divisible by the {dp} data-parallel devices "
            f"and {jax.process_count()} processes."
        )


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains stage 1 in `workdir` (resuming if it holds checkpoints); returns the last eval scalars."""
    check_known_keys(config, rqvae_config())
    os.makedirs(workdir, exist_ok=True)
    tc = config.train
    mesh = sharding.mesh_from_run_config(config.mesh)
    check_batch_size(tc.batch_size, mesh)
    local_bs = tc.batch_size // jax.process_count()
    data_iter, info = build_image_pipeline(config.data, split="train", batch_size=local_bs, seed=config.seed)
    eval_set, _ = eval_batches(config.data, batch_size=min(local_bs, 32), num_batches=tc.eval_batches)
    total, warmup = steps_for(config, info.steps_per_epoch)
    unreadable = f" ({info.skipped.count} unreadable found so far: skipped, counted in TensorBoard)" \
        if info.skipped.count else ""
    metrics.log_line(f"data: {info.description}; {info.num_examples} training images{unreadable}, {total} steps")

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
    loop.write_run_config(config, workdir)

    writer = metrics.create_writer(workdir)
    evaluation = Evaluation(config, workdir, eval_set, jax.jit(partial(eval_step, gen_graph=setup.graphs[0])),
                            writer, total)
    log = loop.LogSpec(
        show=("loss", "rec_loss", "commit_loss", "psnr", "d_loss"),
        fix="lower config.train.lr or enable config.train.grad_clip and restart.",
        extra=lambda step: {"lr": float(lr_gen(step)), "skipped_images": info.skipped.count},
        examples_per_step=tc.batch_size,
    )
    _, step = loop.run(loop.Loop(
        total=total, mesh=mesh, step_fn=jit_train_step(config, mesh, setup, lpips_graph, lpips_state is not None),
        next_args=lambda: (sharding.global_batch(mesh, {"image": next(data_iter)["image"]}), lpips_state),
        ckpt=ckpt, data_iter=data_iter, writer=writer, log=log, log_every=tc.log_every,
        checkpoint_every=tc.checkpoint_every, actions=[loop.Action(tc.eval_every, evaluation)],
        stop_line="preempted: saved step {step} to {directory}; rerun the same command to resume",
        peak_flops=metrics.peak_flops(jax.devices()[0], tc.peak_flops),
    ), state, start)
    loop.write_eval_json(workdir, evaluation.scalars, step)
    return {k: float(v) for k, v in evaluation.scalars.items()}

