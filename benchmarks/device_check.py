"""Everything that needs an accelerator, checked and measured in one command, as a markdown table.

    python -m benchmarks.device_check --out benchmarks/device_check.md        # one GPU or TPU, <= ~8 min
    python -m benchmarks.device_check --smoke --out /tmp/device_check.md      # tiny sizes on the CPU (tests)

On a lent machine without network, carry the wheels of `bash benchmarks/device_wheels.sh` (that script says how).

Sections (each timed; one that fails is reported as a row with its error and the others still run):
  1. memory bandwidth: a fused read+write over a large array, achieved GB/s against the device's peak;
  2. nearest-code search: the Pallas kernel against the XLA reference (indices equal, time, effective
     GB/s and TFLOP/s) at N=65536, K=16384, C=256 in float32 and bfloat16;
  3. sampling: the 1.4B RQ-Transformer (8x8x4, bf16, random weights) at batch 100 / 200 / 500, seconds per
     image including RQ-VAE decoding, beside the paper's A100 figures (0.039 / 0.025 / 0.019);
  4. training: one stage-2 train step of the 480M and the 1.4B ImageNet configs at a realistic per-device
     batch (bf16 compute, full remat): steps/s, model FLOPs utilisation (XLA's FLOP count of the step over
     the device's dense bf16 peak) and peak device memory.
`--smoke` runs the same code at CPU-test sizes (the Pallas kernel in interpret mode), so the script cannot
rot between the rare sessions with a GPU. Random weights throughout: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import pathlib
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

# Peak HBM bandwidth in GB/s by a substring of device_kind (lower case), first match.
PEAK_GBPS = (("h200", 4800.0), ("h100 pcie", 2000.0), ("h100", 3350.0), ("a100-sxm4-80gb", 2039.0),
             ("a100 80gb", 1935.0), ("a100", 1555.0), ("l40s", 864.0), ("l4", 300.0), ("v6", 1640.0),
             ("v5p", 2765.0), ("v5 lite", 819.0), ("v5e", 819.0), ("v4", 1200.0))

SIZES = {  # full (accelerator) vs smoke (CPU) sizes
    "full": dict(bandwidth_mib=4096, n=65536, k=16384, c=256, preset="1.4b", batches=(100, 200, 500),
                 train=(("imagenet_480m", 64), ("imagenet_1400m", 32)), train_steps=5, repeats=5),
    "smoke": dict(bandwidth_mib=16, n=1024, k=512, c=32, preset="small", batches=(2,),
                  train=(("demo:runlocal", 4),), train_steps=2, repeats=1),
}


def peak_gbps(device: Any) -> float | None:
    kind = str(getattr(device, "device_kind", "")).lower()
    return next((v for k, v in PEAK_GBPS if k in kind), None)


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `fn()` (blocking on its result) after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# ---- 1. bandwidth --------------------------------------------------------------------------------------
def bandwidth(s: dict) -> list[dict]:
    n = s["bandwidth_mib"] * 2**20 // 4
    x = jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda v: v * 2.0 + 1.0)
    sec = timed(lambda: f(x), s["repeats"])
    gbps = 2 * n * 4 / sec / 1e9
    peak = peak_gbps(jax.devices()[0])
    return [dict(check="HBM bandwidth (x*2+1)", size=f"{s['bandwidth_mib']} MiB f32", result=f"{gbps:,.0f} GB/s",
                 reference=f"peak {peak:,.0f} GB/s ({gbps / peak:.0%})" if peak else "peak unknown")]


# ---- 2. nearest code -----------------------------------------------------------------------------------
def nearest_code_rows(s: dict, smoke: bool) -> list[dict]:
    from rq_jax.kernels.nearest_code import nearest_code

    n, k, c = s["n"], s["k"], s["c"]
    rows = []
    rng = np.random.default_rng(0)
    for dtype in (jnp.float32, jnp.bfloat16):
        z = jnp.asarray(rng.normal(size=(n, c)), dtype)
        e = jnp.asarray(rng.normal(size=(k, c)), dtype)
        xla = jax.jit(lambda z, e: nearest_code(z, e, impl="xla"))
        pallas = jax.jit(lambda z, e: nearest_code(z, e, impl="pallas_gpu" if smoke else "pallas", interpret=smoke))
        same = float(jnp.mean(xla(z, e) == pallas(z, e)))
        t_xla, t_pallas = (timed(lambda f=f, z=z, e=e: f(z, e), s["repeats"]) for f in (xla, pallas))
        nbytes = (n + k) * c * jnp.dtype(dtype).itemsize
        flops = 2.0 * n * k * c
        name = jnp.dtype(dtype).name
        rows.append(dict(check=f"nearest_code Pallas vs XLA ({name})", size=f"N={n} K={k} C={c}",
                         result=f"indices equal {same:.4%}; Pallas {t_pallas * 1e3:.2f} ms "
                                f"({flops / t_pallas / 1e12:.1f} TFLOP/s, {nbytes / t_pallas / 1e9:.0f} GB/s eff.)",
                         reference=f"XLA {t_xla * 1e3:.2f} ms ({t_xla / t_pallas:.2f}x)"))
    return rows


# ---- 3. sampling ---------------------------------------------------------------------------------------
def sampling_rows(s: dict) -> list[dict]:
    from benchmarks import sampling_throughput as st
    from rq_jax.models.rq_transformer import RQTransformer
    from rq_jax.models.rqvae import RQVAE
    from rq_jax.sampling import SamplingConfig

    stage1 = st.stage1_config(s["preset"], (8, 8, 4))
    rqvae = st.build(RQVAE, stage1.model, 0)
    model = st.build(RQTransformer, st.transformer_model_config(s["preset"], stage1), 1)
    rows = []
    for batch in s["batches"]:
        r = st.measure_throughput(model, rqvae, preset=s["preset"], batch=batch, samples=batch, decode_batch=50,
                                  sampling=SamplingConfig())
        paper = st.PAPER_A100_INCL_DECODE.get(batch) if s["preset"] == "1.4b" else None
        dtype = st.PRESETS[s["preset"]]["dtype"]
        rows.append(dict(check=f"sampling {s['preset']} 8x8x4 {dtype}", size=f"batch {batch}",
                         result=f"{r.total_s_per_image:.4f} s/image incl. decoding ({r.ar_s_per_image:.4f} AR)",
                         reference=f"paper A100 {paper:.3f} s/image" if paper else ""))
    return rows


# ---- 4. training ---------------------------------------------------------------------------------------
def _train_config(name: str, per_device: int):
    from rq_jax.config_lib import load_config_file

    if name == "demo:runlocal":
        config = load_config_file(str(REPO / "configs" / "transformer" / "demo.py") + ":runlocal")
    else:
        config = load_config_file(str(REPO / "configs" / "transformer" / f"{name}.py"))
        config.model.update(dict(remat="full", dtype="bfloat16"))
    config.train.batch_size = per_device * jax.device_count()
    config.train.microbatches = 1
    config.mesh.shape = {"data": 1, "fsdp": -1, "tensor": 1}
    return config


def train_rows(s: dict) -> list[dict]:
    from rq_jax import metrics, sharding
    from rq_jax.trainers import rq_transformer as t2

    rows = []
    for name, per_device in s["train"]:
        config = _train_config(name, per_device)
        mesh = sharding.mesh_from_config(dict(config.mesh.shape))
        tx, _ = t2.make_optimizer(config.train, 1000)
        setup = t2.setup_state(config, mesh, tx)
        state = setup.init()
        b, (h, w, _), c = config.train.batch_size, config.model.code_shape, config.model.embed_dim
        rng = np.random.default_rng(0)
        batch = sharding.global_batch(mesh, {"features": rng.normal(size=(b, h, w, c)).astype(np.float32),
                                             "label": np.zeros((b,), np.int32), "caption": np.zeros((b,), np.int32)})
        codebook = jax.device_put(jnp.asarray(rng.normal(size=(config.model.vocab_size, c)), jnp.float32),
                                  sharding.replicated(mesh))
        text = jax.device_put(jnp.zeros((1, 1), jnp.int32), sharding.replicated(mesh))
        step = t2.jit_train_step(config, mesh, setup)
        with jax.set_mesh(mesh):
            flops = metrics.step_flops(step, state, batch, codebook, text)
            state, m = step(state, batch, codebook, text)  # compile + first step
            jax.block_until_ready(m)
            t = time.perf_counter()
            for _ in range(s["train_steps"]):
                state, m = step(state, batch, codebook, text)
            jax.block_until_ready(m)
        sec = (time.perf_counter() - t) / s["train_steps"]
        dev = jax.devices()[0]
        peak = metrics.peak_flops(dev)
        mfu = f", MFU {flops / sec / (peak * jax.device_count()):.1%}" if flops and peak else ""
        stats = dev.memory_stats() or {}
        mem = f", peak memory {stats['peak_bytes_in_use'] / 2**30:.1f} GiB" if "peak_bytes_in_use" in stats else ""
        params = sum(x.size for x in jax.tree.leaves(setup.abstract["params"]))
        rows.append(dict(check=f"train step {name} ({params / 1e6:,.0f}M params)",
                         size=f"{per_device}/device x {jax.device_count()}",
                         result=f"{1 / sec:.2f} steps/s, {b / sec:,.0f} images/s{mfu}{mem}",
                         reference=f"loss {float(m['loss']):.3f}"))
        del state
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| check | size | result | reference |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['check']} | {r['size']} | {r['result']} | {r['reference']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any backend (the test suite's run)")
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--skip", nargs="*", default=[], choices=("bandwidth", "nearest_code", "sampling", "train"))
    a = p.parse_args(argv)
    s = SIZES["smoke" if a.smoke else "full"]
    dev = jax.devices()[0]
    header = (f"device_check {time.strftime('%Y-%m-%d')}: {jax.device_count()} x {dev.device_kind} "
              f"({jax.default_backend()}), jax {jax.__version__}{' (smoke sizes)' if a.smoke else ''}")
    print(header, flush=True)
    sections = (("bandwidth", lambda: bandwidth(s)), ("nearest_code", lambda: nearest_code_rows(s, a.smoke)),
                ("sampling", lambda: sampling_rows(s)), ("train", lambda: train_rows(s)))
    rows: list[dict] = []
    for name, fn in sections:
        if name in a.skip:
            continue
        t = time.perf_counter()
        try:
            new = fn()
        except Exception as e:  # noqa: BLE001 - report the failure and run the other sections
            traceback.print_exc()
            new = [dict(check=name, size="", result=f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                        reference="")]
        for r in new:
            r["reference"] = (r["reference"] + f" [{time.perf_counter() - t:.0f} s]").strip()
            print(f"  {r['check']} | {r['size']} | {r['result']} | {r['reference']}", flush=True)
        rows += new
    table = markdown(rows, header)
    if a.out:
        pathlib.Path(a.out).write_text(table)
        print(f"wrote {a.out}")
    return table


if __name__ == "__main__":
    main()
