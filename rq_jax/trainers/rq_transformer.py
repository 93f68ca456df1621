"""Stage-2 trainer: RQ-Transformer on stochastic codes with soft labels (paper Sec. 3.2.3, Table 5).

Read top to bottom:
  1. setup: the feature dataset (`python -m rq_jax.extract`), the frozen codebook, the model and
     AdamW (0.9, 0.95) with warm-up + cosine decay, weight decay on matmul kernels only;
  2. the pure train step: codes drawn from Q_tau(. | r) and soft labels computed from the features
     on the device at every step, cross-entropy against the soft labels (or one-hot / deterministic
     codes: config switches, so the paper's ablation can be run), optional condition dropout for
     classifier-free guidance; pieces: `code_loss` (one microbatch's loss), `microbatch_grads`,
     `accumulated_grads` (lax.scan over microbatches), then AdamW in `train_step`;
  2b. evaluation: validation NLL in bits per code and per-depth accuracy on deterministic codes (`eval_step`);
     the sample grids, decoded by the stage-1 decoder, are in `trainers/sample_grid.py`;
  3. the loop: resume, then `trainers.loop.run` with the validation (early stopping on the
     validation loss) and sampling actions: progress/ETA, checkpoints (state + data iterator),
     SIGTERM, NaN guard.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from functools import cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from rq_jax import checkpoints, metrics, sharding
from rq_jax.data.features import build_feature_pipeline, load_meta
from rq_jax.models.abstract import ref_rngs
from rq_jax.models.rq_transformer import RQTransformer
from rq_jax.trainers import loop
from rq_jax.trainers.sample_grid import sample_grid
from rq_jax.trainers.soft_labels import Targets, cross_entropy, draw_targets, set_temperature


# ---------------------------------------------------------------------------------------------------
# 1. Setup
# ---------------------------------------------------------------------------------------------------
def check_features(config: ml_collections.ConfigDict, meta: dict) -> None:
    """The extracted features must come from an RQ-VAE with this config's code shape and codebook."""
    want = (tuple(config.model.code_shape), int(config.model.vocab_size), int(config.model.embed_dim))
    have = (tuple(meta["code_shape"]), int(meta["codebook_size"]), int(meta["embed_dim"]))
    if want != have:
        raise ValueError(
            f"The features in {config.data.features_dir} come from an RQ-VAE with code shape {have[0]}, K={have[1]}, "
            f"n_z={have[2]}, but this config expects {want[0]}, K={want[1]}, n_z={want[2]}: extract features with "
            "the matching stage-1 run or fix config.rqvae.model."
        )
    if config.model.cond == "class" and meta["num_classes"] > config.model.num_classes:
        raise ValueError(
            f"The dataset has {meta['num_classes']} classes but config.model.num_classes="
            f"{config.model.num_classes}; raise it."
        )


def decay_mask(params: Any) -> Any:
    """Weight decay only on matmul kernels: not on norms, biases or embeddings."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: str(getattr(path[-2] if len(path) > 1 else path[-1], "key", "")) == "kernel"
        or str(getattr(path[-1], "key", "")) == "kernel",
        params,
    )


def make_optimizer(tc: ml_collections.ConfigDict, total: int):
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.lr, max(min(tc.warmup_steps, total - 1), 1), max(total, 2))
    parts = [optax.clip_by_global_norm(tc.grad_clip)] if tc.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule


class StateSetup(NamedTuple):
    """What the loop and the tests need to create, restore and step the train state on a mesh."""

    graph: Any
    tx: Any
    abstract: Any            # ShapeDtypeStructs with shardings (restore target)
    shardings: Any           # NamedShardings from the parameters' logical axes (optimizer state alike)
    init: Callable[[], Any]  # a fresh state, created already sharded


BATCH_KEYS = ("features", "label", "caption")


def setup_state(config: ml_collections.ConfigDict, mesh, tx) -> StateSetup:
    """The train state (step, params, AdamW state, PRNG key data): structure, shardings, sharded init."""
    graphs_seen = []  # the (static) graph, kept from the one abstract trace below instead of a second build

    def init_state():
        graph, params = nnx.split(RQTransformer(config.model, rngs=ref_rngs(config.seed)))
        graphs_seen.append(graph)
        return dict(step=jnp.zeros((), jnp.int32), params=params, opt=tx.init(params),
                    rng=jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1)))

    abstract = jax.eval_shape(init_state)
    graph = graphs_seen[0]
    shardings = sharding.state_shardings(mesh, abstract, sharding.rules_from_config(config.mesh.get("rules")))
    return StateSetup(graph, tx, sharding.with_shardings(abstract, shardings), shardings,
                      lambda: sharding.sharded_init(init_state, shardings))


def jit_train_step(config: ml_collections.ConfigDict, mesh, setup: StateSetup):
    """`train_step` jitted with explicit state/batch shardings and the state donated. Trace, call and lower it
    under `with jax.set_mesh(mesh):`."""
    repl = sharding.replicated(mesh)
    batch_sh = {k: sharding.batch_sharding(mesh) for k in BATCH_KEYS}
    return jax.jit(partial(train_step, graph=setup.graph, config=config, tx=setup.tx,
                             param_shardings=setup.shardings["params"]),
                     in_shardings=(setup.shardings, batch_sh, repl, repl), out_shardings=(setup.shardings, repl),
                     donate_argnums=(0,))


def _cond_of(config, batch, text_table):
    """Class ids [B], text tokens [B, L] looked up by caption index (-1: the empty caption, last row), or None."""
    if config.model.cond == "class":
        return batch["label"]
    if config.model.cond == "text":
        return text_table[batch["caption"]]
    return None


def build_text_table(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
    """Token ids [num_captions + 1, L] of the dataset's captions (last row: empty), and tokenizer.json in workdir."""
    from rq_jax.text import encode_texts, load_tokenizer, train_tokenizer

    path = os.path.join(config.data.features_dir, "captions.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: text conditioning needs a dataset with captions.")
    with open(path) as f:
        captions = json.load(f)
    out = os.path.join(workdir, "tokenizer.json")
    if config.text.tokenizer:
        tok = load_tokenizer(config.text.tokenizer)
        if jax.process_index() == 0 and hasattr(tok, "save"):
            tok.save(out)
    else:
        tok = train_tokenizer(captions, config.text.vocab_size, out if jax.process_index() == 0 else None)
    if tok.get_vocab_size() > config.model.text_vocab_size:
        raise ValueError(
            f"The tokenizer has {tok.get_vocab_size()} tokens but config.model.text_vocab_size="
            f"{config.model.text_vocab_size}; raise the model's text vocabulary or use a smaller tokenizer."
        )
    return encode_texts(tok, [*captions, ""], int(config.model.text_len))


# ---------------------------------------------------------------------------------------------------
# 2. The pure train step
# ---------------------------------------------------------------------------------------------------
def _microbatches(tree: Any, m: int) -> Any:
    """[B, ...] leaves -> [M, B/M, ...] with microbatch i = rows i, i+M, i+2M, ...: every device keeps an
    equal share of every microbatch (the batch dimension is split over the data axes in blocks)."""
    def split(x):
        if x.shape[0] % m:
            raise ValueError(f"config.train.batch_size={x.shape[0]} is not divisible by config.train.microbatches={m}.")
        return jnp.swapaxes(x.reshape(x.shape[0] // m, m, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, tree)


def text_loss(cond_logits: jax.Array, tokens_BxL: jax.Array, drop_B: jax.Array | None) -> jax.Array:
    """Next-text-token cross-entropy of the text tokens' outputs, averaged over the rows whose text was kept."""
    text_logp = jax.nn.log_softmax(cond_logits.astype(jnp.float32), axis=-1)
    ce_BxL = -jnp.take_along_axis(text_logp, tokens_BxL[:, 1:, None], axis=-1)[..., 0]
    keep_B = jnp.ones(ce_BxL.shape[:1]) if drop_B is None else 1.0 - drop_B.astype(jnp.float32)
    return jnp.sum(ce_BxL.mean(-1) * keep_B) / jnp.maximum(jnp.sum(keep_B), 1.0)


def code_loss(params: Any, targets: Targets, cond: Any, drop: Any, codebook_KxC: jax.Array, rng: jax.Array, *,
              graph, config) -> tuple[jax.Array, tuple]:
    """(loss, (nll, acc_D, target entropy_D in bits, target p_max_D)): cross-entropy against the targets (mixed
    with the text loss for text models with `text_loss_weight`), and the NLL / per-depth accuracy of the codes."""
    model = nnx.merge(graph, params)
    codes = targets.codes
    kw = dict(codebook_KxC=codebook_KxC, train=True, rng=rng, drop_cond=drop)
    text_w = float(config.train.get("text_loss_weight", 0.0)) if config.model.cond == "text" else 0.0
    out = model.forward_with_cond_logits(codes, cond, **kw) if text_w > 0 else None
    logits = out.logits if text_w > 0 else model(codes, cond, **kw)
    ce = cross_entropy(logits, targets, codebook_KxC)
    loss = jnp.mean(ce.loss)
    if text_w > 0:  # the text tokens' outputs predict the next token (rows whose text was dropped: not)
        loss = (1.0 - text_w) * loss + text_w * text_loss(out.cond_logits, cond, drop)
    picked = jnp.take_along_axis(logits, codes[..., None], axis=-1)[..., 0].astype(jnp.float32)
    nll = jnp.mean(jax.lax.stop_gradient(ce.logsumexp) - jax.lax.stop_gradient(picked))
    acc_D = jnp.mean((jnp.argmax(logits, -1) == codes).astype(jnp.float32), axis=(0, 1, 2))
    stats = (jnp.mean(ce.target_entropy, axis=(0, 1, 2)) / math.log(2.0), jnp.mean(ce.target_p_max, axis=(0, 1, 2)))
    return loss, (nll, acc_D, *stats)


def microbatch_grads(params: Any, mb: dict, rng: jax.Array, codebook_KxC: jax.Array, text_table: jax.Array, *,
                     graph, config, param_shardings: Any = None) -> tuple[tuple, Any]:
    """((loss, nll, acc_D, target entropy_D, target p_max_D), grads) of one microbatch: codes and targets
    drawn from its features, conditions dropped at random for classifier-free guidance."""
    r_codes, r_drop, r_model = jax.random.split(rng, 3)
    targets = draw_targets(config, mb["features"], codebook_KxC, r_codes, deterministic=False)
    cond = _cond_of(config, mb, text_table)
    drop = None
    if config.train.cond_drop_prob > 0 and cond is not None:
        drop = jax.random.bernoulli(r_drop, config.train.cond_drop_prob, (targets.codes.shape[0],))
    loss_fn = partial(code_loss, graph=graph, config=config)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, targets, cond, drop, codebook_KxC, r_model)
    if param_shardings is not None:
        grads = jax.lax.with_sharding_constraint(grads, param_shardings)
    return (loss, *aux), grads


def accumulated_grads(params: Any, batch: dict, rng: jax.Array, m: int, depth: int,
                      grads_fn: Callable) -> tuple[tuple, Any]:
    """`grads_fn(params, microbatch, rng)` over the whole batch (m == 1) or averaged over M microbatches in a
    `lax.scan` (activation memory / M; microbatch i gets the key fold_in(rng, i))."""
    if m == 1:
        return grads_fn(params, batch, rng)

    def body(acc, xs):
        mb, i = xs
        out, g = grads_fn(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(lambda a, b: a + b / m, acc, (out, g)), None

    zero_D = jnp.zeros((depth,), jnp.float32)
    zeros = ((jnp.float32(0), jnp.float32(0), zero_D, zero_D, zero_D), jax.tree.map(jnp.zeros_like, params))
    return jax.lax.scan(body, zeros, (_microbatches(batch, m), jnp.arange(m)))[0]


def train_step(state: dict, batch: dict, codebook_KxC: jax.Array, text_table: jax.Array, *, graph, config, tx,
               param_shardings: Any = None):
    """One AdamW step. With config.train.microbatches = M > 1 the gradient is accumulated over M slices of
    the batch in a `lax.scan` (activation memory / M; codes and labels drawn per slice). `param_shardings`
    (the parameters' NamedShardings) pins gradients to them, so with FSDP no device holds a whole gradient.
    The run's logical-axis rules are entered here, inside the traced body (call it under `jax.set_mesh`)."""
    with sharding.axis_rules(sharding.rules_from_config(config.mesh.get("rules"))):
        rng = jax.random.wrap_key_data(state["rng"])
        rng, r_step = jax.random.split(rng)
        grads_fn = partial(microbatch_grads, codebook_KxC=codebook_KxC, text_table=text_table, graph=graph,
                           config=config, param_shardings=param_shardings)
        m, depth = int(config.train.get("microbatches", 1)), int(config.model.code_shape[2])
        (loss, nll, acc_D, ent_D, pmax_D), grads = accumulated_grads(state["params"], batch, r_step, m, depth,
                                                                     grads_fn)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
    metrics_ = dict(loss=loss, nll=nll, bits_per_code=nll / math.log(2), grad_norm=optax.global_norm(grads))
    for d in range(acc_D.shape[0]):
        metrics_.update({f"acc_d{d}": acc_D[d], f"target_entropy_d{d}": ent_D[d], f"target_p_nearest_d{d}": pmax_D[d]})
    return dict(step=state["step"] + 1, params=params, opt=opt, rng=jax.random.key_data(rng)), metrics_


def eval_step(params, batch, codebook_KxC, text_table, *, graph, config):
    """Validation NLL (nats per code) and per-depth accuracy on deterministic codes, one-hot targets."""
    targets = draw_targets(config, batch["features"], codebook_KxC, None, deterministic=True)
    logits = nnx.merge(graph, params)(targets.codes, _cond_of(config, batch, text_table), codebook_KxC=codebook_KxC)
    nll = jnp.mean(cross_entropy(logits, targets, codebook_KxC).loss)
    return nll, jnp.mean((jnp.argmax(logits, -1) == targets.codes).astype(jnp.float32), axis=(0, 1, 2))


# ---------------------------------------------------------------------------------------------------
# 3. The loop
# ---------------------------------------------------------------------------------------------------
class Validation:
    """The periodic evaluation action: validation NLL / accuracy to TensorBoard and the log; asks the loop
    to stop after `early_stop_patience` evaluations without improvement. Keeps the last scalars."""

    def __init__(self, config: ml_collections.ConfigDict, val_batches: list, eval_fn: Callable, codebook, text_table,
                 writer: Any):
        self.config, self.val_batches, self.eval_fn, self.writer = config, val_batches, eval_fn, writer
        self.codebook, self.text_table = codebook, text_table
        self.best, self.bad_evals, self.scalars = float("inf"), 0, {}

    def _batch(self, b: dict) -> dict:
        """One host's validation batch; on several hosts their batches form one global batch (every process
        must feed the same program: a host-local array is taken to be the same everywhere)."""
        if jax.process_count() == 1:
            return {k: jnp.asarray(v) for k, v in b.items()}
        return sharding.global_batch(self.codebook.sharding.mesh, b)

    def __call__(self, step: int, state: dict) -> bool:
        outs = [jax.device_get(self.eval_fn(state["params"], self._batch(b), self.codebook, self.text_table))
                for b in self.val_batches]
        nll = float(np.mean([o[0] for o in outs]))
        acc = np.mean([o[1] for o in outs], axis=0)
        self.scalars = {"eval/nll": nll, "eval/bits_per_code": nll / math.log(2)}
        self.scalars.update({f"eval/acc_d{d}": float(a) for d, a in enumerate(acc)})
        self.writer.write_scalars(step, self.scalars)
        metrics.log_line(f"eval step {step}: {self.scalars['eval/bits_per_code']:.3f} bits/code "
                         f"(log2 K = {math.log2(self.config.model.vocab_size):.2f}), acc {np.round(acc, 3)}")
        if nll < self.best - 1e-4:
            self.best, self.bad_evals = nll, 0
        else:
            self.bad_evals += 1
        patience = self.config.train.early_stop_patience
        if patience > 0 and self.bad_evals >= patience:
            metrics.log_line(f"early stop at step {step}: no validation improvement in {self.bad_evals} evals")
            return True
        return False


def write_samples(step: int, state: dict, *, config: ml_collections.ConfigDict, workdir: str, graph, codebook,
                  text_table, rqvae_dir: str, num_classes: int, load_decoder: Callable[[str], Any]) -> None:
    """The periodic sampling action (when the stage-1 run is known): every process samples and decodes with the
    stage-1 decoder (`load_decoder(rqvae_dir)`: cache it, it is called at every sampling step); process 0 writes
    images/samples_<step>.png."""
    if not rqvae_dir:
        return
    decoder = load_decoder(rqvae_dir)  # on every process: orbax's restore synchronises the processes
    grid = sample_grid(nnx.merge(graph, state["params"]), codebook, decoder, config, jax.random.key(step),
                       num_classes, text_table)
    if jax.process_index() != 0:
        return
    path = metrics.save_png(os.path.join(workdir, "images", f"samples_{step:08d}.png"),
                            metrics.image_grid(list(grid)), upscale=max(1, 64 // grid.shape[2]))
    metrics.log_line(f"samples step {step}: {path}")


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains stage 2 in `workdir` (resuming if it holds checkpoints); returns the last eval scalars."""
    from rq_jax.config_lib import check_known_keys, rqvae_config, transformer_config
    from rq_jax.runs import load_rqvae

    check_known_keys(config, transformer_config(rqvae_config()))
    os.makedirs(workdir, exist_ok=True)
    tc = config.train
    meta = load_meta(config.data.features_dir)
    check_features(config, meta)
    mesh = sharding.mesh_from_run_config(config.mesh)
    repl = sharding.replicated(mesh)
    local_bs = tc.batch_size // jax.process_count()
    data_iter, src = build_feature_pipeline(config.data.features_dir, split="train", batch_size=local_bs,
                                            seed=config.seed)
    val_iter, _ = build_feature_pipeline(config.data.features_dir, split="validation",
                                         batch_size=min(local_bs, 64), train=False)
    val_batches = [{k: v for k, v in b.items() if k in BATCH_KEYS}
                   for _, b in zip(range(tc.eval_batches), val_iter, strict=False)]
    total = tc.num_steps if tc.num_steps > 0 else int(round(tc.num_epochs * max(len(src) // tc.batch_size, 1)))
    codebook = jax.device_put(jnp.asarray(src.codebook), repl)  # on the mesh, as the params
    metrics.log_line(f"data: {len(src)} training feature maps ({meta.get('dataset', '?')}), {total} steps")
    text_table = jax.device_put(jnp.asarray(build_text_table(config, workdir) if config.model.cond == "text"
                                            else np.zeros((1, 1), np.int32)), repl)
    set_temperature(config, src, workdir)

    tx, schedule = make_optimizer(tc, total)
    setup = setup_state(config, mesh, tx)
    ckpt = checkpoints.Checkpointer(workdir, max_to_keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
    state, start, how = checkpoints.restore_or_init(
        ckpt, setup.abstract, setup.init, data_iter, init_from=config.init_from, init_from_keys=("params",),
    )
    num_params = sum(x.size for x in jax.tree.leaves(setup.abstract["params"]))
    metrics.log_line(f"state: {how} (step {start}); {num_params:,} parameters; "
                     f"{sharding.describe(mesh, setup.shardings, setup.abstract)}")
    loop.write_run_config(config, workdir)

    writer = metrics.create_writer(workdir)
    validation = Validation(config, val_batches, jax.jit(partial(eval_step, graph=setup.graph, config=config)),
                            codebook, text_table, writer)
    samples = partial(write_samples, config=config, workdir=workdir, graph=setup.graph, codebook=codebook,
                      text_table=text_table, rqvae_dir=config.rqvae_workdir or meta.get("rqvae_workdir", ""),
                      num_classes=meta["num_classes"] if config.model.cond == "class" else 0,
                      load_decoder=cache(lambda d: load_rqvae(d)[0]))
    _, step = loop.run(loop.Loop(
        total=total, mesh=mesh, step_fn=jit_train_step(config, mesh, setup),
        next_args=lambda: (sharding.global_batch(mesh, {k: v for k, v in next(data_iter).items() if k in BATCH_KEYS}),
                           codebook, text_table),
        ckpt=ckpt, data_iter=data_iter, writer=writer, log=log_spec(config, schedule), log_every=tc.log_every,
        checkpoint_every=tc.checkpoint_every,
        actions=[loop.Action(tc.eval_every, validation), loop.Action(tc.sample_every, samples)],
        peak_flops=metrics.peak_flops(jax.devices()[0], tc.peak_flops),
    ), state, start)
    loop.write_eval_json(workdir, validation.scalars, step)
    return validation.scalars


def log_spec(config: ml_collections.ConfigDict, schedule: Callable) -> loop.LogSpec:
    """The progress line: loss, bits per code, depth-0 accuracy, the targets' entropy per depth, codes/s."""
    depth = int(config.model.code_shape[2])

    def suffix(m: dict) -> str:
        return (" | target H " + "/".join(f"{m[f'target_entropy_d{d}']:.2f}" for d in range(depth)) + " bits"
                + f" | {m['tokens_per_sec']:,.0f} codes/s")

    return loop.LogSpec(
        show=("loss", "bits_per_code", "acc_d0"), fix="lower config.train.lr.",
        extra=lambda step: {"lr": float(schedule(step))}, examples_per_step=config.train.batch_size,
        tokens_per_step=config.train.batch_size * int(np.prod(config.model.code_shape)), suffix=suffix,
    )

