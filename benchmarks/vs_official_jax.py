"""The rq_jax side of benchmarks/vs_official.py, run in a child process of its own (`--side rq_jax`).

With the official side, the models hold the official state dicts the official child wrote (converted with
`rq_jax.convert`, as `python -m rq_jax.convert official` does); without it, random weights from the rq_jax configs.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from benchmarks.vs_official import REPO, Side, Work, fixed_codes, images, logit_outputs, official_yaml
from rq_jax.config_lib import load_config_file
from rq_jax.eval.io import jit_module_fn
from rq_jax.models.abstract import abstract_module
from rq_jax.models.rq_transformer import RQTransformer
from rq_jax.models.rqvae import RQVAE, CodebookVar
from rq_jax.models.weight_dtype import with_weight_dtype
from rq_jax.sampling import SamplingConfig, sample_codes


def _on_device(module: nnx.Module) -> nnx.Module:
    graph, state = nnx.split(module)
    return nnx.merge(graph, jax.tree.map(jnp.asarray, state))


def _part(weights: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: weights[k] for k in weights if k.startswith(prefix)}


def rqvae_from_official(sd: dict[str, np.ndarray], yaml_cfg: dict, dtype: str = "float32"
                        ) -> tuple[RQVAE, ml_collections.ConfigDict]:
    """The rq_jax RQ-VAE holding an official state dict (and its config), computing in `dtype`."""
    from rq_jax.convert.official_rqvae_config import stage1_config_from_official
    from rq_jax.convert.official_weights import convert_stage1

    config, _ = stage1_config_from_official({k: v.shape for k, v in sd.items()}, yaml_cfg)
    state = convert_stage1(sd, config).state
    config.model.dtype = dtype  # activations only: the parameters stay float32
    graph = nnx.split(abstract_module(lambda rngs: RQVAE(config.model, rngs=rngs)), nnx.Param, CodebookVar)[0]
    return _on_device(nnx.merge(graph, state["gen"], state["codebook"])), config


def transformer_from_official(sd: dict[str, np.ndarray], yaml_cfg: dict, stage1_config: ml_collections.ConfigDict
                              ) -> RQTransformer:
    from rq_jax.convert.official_transformer_config import stage2_config_from_official
    from rq_jax.convert.official_weights import convert_stage2

    config, _ = stage2_config_from_official({k: v.shape for k, v in sd.items()}, yaml_cfg, stage1_config)
    state = convert_stage2(sd, config).state
    graph = nnx.graphdef(abstract_module(lambda rngs: RQTransformer(config.model, rngs=rngs)))
    return _on_device(nnx.merge(graph, state["params"]))


def build(work: Work, args: argparse.Namespace, weights: Mapping[str, np.ndarray] | None) -> Side:
    """The timed rq_jax call of `work` and its outputs (the official weights if `weights`, else random ones)."""
    config = load_config_file(str(REPO / work.config))
    stage1_config = config.get("rqvae", config)
    if work.kind in ("codec", "step"):
        if weights is not None:
            yaml1 = official_yaml(args.official_repo, work.stage1_yaml)
            model, stage1_config = rqvae_from_official(_part(weights, "s1/"), yaml1, args.rqvae_dtype)
        else:
            stage1_config.model.dtype = args.rqvae_dtype
            model = RQVAE(stage1_config.model, rngs=nnx.Rngs(0))
        x = images(work.batch, int(stage1_config.model.resolution))
        if work.kind == "codec":
            return _codec(model, x)
        return _step(model, x, float(stage1_config.loss.beta), str(stage1_config.loss.recon))
    if work.shrink:
        d, spatial, depth, heads = work.shrink
        config.model.update(d_model=d, spatial_layers=spatial, depth_layers=depth, num_heads=heads)
    if weights is not None:
        vae, stage1_config = rqvae_from_official(_part(weights, "s1/"), official_yaml(args.official_repo,
                                                                                      work.stage1_yaml))
        yaml2 = official_yaml(args.official_repo, work.stage2_yaml, work.shrink)
        model = transformer_from_official(_part(weights, "s2/"), yaml2, stage1_config)
    else:
        vae = abstract_module(lambda rngs: RQVAE(stage1_config.model, rngs=rngs))
        model = RQTransformer(config.model, rngs=nnx.Rngs(0))
        vae.set_codebook(jax.tree.map(lambda a: jax.random.normal(jax.random.key(1), a.shape, a.dtype),
                                      vae.codebook_state))
    return _sample(model, vae, config, work.batch, args.sample_dtype, compare=weights is not None)


def _codec(model: RQVAE, x: np.ndarray) -> Side:
    def codec(m: RQVAE, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        codes = m.encode(x)
        return codes, m.decode(codes)

    fn = jit_module_fn(model, codec)
    return Side(lambda: jax.block_until_ready(fn(x)),
                lambda out: ({"codes": np.asarray(out[0]), "images": np.asarray(out[1])}, {}))


def _step(model: RQVAE, x: np.ndarray, beta: float, recon: str) -> Side:
    from rq_jax.losses import reconstruction_loss

    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, rest, x, rng):
        out = nnx.merge(graph, params, rest).forward_train(x, rng)
        return reconstruction_loss(x, out.recon, recon) + beta * out.rq.commit_loss, out.codebook

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    rng = jax.random.key(0)
    return Side(lambda: jax.block_until_ready(grad_fn(params, rest, x, rng)),
                lambda out: ({}, {"loss": float(out[0][0])}))


def _sample(model: RQTransformer, vae: RQVAE, config: ml_collections.ConfigDict, batch: int, sample_dtype: str,
            compare: bool) -> Side:
    cfg = SamplingConfig(temperature=1.0, top_k=config.sample.top_k, top_p=config.sample.top_p)
    codebook = jnp.asarray(vae.codebook_state.embedding_KxC)
    cond = None if model.cond_kind == "none" else jnp.arange(batch, dtype=jnp.int32) % int(config.model.num_classes)
    fast = with_weight_dtype(model, sample_dtype)
    key = jax.random.key(0)
    settings = f"top-k {cfg.top_k}, top-p {cfg.top_p}, weights {sample_dtype}"

    def extra():
        scalars = {"note": settings if sample_dtype == "float32" else (
            settings + "; " + weight_dtype_cost(model, fast, codebook, cond, batch, cfg))}
        if not compare:
            return {}, scalars
        codes = fixed_codes(batch, model.code_shape, int(codebook.shape[0]))
        logits = jit_module_fn(fast, lambda m, c: m(c, cond, codebook_KxC=codebook))(jnp.asarray(codes))
        return logit_outputs(codes, np.asarray(logits)), scalars

    return Side(lambda: jax.block_until_ready(sample_codes(fast, codebook, cond, key, batch=batch, cfg=cfg)),
                lambda _: ({}, {}), extra)


def weight_dtype_cost(model: RQTransformer, fast: RQTransformer, codebook: jax.Array, cond: jax.Array | None,
                      batch: int, cfg: SamplingConfig) -> str:
    """The quality cost of reduced-precision weights on a fixed seed: the largest |logit difference| over the
    float32 model's samples (teacher forced) and the fraction of sampled codes equal to float32 sampling's."""
    key = jax.random.key(0)
    codes = sample_codes(model, codebook, cond, key, batch=batch, cfg=cfg)
    codes_fast = sample_codes(fast, codebook, cond, key, batch=batch, cfg=cfg)
    logits = jit_module_fn(model, lambda m, c: m(c, cond, codebook_KxC=codebook))(codes)
    logits_fast = jit_module_fn(fast, lambda m, c: m(c, cond, codebook_KxC=codebook))(codes)
    diff = float(jnp.max(jnp.abs(logits - logits_fast)))
    scale = float(jnp.max(jnp.abs(logits)))
    agree = float(jnp.mean(codes == codes_fast))
    return f"max abs logit diff {diff:.3f} (max abs logit {scale:.1f}), codes equal float32's {agree:.1%}"
