"""Start-up of `python -m rq_jax.sample`: the wall time of the whole command, cold and warm compilation cache.

    python -m benchmarks.sample_startup --config configs/transformer/ffhq.py --dir /tmp/startup_ffhq
    python -m benchmarks.sample_startup --smoke          # the demo-sized models: the harness (test suite)

Writes a stage-1 and a stage-2 run under --dir as the trainers save them (the whole train state: weights,
optimizer state, discriminator, PRNG key) with random values, then runs the command in fresh processes,
first with an empty compilation cache, then again with the cache it filled, and prints the wall time of
each run beside the phases the command reports (`time:` line). Then it measures the work itself (the
command's sampler and decoder called again in one process, on loaded models, nothing else running) and
reports the start-up of each run: its wall time minus that work, i.e. Python, imports, loading, tracing
and compiling (or reading the compiled programs from the cache), and the first calls' extra time.
Nothing is downloaded. The runs are kept, so a second invocation with the same --dir skips writing them
(--rewrite to force).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

from rq_jax import sharding
from rq_jax.checkpoints import Checkpointer
from rq_jax.config_lib import load_config_file
from rq_jax.trainers import rq_transformer as stage2_trainer
from rq_jax.trainers import rqvae as stage1_trainer
from rq_jax.trainers.loop import write_run_config


def _random_like(abstract, seed: int):
    """Host arrays of the abstract state's shapes: N(0, 0.02) for floats, zeros otherwise."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if np.issubdtype(leaf.dtype, np.floating):
            return (rng.standard_normal(leaf.shape, np.float32) * 0.02).astype(leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    return jax.tree.map(fill, abstract)


def _save_run(workdir: str, config: ml_collections.ConfigDict, abstract, seed: int) -> None:
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(workdir, max_to_keep=1, async_save=False, with_data=False)
    ckpt.save(0, _random_like(abstract, seed), force=True)
    ckpt.close()
    write_run_config(config, workdir)


def make_runs(config_spec: str, root: str) -> str:
    """A stage-1 and a stage-2 run of random weights under `root`; returns the stage-2 workdir."""
    config = load_config_file(config_spec)
    s1_dir, s2_dir = os.path.join(root, "stage1"), os.path.join(root, "stage2")
    mesh = sharding.mesh_from_run_config(config.mesh)
    s1 = config.rqvae
    tx_gen, _ = stage1_trainer.make_optimizer(s1.train.lr, s1.train, 1)
    tx_disc, _ = stage1_trainer.make_optimizer(s1.train.disc_lr, s1.train, 1)
    _save_run(s1_dir, s1, stage1_trainer.setup_state(s1, mesh, tx_gen, tx_disc).abstract, 1)
    with config.unlocked():
        config.rqvae_workdir = s1_dir
    tx, _ = stage2_trainer.make_optimizer(config.train, 100)
    _save_run(s2_dir, config, stage2_trainer.setup_state(config, mesh, tx).abstract, 2)
    return s2_dir


def _python(args: list[str], s2_dir: str, cache: str, out: str, num: int) -> tuple[float, str]:
    """(wall seconds, stdout) of `python ARGS` with the sample command's flags, in a fresh process using the
    compilation cache `cache`; raises with its output when it fails."""
    env = dict(os.environ, RQ_JAX_COMPILATION_CACHE=cache)
    cmd = [sys.executable, *args, "--workdir", s2_dir, "--num", str(num), "--out", out]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return wall, proc.stdout


def run_command(s2_dir: str, cache: str, out: str, num: int) -> tuple[float, str]:
    """Wall seconds of one `python -m rq_jax.sample` in a fresh process, and its `time:` line."""
    wall, stdout = _python(["-m", "rq_jax.sample"], s2_dir, cache, out, num)
    phases = re.search(r"^time: (.*?) \(", stdout, re.MULTILINE)
    return wall, phases.group(1) if phases else "?"


_WORK = """
import sys, time
from rq_jax import cli
cli.preload_allocator()  # as the command does (re-executes on tcmalloc when it is installed)
from rq_jax import sample
cli.enable_compilation_cache()
import jax
import numpy as np
from rq_jax.models.weight_dtype import with_weight_dtype
from rq_jax.runs import load_stage2, plan_stage2
args = sample.build_parser().parse_args(sys.argv[1:])
sample.run(args)  # the whole command once: its programs are compiled (and cached) now
plan = plan_stage2(args.workdir, args.rqvae)
cfg = sample.sampling_config(args, plan.config)
cond, rows = sample.conditions(args, plan.model, plan.config)
sampler, decode = (f.result() for f in sample.compile_programs(plan, cond, rows * args.num, cfg, args.weight_dtype))
run = load_stage2(args.workdir, args.step, plan=plan)
model, codebook = with_weight_dtype(run.model, args.weight_dtype), run.decoder.codebook_state.embedding_KxC
start = time.perf_counter()
codes = jax.block_until_ready(sampler(model, codebook, cond, jax.random.key(args.seed)))
sampled = time.perf_counter()
np.asarray(decode(run.decoder, codes))
print(f"work: sample {sampled - start:.3f} s, decode {time.perf_counter() - sampled:.3f} s")
"""


def steady_work(s2_dir: str, cache: str, out: str, num: int) -> float:
    """Seconds of sampling + decoding alone: the command's programs called again in one process, on models
    already loaded (nothing else runs meanwhile)."""
    _, stdout = _python(["-c", _WORK], s2_dir, cache, out, num)
    last = re.findall(r"^work: sample ([\d.]+) s, decode ([\d.]+) s", stdout, re.MULTILINE)[-1]
    return float(last[0]) + float(last[1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/transformer/ffhq.py", help="stage-2 config file (PATH[:arg])")
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "rq_jax_startup"))
    p.add_argument("--num", type=int, default=8, help="images to sample")
    p.add_argument("--warm", type=int, default=1, help="warm-cache runs after the cold one")
    p.add_argument("--rewrite", action="store_true", help="write the runs again")
    p.add_argument("--smoke", action="store_true", help="configs/transformer/demo.py:runlocal, 2 images")
    args = p.parse_args(argv)
    if args.smoke:
        args.config, args.num = "configs/transformer/demo.py:runlocal", 2
    s2_dir = os.path.join(args.dir, "stage2")
    if args.rewrite or not os.path.exists(os.path.join(s2_dir, "config.json")):
        start = time.perf_counter()
        s2_dir = make_runs(args.config, args.dir)
        print(f"wrote the runs under {args.dir} in {time.perf_counter() - start:.1f} s", flush=True)
    sizes = {d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(args.dir, d))
                    for f in fs) / 1e9 for d in ("stage1", "stage2")}
    cache = os.path.join(args.dir, "xla_cache")
    shutil.rmtree(cache, ignore_errors=True)
    rows = []
    for i in range(1 + args.warm):
        wall, phases = run_command(s2_dir, cache, os.path.join(args.dir, "samples.png"), args.num)
        rows.append(("cold cache" if i == 0 else "warm cache", wall, phases))
        print(f"{rows[-1][0]}: {wall:.1f} s ({phases})", flush=True)
    work = steady_work(s2_dir, cache, os.path.join(args.dir, "samples.png"), args.num)
    print(f"work (sampling + decoding, the programs called again in one process): {work:.1f} s", flush=True)
    print(f"\n`python -m rq_jax.sample`, {args.config}, {args.num} images; runs on disk: stage 1 "
          f"{sizes['stage1']:.2f} GB, stage 2 {sizes['stage2']:.2f} GB (whole train states); the work "
          f"itself (sampling + decoding, warm): {work:.1f} s\n")
    print("| run | wall s | start-up s (wall - work) | phases reported by the command |")
    print("| --- | --- | --- | --- |")
    for name, wall, phases in rows:
        print(f"| {name} | {wall:.1f} | {wall - work:.1f} | {phases} |")


if __name__ == "__main__":
    main()
