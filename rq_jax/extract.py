"""`python -m rq_jax.extract --rqvae WORKDIR --out DIR`: the stage-2 dataset of frozen RQ-VAE features.

The RQ-Transformer is trained on codes drawn stochastically from Q_tau at every step (paper Sec. 3.2.3), so what
is stored is the continuous encoder output z (after quant_conv) of every training image and of its horizontal
flip, with its label, caption and index; codes and soft labels are computed on the fly from z and the codebook.

The output is ArrayRecord shards of float16 features written as they are encoded (memory does not grow with
the dataset), the codebook, and `meta.json` with the Q_tau table (how informative the soft labels are on a
bounded sample of the training features, per depth: pick config.soft.temperature from it; README, "Soft
labels"). The layout is documented in `rq_jax.data.feature_format`.

Several processes (`--coordinator/--num_processes/--process_id`, or a TPU pod / SLURM job, as for `train`)
each encode every N-th shard on all their local devices; process 0 writes `meta.json` when all shards exist.
The result reads the same on any number of stage-2 processes. A killed extraction, rerun with the same
command, continues from its complete shards. `--rewrite DIR` turns a directory of the old `.npz` format into
shards without re-encoding.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

from rq_jax import cli

if __name__ == "__main__":  # before JAX starts: may re-execute on tcmalloc (rq_jax/allocator.py)
    cli.preload_allocator()

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rq_jax.data import feature_format as fmt
from rq_jax.data.pipeline import build_image_pipeline
from rq_jax.metrics import format_seconds
from rq_jax.quantizer import calibrate_temperature, max_sample_vectors, q_tau_stats, sample_vectors

DEFAULT_TAUS = (0.5, 0.1, 0.02)
DEFAULT_TARGETS = (1.0,)
PLAN_FILE = "extract_plan.json"
TABLE_RECORDS = 4096  # the Q_tau table's vectors (quantizer.max_sample_vectors) come from at most this many records


def soft_label_table(features: np.ndarray, codebook_KxC: np.ndarray, depth: int, *,
                     taus: tuple[float, ...] = DEFAULT_TAUS, entropy_targets: tuple[float, ...] = DEFAULT_TARGETS,
                     seed: int = 0) -> dict:
    """Per-depth Q_tau statistics on a fixed sample of feature vectors for fixed taus and "auto:<bits>" taus.

    Codes are drawn stochastically as stage-2 training does; the nearest / second-nearest squared distances
    are those of the deterministic (nearest-code) residuals.
    """
    k = int(codebook_KxC.shape[0])
    z = sample_vectors(features, k, seed=seed)
    det = q_tau_stats(z, codebook_KxC, depth, 1.0, stochastic=False, seed=seed)
    rows = []
    for tau in taus:
        st = q_tau_stats(z, codebook_KxC, depth, float(tau), seed=seed)
        rows.append(dict(tau=float(tau), label=f"{tau:g}", entropy_bits=st["entropy_bits"], p_nearest=st["p_nearest"]))
    for bits in entropy_targets:
        per_depth = calibrate_temperature(z, codebook_KxC, depth, float(bits), seed=seed)
        st = q_tau_stats(z, codebook_KxC, depth, per_depth, seed=seed)
        rows.append(dict(tau=list(per_depth), label=f"auto:{bits:g}", entropy_bits=st["entropy_bits"],
                         p_nearest=st["p_nearest"]))
    return dict(num_vectors=int(len(z)), codebook_size=k, log2_k=float(np.log2(k)), rows=rows,
                sq_dist_nearest=det["sq_dist_nearest"], sq_dist_second=det["sq_dist_second"])


def format_soft_label_table(table: dict) -> str:
    """The `soft_label_table` as aligned text: one row per tau, `H (p p_nearest)` per depth."""
    depth = len(table["sq_dist_nearest"])
    head = f"{'tau':<28}" + "".join(f"{f'depth {d + 1}':>16}" for d in range(depth))
    lines = [f"Q_tau on {table['num_vectors']:,} training feature vectors: mean entropy in bits "
             f"(log2 K = {table['log2_k']:.2f}) and mean probability of the nearest code", head]
    for r in table["rows"]:
        label = r["label"] if not isinstance(r["tau"], list) else \
            f"{r['label']} = " + "/".join(f"{t:.2g}" for t in r["tau"])
        lines.append(f"{label:<28}" + "".join(f"{f'{h:.2f} (p {p:.2f})':>16}"
                                            for h, p in zip(r["entropy_bits"], r["p_nearest"], strict=True)))
    for key, name in (("sq_dist_nearest", "|r - e|^2 nearest"), ("sq_dist_second", "|r - e|^2 2nd nearest")):
        lines.append(f"{name:<28}" + "".join(f"{v:>16.4g}" for v in table[key]))
    return "\n".join(lines)


def _run_path(path: str) -> str:
    """The stage-1 workdir as recorded: absolute for local paths, as given for URLs (gs://...)."""
    return path if "://" in path else os.path.abspath(path)


def _plan(rqvae_workdir: str, step: int, config, splits: tuple[str, ...], flips: bool, limit: int | None,
          records_per_shard: int | None) -> dict:
    """What an extraction writes, fixed before any image is read: a rerun resumes only the same plan."""
    from rq_jax.data.pipeline import split_size

    shape = (int(config.model.code_shape[0]), int(config.model.code_shape[1]), int(config.model.embed_dim))
    rps = int(records_per_shard or fmt.default_records_per_shard(shape))
    plan = dict(format=fmt.FORMAT, rqvae_workdir=_run_path(rqvae_workdir), rqvae_step=int(step),
                feature_shape=list(shape), records_per_shard=rps, splits={})
    for split in splits:
        n = split_size(config.data, split)
        n = n if limit is None else min(int(limit), n)
        flip = bool(flips and split == "train")
        per_shard = max(1, rps // 2) if flip else rps
        plan["splits"][split] = dict(num_images=n, flips=flip, images_per_shard=per_shard,
                                     num_shards=-(-n // per_shard))
    return plan


def _check_plan(out_dir: str, plan: dict) -> None:
    """Refuses to mix two extractions in one directory (one sentence naming what differs)."""
    path = os.path.join(out_dir, PLAN_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    if old != plan:
        diff = [k for k in sorted(set(old) | set(plan)) if old.get(k) != plan.get(k)]
        raise FileExistsError(
            f"{out_dir} holds an extraction with other settings ({', '.join(diff)} differ: e.g. another stage-1 "
            "step, --limit, --no_flips or --records_per_shard); give another --out, or delete it to start over."
        )


def _encoder(model, batch_size: int):
    """(jitted encoder over this process's local devices, padded batch size): parameters replicated, the batch
    split over the devices; every batch is padded to one size, so it compiles once."""
    devices = jax.local_devices()
    mesh = Mesh(np.array(devices), ("batch",))
    graph, state = nnx.split(model)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    batch_sharding = NamedSharding(mesh, P("batch"))
    padded = -(-batch_size // len(devices)) * len(devices)
    encode = jax.jit(lambda s, x: nnx.merge(graph, s).encode_features(x), out_shardings=batch_sharding)

    def run(x_BxHxWx3: np.ndarray) -> np.ndarray:
        n = len(x_BxHxWx3)
        x = np.concatenate([x_BxHxWx3, np.repeat(x_BxHxWx3[-1:], padded - n, 0)]) if n < padded else x_BxHxWx3
        return np.asarray(encode(state, jax.device_put(x, batch_sharding)))[:n].astype(np.float16)

    return run, padded


class _Progress:
    """`split: done/total images | img/s | ETA` of this process, at most every `every` seconds."""

    def __init__(self, split: str, total: int, done: int, every: float = 5.0):
        self.split, self.total, self.done, self.every = split, total, done, every
        self.t0, self.new, self.last = time.perf_counter(), 0, 0.0

    def add(self, n: int, force: bool = False) -> None:
        self.done, self.new = self.done + n, self.new + n
        now = time.perf_counter()
        if force or now - self.last >= self.every:
            self.last = now
            rate = self.new / max(now - self.t0, 1e-9)
            print(f"{self.split}: {self.done}/{self.total} images | {rate:.1f} img/s | "
                  f"ETA {format_seconds((self.total - self.done) / max(rate, 1e-9))}", flush=True)


def _shard_images(plan_split: dict, k: int) -> range:
    """The split indices of the images of shard k."""
    per, n = int(plan_split["images_per_shard"]), int(plan_split["num_images"])
    return range(k * per, min((k + 1) * per, n))


def _my_shards(plan_split: dict) -> list[int]:
    """This process's shards: every process_count-th, so the shares differ by at most one shard."""
    return list(range(jax.process_index(), int(plan_split["num_shards"]), jax.process_count()))


def _write_shard(encode, data_config, out_dir: str, split: str, k: int, plan_split: dict, batch_size: int,
                 progress: _Progress) -> None:
    """Encodes the images of shard k (and their flips) and writes them, batch by batch, to the shard."""
    path = os.path.join(out_dir, fmt.shard_name(split, k, plan_split["num_shards"]))
    images = _shard_images(plan_split, k)
    for stale in glob.glob(glob.escape(path) + ".tmp-*"):  # left by a killed run
        os.remove(stale)
    it, _ = build_image_pipeline(data_config, split=split, batch_size=batch_size, shuffle=False, repeat=False,
                                 augment=False, drop_remainder=False, process_index=0, process_count=1,
                                 subset=slice(images.start, images.stop))
    writer = fmt.ShardWriter(path)
    try:
        for batch in it:
            x = np.asarray(batch["image"])
            meta = (np.asarray(batch["index"], np.int64), np.asarray(batch["label"], np.int32),
                    np.asarray(batch["caption"], np.int32))
            for flipped in (False, True) if plan_split["flips"] else (False,):
                z = encode(x[:, :, ::-1] if flipped else x)
                writer.write(fmt.encode_records(z, *meta, np.full(len(x), flipped)))
            progress.add(len(x))
    except BaseException:
        writer.abort()
        raise
    writer.close()


def _wait_for(what: str, ready, poll: float = 1.0, report: float = 60.0) -> None:
    """Blocks until `ready()` is true, saying every `report` seconds what it waits for."""
    t0 = last = time.perf_counter()
    while not ready():
        time.sleep(poll)
        if time.perf_counter() - last >= report:
            last = time.perf_counter()
            print(f"waiting for {what} ({format_seconds(last - t0)} so far)", flush=True)


def _missing_shards(out_dir: str, plan: dict) -> list[str]:
    return [name for split, ps in plan["splits"].items() for k in range(ps["num_shards"])
            if not os.path.exists(os.path.join(out_dir, name := fmt.shard_name(split, k, ps["num_shards"])))]


def extract(rqvae_workdir: str, out_dir: str, *, batch_size: int = 64, flips: bool = True,
            splits: tuple[str, ...] = ("train", "validation"), limit: int | None = None,
            records_per_shard: int | None = None, taus: tuple[float, ...] = DEFAULT_TAUS,
            entropy_targets: tuple[float, ...] = DEFAULT_TARGETS) -> dict:
    """Writes the feature dataset of a trained stage-1 run to `out_dir` (layout: `rq_jax.data.feature_format`)
    and returns its meta dict.

    On several processes each encodes every process_count-th shard on its local devices; process 0 writes
    `meta.json` once every shard exists. A rerun after a kill skips the shards that are complete.
    """
    from rq_jax.runs import load_rqvae

    model, config, step = load_rqvae(rqvae_workdir)
    plan = _plan(rqvae_workdir, step, config, splits, flips, limit, records_per_shard)
    os.makedirs(out_dir, exist_ok=True)
    _check_plan(out_dir, plan)
    first = jax.process_index() == 0
    if first:
        fmt.write_json_atomic(os.path.join(out_dir, PLAN_FILE), plan)
        fmt.save_codebook(out_dir, np.asarray(model.codebook_state.embedding_KxC))
    encode, padded = _encoder(model, batch_size)
    for split, ps in plan["splits"].items():
        mine = _my_shards(ps)
        done = {k for k in mine if os.path.exists(os.path.join(out_dir, fmt.shard_name(split, k, ps["num_shards"])))}
        progress = _Progress(split, sum(len(_shard_images(ps, k)) for k in mine),
                             sum(len(_shard_images(ps, k)) for k in done))
        if done and first:
            print(f"{split}: {len(done)} of this process's {len(mine)} shards are complete; resuming", flush=True)
        for k in mine:
            if k not in done:
                _write_shard(encode, config.data, out_dir, split, k, ps, padded, progress)
        progress.add(0, force=True)
    meta_path = os.path.join(out_dir, "meta.json")
    if not first:  # process 0 writes meta.json once every process's shards exist
        _wait_for("process 0 to write meta.json", lambda: _read_plan_of_meta(meta_path) == plan)
        with open(meta_path) as f:
            return json.load(f)
    _wait_for("the other processes' shards", lambda: not _missing_shards(out_dir, plan))
    meta = _finish_meta(rqvae_workdir, out_dir, config, step, plan, flips, taus, entropy_targets)
    fmt.write_json_atomic(meta_path, meta)
    return meta


def _read_plan_of_meta(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f).get("plan")
    except (OSError, ValueError):
        return None


def _finish_meta(rqvae_workdir: str, out_dir: str, config, step: int, plan: dict, flips: bool,
                 taus: tuple[float, ...], entropy_targets: tuple[float, ...]) -> dict:
    """meta.json of a finished extraction: record counts of every shard, classes, captions, the Q_tau table."""
    from rq_jax.data.features import FeatureSource

    _, info = build_image_pipeline(config.data, split="train", batch_size=1, process_index=0, process_count=1)
    if info.captions is not None:
        fmt.write_json_atomic(os.path.join(out_dir, "captions.json"), list(info.captions))
    split_meta = {}
    for split, ps in plan["splits"].items():
        shards = [dict(file=(name := fmt.shard_name(split, k, ps["num_shards"])),
                       num_records=fmt.shard_num_records(os.path.join(out_dir, name)))
                  for k in range(ps["num_shards"])]
        split_meta[split] = dict(num_records=sum(s["num_records"] for s in shards), num_images=ps["num_images"],
                                 flips=ps["flips"], shards=shards)
    meta = dict(format=fmt.FORMAT, rqvae_workdir=_run_path(rqvae_workdir), rqvae_step=int(step),
                code_shape=list(config.model.code_shape), codebook_size=int(config.model.codebook_size),
                embed_dim=int(config.model.embed_dim), image_size=int(config.data.image_size),
                num_classes=int(info.num_classes), class_names=list(info.class_names), flips=flips,
                dataset=info.dataset, dtype="float16", codebook=fmt.CODEBOOK_FILE, splits=split_meta, q_tau=None,
                plan=plan)
    if split_meta.get("train", {}).get("num_records"):
        src = FeatureSource(out_dir, "train", meta=meta)
        features = src.sample_vectors(max_sample_vectors(len(src.codebook)), max_records=TABLE_RECORDS)
        meta["q_tau"] = soft_label_table(features, src.codebook, int(config.model.code_shape[2]), taus=taus,
                                         entropy_targets=entropy_targets)
        print(format_soft_label_table(meta["q_tau"]), flush=True)
    return meta


def main(argv: list[str] | None = None) -> None:
    """The command line; user errors exit 1 with one line (rq_jax.cli)."""
    cli.guard(_main, argv)


def _main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], prog="python -m rq_jax.extract")
    p.add_argument("--rqvae", help="workdir of a trained stage-1 run")
    p.add_argument("--out", help="output directory of the stage-2 feature dataset")
    p.add_argument("--rewrite", metavar="DIR", help="rewrite a feature directory of the old .npz format as shards")
    p.add_argument("--batch_size", type=int, default=64, help="images per encoder call on each process")
    p.add_argument("--no_flips", action="store_true", help="do not add horizontally flipped copies")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split (tests)")
    p.add_argument("--records_per_shard", type=int, default=None,
                   help="records per ArrayRecord shard (default: about 1 GiB of features)")
    p.add_argument("--tau", default=",".join(f"{t:g}" for t in DEFAULT_TAUS),
                   help="comma-separated soft-label temperatures to report Q_tau statistics for")
    p.add_argument("--entropy_target", default=",".join(f"{t:g}" for t in DEFAULT_TARGETS),
                   help="comma-separated entropy targets (bits) whose per-depth tau ('auto:<bits>') is reported")
    cli.add_distributed_flags(p)
    a = p.parse_args(argv)
    try:
        taus = tuple(float(t) for t in a.tau.split(",") if t.strip())
        targets = tuple(float(t) for t in a.entropy_target.split(",") if t.strip())
    except ValueError:
        p.error(f"--tau {a.tau!r} and --entropy_target {a.entropy_target!r} must be comma-separated numbers")
    if any(t <= 0 for t in taus + targets):
        p.error("--tau and --entropy_target values must be > 0")
    for name in ("batch_size", "records_per_shard"):
        if getattr(a, name) is not None and getattr(a, name) <= 0:
            p.error(f"--{name} must be > 0")
    if a.limit is not None and a.limit < 0:
        p.error("--limit must be >= 0")
    if a.rewrite:
        from rq_jax.data.legacy_features import rewrite_npz_dir

        meta = rewrite_npz_dir(a.rewrite, records_per_shard=a.records_per_shard)
        counts = ", ".join(f"{s}: {v['num_records']} records" for s, v in meta["splits"].items())
        print(f"rewrote {a.rewrite} as ArrayRecord shards ({counts}); the .npz files can now be deleted")
        return
    if not a.rqvae or not a.out:
        p.error("--rqvae and --out are required (or --rewrite DIR)")
    cli.initialize_distributed(a.coordinator, a.num_processes, a.process_id)
    meta = extract(a.rqvae, a.out, batch_size=a.batch_size, flips=not a.no_flips, limit=a.limit,
                   records_per_shard=a.records_per_shard, taus=taus, entropy_targets=targets)
    counts = ", ".join(f"{s}: {v['num_records']} records" for s, v in meta["splits"].items())
    print(f"wrote {a.out}: code shape {meta['code_shape']}, K={meta['codebook_size']} ({counts})")


if __name__ == "__main__":
    main()
