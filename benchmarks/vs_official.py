"""rq_jax against the official PyTorch code on this machine, side by side: same models, same weights.

    python -m benchmarks.vs_official --official_repo ~/src/rq-vae-transformer          # every work, both mallocs
    python -m benchmarks.vs_official --official_repo ... --work codec step --repeats 3 --malloc tcmalloc
    python -m benchmarks.vs_official --work codec sample_ffhq        # rq_jax only (no torch / no checkout)
    python -m benchmarks.vs_official --smoke                         # tiny models: the harness (test suite)

`--official_repo` is a checkout of kakaobrain/rq-vae-transformer (its `rqvae` package and `configs/`);
torch and omegaconf must be installed. Nothing is downloaded: both sides get random weights. With the
official side, its models are built from its released yaml (seed 0) and their state dicts are converted
into the rq_jax models with `rq_jax.convert` (the same functions as `python -m rq_jax.convert official`),
so both compute the same function; the check column says how closely. Without it, the rq_jax models are
built from the rq_jax config files with random weights.

Works (CPU float32 on both sides unless `--sample_dtype` / `--rqvae_dtype` say otherwise):
- `codec`: ImageNet 8x8x4 RQ-VAE, images -> codes -> images, batch 8, 256 px.
- `step`: the same RQ-VAE, forward (training mode: EMA codebook update) + backward of the yaml's reconstruction
  loss (MSE for ImageNet) + beta * commitment, batch 2; the official side as its yaml says (gradient
  checkpointing on). `step_nockpt`: the same with the official gradient checkpointing off (rq_jax unchanged).
- `sample_small` (480M yaml shrunk to 512-d, 6 + 2 layers, 8 heads), `sample_ffhq` (FFHQ 355M),
  `sample_in480m` (ImageNet 480M): codes for 8 images with KV caches, temperature 1, the rq_jax config's
  top-k / top-p on both sides; decoding excluded (it is `codec`'s second half).

Processes: each side runs in a process of its own, `python -m benchmarks.vs_official --side official|rq_jax
--work W ...`, started by this one (which computes nothing: it only reads the rq_jax config of a sample work),
with the environment this command was given (no OMP_WAIT_POLICY or thread count is set here: torch uses its
default number of threads) except the malloc (`--malloc`): "glibc" removes tcmalloc/jemalloc from LD_PRELOAD and
sets RQ_JAX_ALLOCATOR=system, "tcmalloc" preloads libtcmalloc_minimal into both sides (RQ_JAX_ALLOCATOR names it,
as `python -m rq_jax.train` / `sample` / ... re-execute themselves; gperftools' report of allocations over 1 GiB
is silenced on both sides, as rq_jax does). Each child reports the malloc it found mapped, and the run stops if
it is not the one asked for. Per work and malloc the official child runs first (it also writes its state dicts to
a temporary directory), then the rq_jax child (it converts them); each writes its times to a JSON file and its
outputs (codes, images, logits) to an .npz, which this process compares.

Timing, per side: "build" (models, weights, conversion, jit wrappers), "first call" (rq_jax: tracing and XLA
compilation, no persistent cache, plus one run; torch: its first run, with its lazy initialisation), then
`--repeats` warm calls: median [min-max]. "ratio" = rq_jax median / official median on the same malloc; with
`--malloc both` a second table adds "as shipped": rq_jax on tcmalloc (as its commands run) / official on glibc
(as its scripts run), from this same invocation.

Checks: codec: codes equal, largest |image difference|; step: the loss of the first call (before any EMA update)
on both sides; sample: teacher-forced logits of fixed random codes under the same conditioning (the samplers
draw different random numbers, so their codes are not compared): the largest |logit difference| at the first
and last positions (all depths), and how many of the top codes (argmax) agree over all positions and depths.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rq_jax import allocator

REPO = pathlib.Path(__file__).resolve().parents[1]
MALLOCS = ("glibc", "tcmalloc")
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")


@dataclasses.dataclass(frozen=True)
class Work:
    """One row: the rq_jax config file, the official yamls (relative to the official checkout), the batch."""

    kind: str  # "codec" | "step" | "sample"
    config: str  # rq_jax config file spec (PATH[:arg])
    stage1_yaml: str
    stage2_yaml: str = ""
    batch: int = 8
    shrink: tuple[int, int, int, int] | None = None  # (d_model, spatial layers, depth layers, heads)
    checkpointing: bool | None = None  # the official RQ-VAE's gradient checkpointing (None: as its yaml says)


IN_S1 = "configs/imagenet256/stage1/in256-rqvae-8x8x4.yaml"
IN_S2 = "configs/imagenet256/stage2/in256-rqtransformer-8x8x4-480M.yaml"
WORKS = {
    "codec": Work("codec", "configs/rqvae/imagenet_8x8x4.py", IN_S1, batch=8),
    "step": Work("step", "configs/rqvae/imagenet_8x8x4.py", IN_S1, batch=2),
    "step_nockpt": Work("step", "configs/rqvae/imagenet_8x8x4.py", IN_S1, batch=2, checkpointing=False),
    "sample_small": Work("sample", "configs/transformer/imagenet_480m.py", IN_S1, IN_S2, shrink=(512, 6, 2, 8)),
    "sample_ffhq": Work("sample", "configs/transformer/ffhq.py", "configs/ffhq/stage1/ffhq256-rqvae-8x8x4.yaml",
                        "configs/ffhq/stage2/ffhq256-rqtransformer-8x8x4-350M.yaml"),
    "sample_in480m": Work("sample", "configs/transformer/imagenet_480m.py", IN_S1, IN_S2),
}
SMOKE = {  # rq_jax only, CPU-test sizes: the harness runs end to end
    "codec": Work("codec", "configs/rqvae/demo.py:runlocal", "", batch=2),
    "step": Work("step", "configs/rqvae/demo.py:runlocal", "", batch=2),
    "sample_small": Work("sample", "configs/transformer/demo.py:runlocal", "", batch=2),
}


@dataclasses.dataclass
class Side:
    """What a child times: `call`; `outputs(first call's result)` and `extra()` (after the timing) give the
    arrays (-> .npz) and scalars (-> JSON) the parent compares; `weights` the official state dicts to hand on."""

    call: Callable[[], Any]
    outputs: Callable[[Any], tuple[dict[str, np.ndarray], dict[str, Any]]]
    extra: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]] | None = None
    weights: dict[str, np.ndarray] | None = None


# ---- inputs shared by the two sides --------------------------------------------------------------------------
def images(batch: int, res: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (batch, res, res, 3)).astype(np.float32)


def fixed_codes(batch: int, shape: tuple[int, int, int], vocab: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, vocab, (batch, *shape)).astype(np.int32)


def logit_outputs(codes: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Teacher-forced logits [B, H, W, D, K] -> those of the first and last positions and the argmax codes."""
    b, h, w, d, k = logits.shape
    return {"tf_codes": codes, "tf_logits": logits.reshape(b, h * w, d, k)[:, [0, -1]],
            "tf_argmax": logits.argmax(-1).astype(np.int32)}


def official_yaml(repo: str, rel: str, shrink: tuple[int, int, int, int] | None = None,
                  checkpointing: bool | None = None) -> dict:
    """An official yaml as a dict, shrunk (`Work.shrink`) and with its checkpointing overridden if asked."""
    import yaml

    with open(os.path.join(repo, rel)) as f:
        cfg = yaml.safe_load(f)
    if shrink:
        d, spatial, depth, heads = shrink
        cfg["arch"]["embed_dim"] = d
        cfg["arch"]["body"]["n_layer"], cfg["arch"]["head"]["n_layer"] = spatial, depth
        cfg["arch"]["body"]["block"]["n_head"] = cfg["arch"]["head"]["block"]["n_head"] = heads
    if checkpointing is not None:
        cfg["arch"]["checkpointing"] = checkpointing
    return cfg


# ---- the official side (its own process) --------------------------------------------------------------------
class Official:
    """Builds the official models from their yamls with random weights (seed 0)."""

    def __init__(self, repo: str):
        if not os.path.isdir(os.path.join(repo, "rqvae")):
            raise FileNotFoundError(f"{repo} is not a checkout of kakaobrain/rq-vae-transformer (no rqvae/ in it).")
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

    def stage1(self, cfg: dict) -> Any:
        import torch
        from omegaconf import OmegaConf
        from rqvae.models import create_model

        defaults = {"ema": None, "checkpointing": False, "hparams": {
            "loss_type": "l1", "restart_unused_codes": False, "use_padding_idx": False, "masked_dropout": 0.0}}
        torch.manual_seed(0)
        return create_model(OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.create(cfg["arch"])))[0].eval()

    def stage2(self, cfg: dict) -> Any:
        import torch
        from omegaconf import OmegaConf
        from rqvae.models import create_model
        from rqvae.models.rqtransformer.configs import RQTransformerConfig

        arch = OmegaConf.create(cfg["arch"])
        arch = OmegaConf.merge(RQTransformerConfig.create(arch), arch)
        arch.vocab_size = cfg["dataset"]["vocab_size"]
        torch.manual_seed(0)
        return create_model(arch)[0].eval()


def _numpy_state(model: Any, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def official_side(off: Official, work: Work, settings: dict | None) -> Side:
    import torch

    yaml1 = official_yaml(off.repo, work.stage1_yaml, checkpointing=work.checkpointing)
    vae = off.stage1(yaml1)
    weights = _numpy_state(vae, "s1/")
    if work.kind in ("codec", "step"):
        res = int(yaml1["arch"]["ddconfig"]["resolution"])
        xt = torch.from_numpy(images(work.batch, res).transpose(0, 3, 1, 2).copy())
        if work.kind == "codec":
            def codec():
                with torch.inference_mode():
                    codes = vae.get_codes(xt)
                    return codes, vae.decode_code(codes)

            return Side(codec, lambda out: ({"codes": out[0].numpy(),
                                             "images": out[1].numpy().transpose(0, 2, 3, 1)}, {}), weights=weights)
        vae.train()

        def step():
            out, quant_loss, code = vae(xt)
            loss = vae.compute_loss(out, quant_loss, code, xs=xt)["loss_total"]
            loss.backward()
            vae.zero_grad(set_to_none=True)
            return loss.item()

        return Side(step, lambda loss: ({}, {"loss": loss}), weights=weights)
    yaml2 = official_yaml(off.repo, work.stage2_yaml, work.shrink)
    model = off.stage2(yaml2)
    weights.update(_numpy_state(model, "s2/"))
    h, w, d = tuple(model.block_size)
    per_depth = lambda v: list(v) if isinstance(v, list) else [v] * d  # noqa: E731
    top_k = [int(k) or None for k in per_depth(settings["top_k"])]
    top_p = [float(p) for p in per_depth(settings["top_p"])]
    b = work.batch
    cond = None if settings["cond"] is None else torch.tensor(settings["cond"], dtype=torch.long)

    def sample():
        with torch.inference_mode():
            return model.sample(torch.zeros((b, h, w, d), dtype=torch.long), model_aux=vae,
                                cond=torch.zeros(b, dtype=torch.long) if cond is None else cond,
                                temperature=1.0, top_k=top_k, top_p=top_p)

    def teacher_forced():
        codes = fixed_codes(b, (h, w, d), int(yaml2["dataset"]["vocab_size"]))
        with torch.inference_mode():
            logits = model(torch.from_numpy(codes).long(), model_aux=vae, cond=cond)
        return logit_outputs(codes, logits.numpy()), {}

    return Side(sample, lambda _: ({}, {}), teacher_forced, weights)


# ---- a child process: one side, one work, one malloc ----------------------------------------------------------
def _timed(fn: Callable) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_child(args: argparse.Namespace) -> None:
    if args.side == "rq_jax":
        allocator.reexec_with_allocator()  # what rq_jax's commands do first (a no-op when preloaded already)
    t_import = time.perf_counter()
    work = (SMOKE if args.smoke else WORKS)[args.work[0]]
    out = pathlib.Path(args.out)
    weights_file = out / f"weights-{args.work[0]}.npz"
    info: dict[str, Any] = {"side": args.side, "work": args.work[0], "malloc": args.malloc,
                            "malloc_loaded": allocator.loaded_allocator()}
    if args.side == "official":
        off = Official(args.official_repo)
        import torch

        info.update(version=f"torch {torch.__version__}", threads=torch.get_num_threads())
        t0 = time.perf_counter()
        side = official_side(off, work, json.loads(args.settings) if args.settings else None)
    else:
        import jax

        from benchmarks import vs_official_jax

        info.update(version=f"jax {jax.__version__}", threads=os.cpu_count(), device=jax.devices()[0].device_kind)
        t0 = time.perf_counter()
        side = vs_official_jax.build(work, args, np.load(weights_file) if args.official_repo else None)
    info["import_s"], info["build_s"] = t0 - t_import, time.perf_counter() - t0
    if side.weights is not None and not weights_file.exists():  # the first official child of a work hands them on
        np.savez(out / "weights-tmp.npz", **side.weights)
        os.replace(out / "weights-tmp.npz", weights_file)
    side.weights = None
    info["first_s"], first = _timed(side.call)
    arrays, scalars = side.outputs(first)
    del first
    info["warm_s"] = [_timed(side.call)[0] for _ in range(args.repeats)]
    if side.extra is not None:
        more, more_scalars = side.extra()
        arrays.update(more)
        scalars.update(more_scalars)
    name = f"{args.side}-{args.work[0]}-{args.malloc}"
    np.savez(out / f"{name}.npz", **arrays)
    (out / f"{name}.json").write_text(json.dumps({**info, **scalars}))


# ---- the parent: start the children, compare, tabulate ------------------------------------------------------------
def child_env(malloc: str, tcmalloc: str | None) -> dict[str, str]:
    """This process's environment, with the malloc of `malloc` (see the module docstring)."""
    env = dict(os.environ)
    env.pop("RQ_JAX_ALLOCATOR_REEXEC", None)
    preload = [p for p in env.pop("LD_PRELOAD", "").replace(":", " ").split()
               if not any(k in os.path.basename(p) for k in ("tcmalloc", "jemalloc"))]
    if malloc == "tcmalloc":
        preload.insert(0, tcmalloc)
        env["RQ_JAX_ALLOCATOR"] = tcmalloc
        env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 50))
    else:
        env["RQ_JAX_ALLOCATOR"] = "system"
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    return env


def sample_settings(work: Work) -> dict:
    """The rq_jax config's top-k / top-p and the class labels, for the official child (it has no JAX)."""
    from rq_jax.config_lib import load_config_file

    config = load_config_file(str(REPO / work.config))
    listed = lambda v: list(v) if isinstance(v, tuple | list) else v  # noqa: E731
    cond = None if config.model.cond == "none" else [i % int(config.model.num_classes) for i in range(work.batch)]
    return {"top_k": listed(config.sample.top_k), "top_p": listed(config.sample.top_p), "cond": cond}


def spawn(side: str, name: str, malloc: str, args: argparse.Namespace, out: pathlib.Path, tcmalloc: str | None,
          settings: dict | None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.vs_official", "--side", side, "--work", name, "--malloc", malloc,
           "--out", str(out), "--repeats", str(args.repeats), "--sample_dtype", args.sample_dtype,
           "--rqvae_dtype", args.rqvae_dtype]
    cmd += ["--official_repo", args.official_repo] if args.official_repo else []
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--settings", json.dumps(settings)] if settings and side == "official" else []
    print(f"{name}: {side} on {malloc} ...", file=sys.stderr, flush=True)
    rc = subprocess.run(cmd, cwd=REPO, env=child_env(malloc, tcmalloc)).returncode
    if rc:
        raise RuntimeError(f"the {side} child of {name} ({malloc}) failed with exit code {rc}; see its messages above")
    result = json.loads((out / f"{side}-{name}-{malloc}.json").read_text())
    loaded = result["malloc_loaded"]
    if (malloc == "glibc") != (loaded is None) or (loaded and "tcmalloc" not in loaded):
        raise RuntimeError(f"the {side} child of {name} ran with malloc {loaded}, not {malloc}")
    warm = result["warm_s"]
    result.update(median=statistics.median(warm), min=min(warm), max=max(warm))
    with np.load(out / f"{side}-{name}-{malloc}.npz") as f:
        result["arrays"] = dict(f)
    return result


def compare(kind: str, off: dict, ours: dict) -> str:
    """The check column: how closely the two sides computed the same function."""
    o, j = off["arrays"], ours["arrays"]
    if kind == "codec":
        return (f"codes equal {np.mean(o['codes'] == j['codes']):.2%}, "
                f"max abs image diff {np.max(np.abs(o['images'] - j['images'])):.1e}")
    if kind == "step":
        return f"first-call loss {ours['loss']:.4f} vs official {off['loss']:.4f}"
    if not np.array_equal(o["tf_codes"], j["tf_codes"]):
        return "teacher-forced inputs differ (vocabulary sizes?)"
    diff = np.max(np.abs(o["tf_logits"] - j["tf_logits"]))
    first = np.mean(o["tf_argmax"][:, 0, 0, 0] == j["tf_argmax"][:, 0, 0, 0])
    return (f"teacher-forced logits, first + last position: max abs diff {diff:.1e} (max abs logit "
            f"{np.max(np.abs(o['tf_logits'])):.1f}); top code equal {np.mean(o['tf_argmax'] == j['tf_argmax']):.2%} "
            f"of all positions x depths ({first:.0%} at the first position, first depth)")


def _t(r: dict | None) -> str:
    return "-" if r is None else f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"


def _bf(r: dict | None) -> str:
    return "-" if r is None else f"{r['build_s']:.1f} / {r['first_s']:.1f}"


def _ratio(ours: dict | None, off: dict | None) -> str:
    return f"{ours['median'] / off['median']:.2f}" if ours and off else "-"


def tables(names: list[str], results: dict, mallocs: list[str]) -> str:
    lines = ["| work | malloc | official build / first call s | official warm s, median [min-max] | "
             "rq_jax build / first call (compiles) s | rq_jax warm s, median [min-max] | ratio | check |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        for m in mallocs:
            off, ours = results.get(("official", name, m)), results[("rq_jax", name, m)]
            lines.append(f"| {name} | {m} | {_bf(off)} | {_t(off)} | {_bf(ours)} | {_t(ours)} | {_ratio(ours, off)} "
                         f"| {ours['check']} |")
    if not any(k[0] == "official" for k in results):
        return "\n".join(lines)
    lines += ["", "| work | ratio, both on glibc | ratio, both on tcmalloc | as shipped: rq_jax on tcmalloc / "
              "official on glibc |", "| --- | --- | --- | --- |"]
    for name in names:
        r = lambda side, m, name=name: results.get((side, name, m))  # noqa: E731
        lines.append(f"| {name} | {_ratio(r('rq_jax', 'glibc'), r('official', 'glibc'))} | "
                     f"{_ratio(r('rq_jax', 'tcmalloc'), r('official', 'tcmalloc'))} | "
                     f"{_ratio(r('rq_jax', 'tcmalloc'), r('official', 'glibc'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official_repo", default=None, help="a checkout of kakaobrain/rq-vae-transformer")
    p.add_argument("--work", nargs="+", default=None, help=f"some of {', '.join(WORKS)} (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--malloc", choices=(*MALLOCS, "both"), default=None,
                   help="the malloc of both sides' processes (default: both with --official_repo, else glibc)")
    p.add_argument("--sample_dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the rq_jax sampler's weights (the official side stays float32)")
    p.add_argument("--rqvae_dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the rq_jax RQ-VAE's activations in codec and step (parameters and the official side "
                   "stay float32)")
    p.add_argument("--smoke", action="store_true", help="tiny rq_jax-only models (the test suite)")
    p.add_argument("--json", default=None, help="also write every child's result (times, checks) to this file")
    p.add_argument("--side", choices=("official", "rq_jax"), help=argparse.SUPPRESS)  # a child process
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    works = SMOKE if args.smoke else WORKS
    names = args.work or list(works)
    unknown = [n for n in names if n not in works]
    if unknown:
        p.error(f"unknown work {unknown}; choose from {list(works)}")
    if args.smoke and args.official_repo:
        p.error("--smoke runs the rq_jax side only; drop --official_repo")
    if args.side:
        run_child(args)
        return ""
    if args.official_repo and not os.path.isdir(os.path.join(args.official_repo, "rqvae")):
        raise FileNotFoundError(f"{args.official_repo} is not a checkout of kakaobrain/rq-vae-transformer.")
    mallocs = list(MALLOCS) if (args.malloc or ("both" if args.official_repo else "glibc")) == "both" else [
        args.malloc or "glibc"]
    tcmalloc = allocator.find_allocator(names=TCMALLOC_NAMES)
    if "tcmalloc" in mallocs and tcmalloc is None:
        p.error("no libtcmalloc_minimal.so.4 found (apt install libtcmalloc-minimal4), or pass --malloc glibc")
    results: dict[tuple[str, str, str], dict] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vs_official-") as tmp:
        out = pathlib.Path(tmp)
        for name in names:
            work = works[name]
            settings = sample_settings(work) if work.kind == "sample" and args.official_repo else None
            for m in mallocs:
                off = spawn("official", name, m, args, out, tcmalloc, settings) if args.official_repo else None
                ours = spawn("rq_jax", name, m, args, out, tcmalloc, settings)
                ours["check"] = compare(work.kind, off, ours) if off else ours.get("note", "")
                if off:
                    results[("official", name, m)] = off
                results[("rq_jax", name, m)] = ours
            for f in out.glob("weights-*.npz"):
                f.unlink()
    any_ours = next(r for k, r in results.items() if k[0] == "rq_jax")
    head = [f"{os.cpu_count()} cores; rq_jax: {any_ours['version']} on {any_ours['device']}"]
    offs = [r for k, r in results.items() if k[0] == "official"]
    if offs:
        head.append(f"official: {offs[0]['version']}, {offs[0]['threads']} threads (its default)")
    omp = ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("OMP_", "MKL_")))
    head.append(f"environment as given ({omp or 'no OMP_*/MKL_* variables'}); each side in its own process, "
                f"official then rq_jax per work and malloc; warm: median [min-max] of {args.repeats} calls")
    head.append(f"1-min load average before the run {load_before:.1f} (other jobs on these cores make the times "
                "meaningless)")
    out_text = "; ".join(head) + "\n" + tables(names, results, mallocs)
    if args.json:
        rows = [{k: v for k, v in r.items() if k != "arrays"} for r in results.values()]
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    print(out_text)
    return out_text


if __name__ == "__main__":
    from benchmarks import vs_official  # run the module's own copy (the child imports it by that name)

    vs_official.main()
