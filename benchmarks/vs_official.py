"""rq_jax against the official PyTorch code on this machine, side by side: same models, same weights.

    python -m benchmarks.vs_official --official_repo ~/src/rq-vae-transformer          # every work
    python -m benchmarks.vs_official --official_repo ... --work codec step --repeats 3
    python -m benchmarks.vs_official --work codec sample_ffhq        # rq_jax only (no torch / no checkout)
    python -m benchmarks.vs_official --smoke                         # tiny models: the harness (test suite)

`--official_repo` is a checkout of kakaobrain/rq-vae-transformer (its `rqvae` package and `configs/`);
torch and omegaconf must be installed. Nothing is downloaded: both sides get random weights. With the
official side, its models are built from its released yaml (seed 0) and their state dicts are converted
into the rq_jax models with `rq_jax.convert` (the same functions as `python -m rq_jax.convert official`),
so both compute the same function; the table reports how closely (codes agreeing, max |image diff|).
Without it, the rq_jax models are built from the rq_jax config files with random weights.

Works (CPU float32 on both sides unless `--sample_dtype` / `--rqvae_dtype` say otherwise):
- `codec`: ImageNet 8x8x4 RQ-VAE, images -> codes -> images, batch 8, 256 px.
- `step`: the same RQ-VAE, forward (training mode: EMA codebook update) + backward of the yaml's reconstruction
  loss (MSE for ImageNet) + beta * commitment,
  batch 2; the official side as its yaml says (the ImageNet yaml turns its gradient checkpointing on).
- `sample_small` (480M yaml shrunk to 512-d, 6 + 2 layers, 8 heads), `sample_ffhq` (FFHQ 355M),
  `sample_in480m` (ImageNet 480M): codes for 8 images with KV caches, temperature 1, the rq_jax config's
  top-k / top-p on both sides; decoding excluded (it is `codec`'s second half).

Timing: every callable is called once to warm up (rq_jax: compilation; reported as "first call"), then the
two sides are timed in turn, `--repeats` times, and the medians compared ("ratio" = rq_jax / official).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from rq_jax.config_lib import load_config_file
from rq_jax.eval.io import jit_module_fn
from rq_jax.models.abstract import abstract_module
from rq_jax.models.rq_transformer import RQTransformer
from rq_jax.models.rqvae import RQVAE, CodebookVar
from rq_jax.models.weight_dtype import with_weight_dtype
from rq_jax.sampling import SamplingConfig, sample_codes

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Work:
    """One row: the rq_jax config file, the official yamls (relative to the official checkout), the batch."""

    kind: str  # "codec" | "step" | "sample"
    config: str  # rq_jax config file spec (PATH[:arg])
    stage1_yaml: str
    stage2_yaml: str = ""
    batch: int = 8
    shrink: tuple[int, int, int, int] | None = None  # (d_model, spatial layers, depth layers, heads)


IN_S1 = "configs/imagenet256/stage1/in256-rqvae-8x8x4.yaml"
WORKS = {
    "codec": Work("codec", "configs/rqvae/imagenet_8x8x4.py", IN_S1, batch=8),
    "step": Work("step", "configs/rqvae/imagenet_8x8x4.py", IN_S1, batch=2),
    "sample_small": Work("sample", "configs/transformer/imagenet_480m.py", IN_S1,
                         "configs/imagenet256/stage2/in256-rqtransformer-8x8x4-480M.yaml", shrink=(512, 6, 2, 8)),
    "sample_ffhq": Work("sample", "configs/transformer/ffhq.py", "configs/ffhq/stage1/ffhq256-rqvae-8x8x4.yaml",
                        "configs/ffhq/stage2/ffhq256-rqtransformer-8x8x4-350M.yaml"),
    "sample_in480m": Work("sample", "configs/transformer/imagenet_480m.py", IN_S1,
                          "configs/imagenet256/stage2/in256-rqtransformer-8x8x4-480M.yaml"),
}
SMOKE = {  # rq_jax only, CPU-test sizes: the harness runs end to end
    "codec": Work("codec", "configs/rqvae/demo.py:runlocal", "", batch=2),
    "step": Work("step", "configs/rqvae/demo.py:runlocal", "", batch=2),
    "sample_small": Work("sample", "configs/transformer/demo.py:runlocal", "", batch=2),
}


# ---- the official side (optional) -----------------------------------------------------------------------
class Official:
    """Builds the official models from their yamls with random weights (seed 0)."""

    def __init__(self, repo: str):
        if not os.path.isdir(os.path.join(repo, "rqvae")):
            raise FileNotFoundError(f"{repo} is not a checkout of kakaobrain/rq-vae-transformer (no rqvae/ in it).")
        # torch's OpenMP threads would otherwise spin after each call, slowing the rq_jax call timed next
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch  # noqa: F401  (before the patch below: torch's own dataclasses stay as they are)

        sys.path.insert(0, os.path.abspath(repo))
        # Its config dataclasses use instances as defaults, which Python >= 3.11 rejects for unhashable
        # (eq, non-frozen) dataclasses; making its own dataclasses hashable lets the package import unchanged.
        original = dataclasses.dataclass

        def hashable(cls=None, /, **kw):
            def wrap(c):
                if c.__module__.startswith("rqvae"):
                    kw.setdefault("unsafe_hash", True)
                return original(c, **kw)
            return wrap(cls) if cls is not None else wrap

        dataclasses.dataclass = hashable
        try:
            import rqvae.models  # noqa: F401
        finally:
            dataclasses.dataclass = original
        self.repo = repo

    def yaml(self, rel: str) -> dict:
        import yaml

        with open(os.path.join(self.repo, rel)) as f:
            return yaml.safe_load(f)

    def stage1(self, rel: str) -> tuple[Any, dict]:
        import torch
        from omegaconf import OmegaConf
        from rqvae.models import create_model

        cfg = self.yaml(rel)
        defaults = {"ema": None, "checkpointing": False, "hparams": {
            "loss_type": "l1", "restart_unused_codes": False, "use_padding_idx": False, "masked_dropout": 0.0}}
        torch.manual_seed(0)
        model = create_model(OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.create(cfg["arch"])))[0]
        return model.eval(), cfg

    def stage2(self, rel: str, shrink: tuple[int, int, int, int] | None) -> tuple[Any, dict]:
        import torch
        from omegaconf import OmegaConf
        from rqvae.models import create_model
        from rqvae.models.rqtransformer.configs import RQTransformerConfig

        cfg = self.yaml(rel)
        if shrink:
            d, spatial, depth, heads = shrink
            cfg["arch"]["embed_dim"] = d
            cfg["arch"]["body"]["n_layer"], cfg["arch"]["head"]["n_layer"] = spatial, depth
            cfg["arch"]["body"]["block"]["n_head"] = cfg["arch"]["head"]["block"]["n_head"] = heads
        arch = OmegaConf.create(cfg["arch"])
        arch = OmegaConf.merge(RQTransformerConfig.create(arch), arch)
        arch.vocab_size = cfg["dataset"]["vocab_size"]
        torch.manual_seed(0)
        return create_model(arch)[0].eval(), cfg


def _numpy_state(model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _on_device(module: nnx.Module) -> nnx.Module:
    graph, state = nnx.split(module)
    return nnx.merge(graph, jax.tree.map(jnp.asarray, state))


def rqvae_from_official(model: Any, yaml_cfg: dict, dtype: str = "float32") -> tuple[RQVAE, ml_collections.ConfigDict]:
    """The rq_jax RQ-VAE holding the official model's weights (and its config), computing in `dtype`."""
    from rq_jax.convert.official_rqvae_config import stage1_config_from_official
    from rq_jax.convert.official_weights import convert_stage1

    sd = _numpy_state(model)
    config, _ = stage1_config_from_official({k: v.shape for k, v in sd.items()}, yaml_cfg)
    state = convert_stage1(sd, config).state
    config.model.dtype = dtype  # activations only: the parameters stay float32
    graph = nnx.split(abstract_module(lambda rngs: RQVAE(config.model, rngs=rngs)), nnx.Param, CodebookVar)[0]
    return _on_device(nnx.merge(graph, state["gen"], state["codebook"])), config


def transformer_from_official(model: Any, yaml_cfg: dict, stage1_config: ml_collections.ConfigDict
                              ) -> RQTransformer:
    from rq_jax.convert.official_transformer_config import stage2_config_from_official
    from rq_jax.convert.official_weights import convert_stage2

    sd = _numpy_state(model)
    config, _ = stage2_config_from_official({k: v.shape for k, v in sd.items()}, yaml_cfg, stage1_config)
    state = convert_stage2(sd, config).state
    graph = nnx.graphdef(abstract_module(lambda rngs: RQTransformer(config.model, rngs=rngs)))
    return _on_device(nnx.merge(graph, state["params"]))


# ---- one row ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    work: str
    official_s: float | None
    ours_s: float
    build_s: float
    first_call_s: float
    check: str

    @property
    def ratio(self) -> str:
        return f"{self.ours_s / self.official_s:.2f}" if self.official_s else "-"


def _images(batch: int, res: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (batch, res, res, 3)).astype(np.float32)


def build(work: Work, official: Official | None, sample_dtype: str, rqvae_dtype: str = "float32"
          ) -> tuple[Callable | None, Callable, str | Callable[[], str]]:
    """(official fn or None, rq_jax fn, a sanity note, or a function giving it after the timing) for one work."""
    config = load_config_file(str(REPO / work.config))
    stage1_config = config.get("rqvae", config)
    if work.kind in ("codec", "step"):
        if official:
            tm, yaml1 = official.stage1(work.stage1_yaml)
            model, stage1_config = rqvae_from_official(tm, yaml1, rqvae_dtype)
        else:
            stage1_config.model.dtype = rqvae_dtype
            tm, model = None, RQVAE(stage1_config.model, rngs=nnx.Rngs(0))
        x = _images(work.batch, int(stage1_config.model.resolution))
        if work.kind == "codec":
            return _codec(tm, model, x)
        return _step(tm, model, x, float(stage1_config.loss.beta), str(stage1_config.loss.recon))
    if work.shrink:
        d, spatial, depth, heads = work.shrink
        config.model.update(d_model=d, spatial_layers=spatial, depth_layers=depth, num_heads=heads)
    if official:
        vae_t, yaml1 = official.stage1(work.stage1_yaml)
        vae, stage1_config = rqvae_from_official(vae_t, yaml1)
        tm, yaml2 = official.stage2(work.stage2_yaml, work.shrink)
        model = transformer_from_official(tm, yaml2, stage1_config)
    else:
        vae_t = tm = None
        vae = abstract_module(lambda rngs: RQVAE(stage1_config.model, rngs=rngs))
        model = RQTransformer(config.model, rngs=nnx.Rngs(0))
        vae.set_codebook(jax.tree.map(lambda a: jax.random.normal(jax.random.key(1), a.shape, a.dtype),
                                      vae.codebook_state))
    return _sample(tm, vae_t, model, vae, config, work.batch, sample_dtype)


def _codec(tm, model, x):
    def codec(m: RQVAE, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        codes = m.encode(x)
        return codes, m.decode(codes)

    ours = jit_module_fn(model, codec)
    ours_call = lambda: jax.block_until_ready(ours(x))  # noqa: E731
    if tm is None:
        return None, ours_call, ""
    import torch

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def official_call():
        with torch.inference_mode():
            codes = tm.get_codes(xt)
            return codes, tm.decode_code(codes)

    codes_o, images_o = official_call()
    codes, images = ours_call()
    agree = float(np.mean(np.asarray(codes) == codes_o.numpy()))
    diff = float(np.max(np.abs(np.asarray(images) - images_o.numpy().transpose(0, 2, 3, 1))))
    return official_call, ours_call, f"codes equal {agree:.2%}, max abs image diff {diff:.1e}"


def _step(tm, model, x, beta, recon):
    from rq_jax.losses import reconstruction_loss

    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, rest, x, rng):
        out = nnx.merge(graph, params, rest).forward_train(x, rng)
        return reconstruction_loss(x, out.recon, recon) + beta * out.rq.commit_loss, out.codebook

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    rng = jax.random.key(0)
    ours_call = lambda: jax.block_until_ready(grad_fn(params, rest, x, rng))  # noqa: E731
    if tm is None:
        return None, ours_call, ""
    import torch

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tm.train()

    def official_call():
        out, quant_loss, code = tm(xt)
        loss = tm.compute_loss(out, quant_loss, code, xs=xt)["loss_total"]
        loss.backward()
        tm.zero_grad(set_to_none=True)
        return float(loss)

    (loss, _), _ = ours_call()
    return official_call, ours_call, f"loss {float(loss):.4f} vs official {official_call():.4f}"


def _sample(tm, vae_t, model, vae, config, batch, sample_dtype):
    cfg = SamplingConfig(temperature=1.0, top_k=config.sample.top_k, top_p=config.sample.top_p)
    h, w, d = model.code_shape
    codebook = jnp.asarray(vae.codebook_state.embedding_KxC)
    cond = None if model.cond_kind == "none" else jnp.arange(batch, dtype=jnp.int32) % int(config.model.num_classes)
    fast = with_weight_dtype(model, sample_dtype)
    key = jax.random.key(0)
    ours_call = lambda: jax.block_until_ready(sample_codes(fast, codebook, cond, key, batch=batch, cfg=cfg))  # noqa: E731
    settings = f"top-k {cfg.top_k}, top-p {cfg.top_p}, weights {sample_dtype}"
    note = settings if sample_dtype == "float32" else (  # measured after the timing (it compiles both models)
        lambda: settings + "; " + weight_dtype_cost(model, fast, codebook, cond, batch, cfg))
    if tm is None:
        return None, ours_call, note
    import torch

    top_k = [int(cfg.top_k) or None] * d if not isinstance(cfg.top_k, tuple) else [k or None for k in cfg.top_k]
    top_p = [float(cfg.top_p)] * d if not isinstance(cfg.top_p, tuple) else list(cfg.top_p)
    cond_t = torch.zeros(batch, dtype=torch.long) if cond is None else torch.from_numpy(np.asarray(cond)).long()

    def official_call():
        with torch.inference_mode():
            return tm.sample(torch.zeros((batch, h, w, d), dtype=torch.long), model_aux=vae_t, cond=cond_t,
                             temperature=1.0, top_k=top_k, top_p=top_p)

    return official_call, ours_call, note


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


def _time(fn: Callable) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(name: str, work: Work, official: Official | None, repeats: int, sample_dtype: str,
            rqvae_dtype: str = "float32") -> Row:
    """Builds both sides, warms them up, then times them in turn (`repeats` times each)."""
    t0 = time.perf_counter()
    official_fn, ours_fn, check = build(work, official, sample_dtype, rqvae_dtype)
    build_s = time.perf_counter() - t0
    first = _time(ours_fn)
    if official_fn is not None:
        official_fn()  # warm-up (allocator, lazy initialisation)
    times_o, times_j = [], []
    for _ in range(repeats):
        if official_fn is not None:
            times_o.append(_time(official_fn))
        times_j.append(_time(ours_fn))
    check = check() if callable(check) else check
    return Row(name, statistics.median(times_o) if times_o else None, statistics.median(times_j), build_s, first,
               check)


def table(rows: list[Row]) -> str:
    head = "| work | official s | rq_jax s | ratio | rq_jax build s | rq_jax first call s | check |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        off = f"{r.official_s:.2f}" if r.official_s is not None else "-"
        lines.append(f"| {r.work} | {off} | {r.ours_s:.2f} | {r.ratio} | {r.build_s:.1f} | {r.first_call_s:.1f} | "
                     f"{r.check} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official_repo", default=None, help="a checkout of kakaobrain/rq-vae-transformer")
    p.add_argument("--work", nargs="+", default=None, help=f"some of {', '.join(WORKS)} (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sample_dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the rq_jax sampler's weights (the official side stays float32)")
    p.add_argument("--rqvae_dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the rq_jax RQ-VAE's activations in codec and step (parameters and the official side "
                   "stay float32)")
    p.add_argument("--smoke", action="store_true", help="tiny rq_jax-only models (the test suite)")
    args = p.parse_args(argv)
    works = SMOKE if args.smoke else WORKS
    names = args.work or list(works)
    unknown = [n for n in names if n not in works]
    if unknown:
        p.error(f"unknown work {unknown}; choose from {list(works)}")
    if args.smoke and args.official_repo:
        p.error("--smoke runs the rq_jax side only; drop --official_repo")
    official = Official(args.official_repo) if args.official_repo else None
    if official is not None:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name in names:
        rows.append(measure(name, works[name], official, args.repeats, args.sample_dtype, args.rqvae_dtype))
        print(f"{name}: done", file=sys.stderr, flush=True)
    out = table(rows)
    print(f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"median of {args.repeats}, interleaved")
    print(out)
    return out


if __name__ == "__main__":
    main()
