"""`python -m rq_jax.extract --rqvae WORKDIR --out DIR`: the stage-2 dataset of frozen RQ-VAE features.

The RQ-Transformer is trained on codes drawn stochastically from Q_tau at every step (paper
Sec. 3.2.3), so what is stored is the continuous encoder output z (after quant_conv) of every
training image and of its horizontal flip, plus labels and captions; codes and soft labels are
computed on the fly from z and the codebook (`rq_jax.quantizer.rq_soft_codes`).

Output (`DIR/<split>.npz` per split, one file per process with `--shard` naming):
  features  float16 [N, h, w, C]   (float16 halves the size; codes from float16 z are checked
                                    against float32 z in the tests)
  labels    int32 [N]; captions int32 [N] (index into `captions.json`, -1: none); flipped bool [N]
  codebook  float32 [K, C]          (the frozen codebook at extraction time)
plus `DIR/meta.json` (the stage-1 workdir and step, code shape, class names, and `q_tau`: how informative
the soft labels Q_tau are on a sample of the training features for a few tau, per depth: mean entropy in
bits, mean nearest-code probability, mean squared distance to the nearest and second-nearest code). The
same table is printed: pick config.soft.temperature of stage 2 from it (README, "Soft labels").
"""

from __future__ import annotations

import argparse
import json
import os
import time

from rq_jax import cli

if __name__ == "__main__":  # before JAX starts: may re-execute on tcmalloc (rq_jax/allocator.py)
    cli.preload_allocator()

import jax
import jax.numpy as jnp
import numpy as np

from rq_jax.data.pipeline import build_image_pipeline
from rq_jax.metrics import format_seconds
from rq_jax.quantizer import calibrate_temperature, q_tau_stats, sample_vectors

DEFAULT_TAUS = (0.5, 0.1, 0.02)
DEFAULT_TARGETS = (1.0,)


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


def extract_split(model, data_config, split: str, *, batch_size: int, flips: bool = True,
                  limit: int | None = None) -> dict[str, np.ndarray]:
    """Encoder features (and flipped copies) of every image of one split of this host's shard."""
    it, info = build_image_pipeline(data_config, split=split, batch_size=batch_size, shuffle=False, repeat=False,
                                    augment=False, drop_remainder=False)
    encode = jax.jit(model.encode_features)
    parts: dict[bool, list[dict[str, np.ndarray]]] = {False: [], True: []}
    t0, n = time.perf_counter(), 0
    total = info.num_local_examples if limit is None else min(limit, info.num_local_examples)
    for batch in it:
        x = np.asarray(batch["image"])
        for fl in (False, True) if flips else (False,):
            xv = x[:, :, ::-1] if fl else x
            parts[fl].append(dict(features=np.asarray(encode(jnp.asarray(xv))).astype(np.float16),
                                  labels=np.asarray(batch["label"], np.int32),
                                  captions=np.asarray(batch["caption"], np.int32),
                                  flipped=np.full((x.shape[0],), fl)))
        n += x.shape[0]
        rate = n / max(time.perf_counter() - t0, 1e-9)
        if jax.process_index() == 0:
            print(f"{split}: {min(n, total)}/{total} images | {rate:.1f} img/s | "
                  f"ETA {format_seconds((total - n) / rate)}", flush=True)
        if n >= total:
            break
    keys = ("features", "labels", "captions", "flipped")
    chunks = [np.concatenate([p[k] for p in parts[fl]])[:total] for fl in parts if parts[fl] for k in keys]
    return {k: np.concatenate(chunks[i::len(keys)]) for i, k in enumerate(keys)}


def extract(rqvae_workdir: str, out_dir: str, *, batch_size: int = 64, flips: bool = True,
            splits: tuple[str, ...] = ("train", "validation"), limit: int | None = None,
            taus: tuple[float, ...] = DEFAULT_TAUS, entropy_targets: tuple[float, ...] = DEFAULT_TARGETS) -> dict:
    """Writes `<out_dir>/<split>.npz` and `meta.json` for a trained stage-1 run; returns the meta dict."""
    from rq_jax.runs import load_rqvae

    model, config, step = load_rqvae(rqvae_workdir)
    os.makedirs(out_dir, exist_ok=True)
    codebook = np.asarray(model.codebook_state.embedding_KxC, np.float32)
    suffix = f".{jax.process_index()}-of-{jax.process_count()}" if jax.process_count() > 1 else ""
    table = None
    for split in splits:
        arrays = extract_split(model, config.data, split, batch_size=batch_size, flips=flips and split == "train",
                               limit=limit)
        np.savez(os.path.join(out_dir, f"{split}{suffix}.npz"), codebook=codebook, **arrays)
        if split == "train" and len(arrays["features"]):
            table = soft_label_table(arrays["features"], codebook, int(config.model.code_shape[2]), taus=taus,
                                     entropy_targets=entropy_targets)
            if jax.process_index() == 0:
                print(format_soft_label_table(table), flush=True)
    _, info = build_image_pipeline(config.data, split="train", batch_size=1)
    meta = dict(rqvae_workdir=os.path.abspath(rqvae_workdir), rqvae_step=int(step),
                code_shape=list(config.model.code_shape), codebook_size=int(config.model.codebook_size),
                embed_dim=int(config.model.embed_dim), image_size=int(config.data.image_size),
                num_classes=int(info.num_classes), class_names=list(info.class_names), flips=flips,
                dataset=info.dataset, q_tau=table)
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        if info.captions is not None:
            with open(os.path.join(out_dir, "captions.json"), "w") as f:
                json.dump(list(info.captions), f)
    return meta


def main(argv: list[str] | None = None) -> None:
    """The command line; user errors exit 1 with one line (rq_jax.cli)."""
    cli.guard(_main, argv)


def _main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], prog="python -m rq_jax.extract")
    p.add_argument("--rqvae", required=True, help="workdir of a trained stage-1 run")
    p.add_argument("--out", required=True, help="output directory of the stage-2 feature dataset")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--no_flips", action="store_true", help="do not add horizontally flipped copies")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split (tests)")
    p.add_argument("--tau", default=",".join(f"{t:g}" for t in DEFAULT_TAUS),
                   help="comma-separated soft-label temperatures to report Q_tau statistics for")
    p.add_argument("--entropy_target", default=",".join(f"{t:g}" for t in DEFAULT_TARGETS),
                   help="comma-separated entropy targets (bits) whose per-depth tau ('auto:<bits>') is reported")
    a = p.parse_args(argv)
    try:
        taus = tuple(float(t) for t in a.tau.split(",") if t.strip())
        targets = tuple(float(t) for t in a.entropy_target.split(",") if t.strip())
    except ValueError:
        p.error(f"--tau {a.tau!r} and --entropy_target {a.entropy_target!r} must be comma-separated numbers")
    if any(t <= 0 for t in taus + targets):
        p.error("--tau and --entropy_target values must be > 0")
    meta = extract(a.rqvae, a.out, batch_size=a.batch_size, flips=not a.no_flips, limit=a.limit, taus=taus,
                   entropy_targets=targets)
    print(f"wrote {a.out}: code shape {meta['code_shape']}, K={meta['codebook_size']}")


if __name__ == "__main__":
    main()
