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
plus `DIR/meta.json` (the stage-1 workdir and step, code shape, class names).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from rq_jax.data.pipeline import build_image_pipeline
from rq_jax.metrics import format_seconds


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
            splits: tuple[str, ...] = ("train", "validation"), limit: int | None = None) -> dict:
    """Writes `<out_dir>/<split>.npz` and `meta.json` for a trained stage-1 run; returns the meta dict."""
    from rq_jax.trainers.rqvae import load_rqvae

    model, config, step = load_rqvae(rqvae_workdir)
    os.makedirs(out_dir, exist_ok=True)
    codebook = np.asarray(model.codebook_state.embedding_KxC, np.float32)
    suffix = f".{jax.process_index()}-of-{jax.process_count()}" if jax.process_count() > 1 else ""
    for split in splits:
        arrays = extract_split(model, config.data, split, batch_size=batch_size, flips=flips and split == "train",
                               limit=limit)
        np.savez(os.path.join(out_dir, f"{split}{suffix}.npz"), codebook=codebook, **arrays)
    _, info = build_image_pipeline(config.data, split="train", batch_size=1)
    meta = dict(rqvae_workdir=os.path.abspath(rqvae_workdir), rqvae_step=int(step),
                code_shape=list(config.model.code_shape), codebook_size=int(config.model.codebook_size),
                embed_dim=int(config.model.embed_dim), image_size=int(config.data.image_size),
                num_classes=int(info.num_classes), class_names=list(info.class_names), flips=flips,
                dataset=info.dataset)
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        if info.captions is not None:
            with open(os.path.join(out_dir, "captions.json"), "w") as f:
                json.dump(list(info.captions), f)
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], prog="python -m rq_jax.extract")
    p.add_argument("--rqvae", required=True, help="workdir of a trained stage-1 run")
    p.add_argument("--out", required=True, help="output directory of the stage-2 feature dataset")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--no_flips", action="store_true", help="do not add horizontally flipped copies")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split (tests)")
    a = p.parse_args(argv)
    meta = extract(a.rqvae, a.out, batch_size=a.batch_size, flips=not a.no_flips, limit=a.limit)
    print(f"wrote {a.out}: code shape {meta['code_shape']}, K={meta['codebook_size']}")


if __name__ == "__main__":
    main()
