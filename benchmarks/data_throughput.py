"""Input-pipeline throughput and peak memory: stage-1 images, stage-2 features, feature extraction.

    python -m benchmarks.data_throughput                                  # --scale small (~1 min on 2 cores)
    python -m benchmarks.data_throughput --scale full --root /data/bench --json data_throughput.json  # ~10 min
    python -m benchmarks.data_throughput --scale tiny --only stage2       # the harness (test suite)

Everything is built locally under --root (kept and reused by later runs; nothing is downloaded; --scale full
needs ~38 GB of free disk there for a while, 7 GB afterwards):
- `stage1`: synthetic ImageNet-sized JPEGs (~500x375, ~100 KB) as a tfds array_record dataset, read by
  `rq_jax.data.build_image_pipeline` (grain threads, grain worker processes), and the same images in tfrecord
  files (tfds reads array_record only as a random-access source) read by the standard tf.data pipeline (decode,
  random square crop of the shorter side, bilinear resize to 256, flip, batch).
- `stage2`: ImageNet-shaped feature records (8x8x256 float16) read by `rq_jax.data.features.build_feature_pipeline`
  from the page cache, beside the old whole-array `.npz` reader (reproduced here; no longer in the package).
- `stage2_large` (full scale only): ~30 GB of shards, more than this machine's RAM, read cold at random.
- `extract`: `python -m rq_jax.extract` on an initialised demo RQ-VAE for N and 4N images.

Each measurement runs in a fresh process (`--_case`, which prints one `RESULT {json}` line) after one warm-up
batch, so its peak RSS is its own: VmHWM of that process (the parent stays small and builds nothing itself; a
child's `ru_maxrss` would start from the parent's peak, as subprocess spawns with vfork). `extract` is the
command's `ru_maxrss` as wait4 reports it. The feature readers' peak includes a pause in consuming (`--pause` s)
after the timed batches, as a training step slower than the reader lets its read-ahead fill; the notes give the
peak before the pause. items/s per core divides by os.cpu_count().
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import pathlib
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib import metadata

import numpy as np

FEATURE_SHAPE = (8, 8, 256)  # ImageNet 8x8x4 RQ-VAE: 8x8 positions of 256 channels per record
RECORD_BYTES = 24 + 2 * int(np.prod(FEATURE_SHAPE))  # feature_format's header + float16 features
CODEBOOK_SIZE, NUM_CLASSES = 16384, 1000
REPO = pathlib.Path(__file__).resolve().parents[1]
CASES = ("stage1", "stage2", "stage2_large", "extract")
STAGE1_MODES = {"grain threads=2": (2, 0), "grain threads=4": (4, 0), "grain workers=1": (2, 1),
                "grain workers=2": (2, 2), "tf.data AUTOTUNE": None}  # (num_threads, worker_count)


@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes of one --scale preset."""

    images: int  # stage-1 JPEGs
    image_batch: int
    image_batches: int  # timed batches per stage-1 mode (after one warm-up batch)
    records: int  # stage-2 records (page-cache set)
    feature_batch: int
    feature_batches: int  # timed stage-2 batches
    records_per_shard: int | None  # None: feature_format's default (~1 GiB)
    pause: float  # seconds without consuming after the timed feature batches
    large_records: int  # stage2_large (0: not at this scale)
    large_batches: int
    extract: int  # N: extraction of N and 4N images


SCALES = {
    "tiny": Scale(8, 4, 4, 64, 16, 8, 16, 0.5, 0, 0, 8),
    "small": Scale(64, 16, 32, 2000, 256, 80, 256, 2.0, 0, 0, 32),
    "full": Scale(2000, 64, 63, 100_000, 256, 400, None, 5.0, 940_000, 200, 250),
}


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB: VmHWM on Linux (this program only), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.MULTILINE)[1])
    except (OSError, TypeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---- data ------------------------------------------------------------------------------------------------
def synthetic_jpeg(rng: np.random.Generator) -> bytes:
    """A photo-like JPEG (quality 90) of ImageNet's typical size: smooth gradients, shapes, texture and noise."""
    from PIL import Image, ImageDraw, ImageFilter

    w, h = (500, 375) if rng.random() < 0.7 else (375, 500)
    s = rng.uniform(0.8, 1.2)
    w, h = int(w * s), int(h * s)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / np.array([h, w], np.float32)[:, None, None]
    chans = []
    for _ in range(3):
        a, b, f1, f2, p = rng.uniform(-1, 1, 5)
        chans.append(128 + 60 * (a * x + b * y) + 30 * np.sin(6 * f1 * x + 6 * f2 * y + 3 * p))
    img = Image.fromarray(np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 15))):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        box = (x0, y0, x0 + rng.uniform(10, w / 2), y0 + rng.uniform(10, h / 2))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    img = img.filter(ImageFilter.GaussianBlur(1.0))
    texture = Image.fromarray(rng.integers(0, 256, (h // 3, w // 3, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = (np.asarray(img, np.float32) + 0.6 * (np.asarray(texture, np.float32) - 128)
           + rng.normal(0, 8, (h, w, 3)).astype(np.float32))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def tfds_dir(root: str, n: int, file_format: str) -> str:
    return os.path.join(root, f"tfds_{n}_{file_format}", "synthetic_imagenet", "1.0.0")


def build_tfds(root: str, n: int, file_format: str) -> str:
    """The synthetic ImageNet as a prepared tfds dataset of n images (reused); returns its directory. The same
    images in either format: array_record for grain, tfrecord for tf.data (tfds reads array_record only as a
    random-access data source, not with `as_dataset`)."""
    import tensorflow_datasets as tfds

    class SyntheticImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """n synthetic JPEGs with random labels, stored as they are encoded (no re-encoding)."""

        VERSION = tfds.core.Version("1.0.0")
        pkg_dir_path = tfds.core.Path(__file__).parent  # its metadata folder (none); __main__ is not a package

        def _info(self):
            return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            rng = np.random.default_rng(0)
            for i in range(n):
                yield i, {"image": synthetic_jpeg(rng), "label": int(rng.integers(NUM_CLASSES))}

    out = tfds_dir(root, n, file_format)
    if not os.path.exists(os.path.join(out, "dataset_info.json")):
        builder = SyntheticImagenet(data_dir=os.path.dirname(os.path.dirname(out)), file_format=file_format)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return out


def feature_dir(root: str, s: Scale, large: bool) -> tuple[int, str]:
    """(records, directory) of the stage-2 set or the large one; the `.npz` of the same records is DIR.npz."""
    n = s.large_records if large else s.records
    return n, os.path.join(root, f"features_{'large_' if large else ''}{n}")


def _chunks(start: int, stop: int, chunk: int = 1024):
    """(first index, features float16 [c, 8, 8, 256], labels [c]) of deterministic records start..stop-1."""
    base = np.random.default_rng(0).standard_normal((chunk, *FEATURE_SHAPE), np.float32).astype(np.float16)
    for i in range(start, stop, chunk):
        c = min(chunk, stop - i)
        yield i, np.roll(base[:c], i // chunk, axis=0), ((np.arange(i, i + c) * 7919) % NUM_CLASSES).astype(np.int32)


def _drop_cache(path: str) -> None:
    """Evicts a written file from the page cache (the next read of it comes from the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_features(out: str, n: int, records_per_shard: int | None, *, npz: str | None = None,
                   cold: bool = False) -> None:
    """A stage-2 feature directory of n records, and the same records in the old `.npz` format if `npz`.

    Up to 20,000 records go through `feature_format.write_feature_dir` and `np.savez`; larger sets are written
    shard by shard in chunks, in the same layouts (never more than ~100 MB in memory). `cold`: each shard is
    evicted from the page cache once written.
    """
    from rq_jax.data import feature_format as fmt

    meta = dict(code_shape=[8, 8, 4], codebook_size=CODEBOOK_SIZE, embed_dim=FEATURE_SHAPE[-1],
                num_classes=NUM_CLASSES, class_names=[f"class_{i}" for i in range(NUM_CLASSES)], dataset="synthetic")
    codebook = np.random.default_rng(1).standard_normal((CODEBOOK_SIZE, FEATURE_SHAPE[-1]), np.float32)
    captions = np.full(n, -1, np.int32)
    if n <= 20_000:
        parts = list(_chunks(0, n))
        features, labels = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
        arrays = dict(features=features, label=labels, caption=captions, flipped=np.zeros(n, bool),
                      source_index=np.arange(n))
        fmt.write_feature_dir(out, meta, codebook, {"train": arrays}, records_per_shard=records_per_shard)
        if npz:
            np.savez(npz, features=features, labels=labels, captions=captions, codebook=codebook)
        return
    zf = zipfile.ZipFile(npz, "w", allowZip64=True) if npz else None  # np.savez's layout: a zip of .npy files
    npy = zf.open("features.npy", "w", force_zip64=True) if zf else None
    if npy:
        np.lib.format.write_array_header_2_0(npy, dict(descr="<f2", fortran_order=False, shape=(n, *FEATURE_SHAPE)))
    rps = int(records_per_shard or fmt.default_records_per_shard(FEATURE_SHAPE))
    count, shards, labels = -(-n // rps), [], []
    for k in range(count):
        name = fmt.shard_name("train", k, count)
        writer = fmt.ShardWriter(os.path.join(out, name))
        for i, features, chunk_labels in _chunks(k * rps, min((k + 1) * rps, n)):
            c = len(features)
            writer.write(fmt.encode_records(features, np.arange(i, i + c), chunk_labels, captions[:c], np.zeros(c)))
            labels.append(chunk_labels)
            if npy:
                npy.write(features.tobytes())
        writer.close()
        if cold:
            _drop_cache(writer.path)
        shards.append(dict(file=name, num_records=writer.num_records))
    if zf:
        npy.close()
        for key, arr in dict(labels=np.concatenate(labels), captions=captions, codebook=codebook).items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr)
        zf.close()
    np.save(os.path.join(out, "codebook.npy"), codebook)
    meta.update(format=fmt.FORMAT, dtype="float16", codebook="codebook.npy", q_tau=None,
                splits={"train": dict(num_records=n, num_images=n, flips=False, shards=shards)})
    fmt.write_json_atomic(os.path.join(out, "meta.json"), meta)


def make_stage1_run(a: argparse.Namespace, s: Scale, n: str) -> dict:
    """An initialised demo RQ-VAE (configs/rqvae/demo.py:runlocal) saved at step 0, its data the embedded set
    (enough for a train split of 4N images), as the stage1_run fixture of tests/sharding/test_multiprocess_stage2.py
    makes it, in --root/extract_N/rqvae."""
    import jax

    from configs.rqvae import demo
    from rq_jax import checkpoints, sharding
    from rq_jax.trainers import loop
    from rq_jax.trainers import rqvae as stage1

    root, start = os.path.join(a.root, f"extract_{n}"), time.perf_counter()
    c = demo.get_config("runlocal")
    c.data.data_dir, c.data.limit = os.path.join(root, "data"), 4 * int(n) * 10 // 9 + 16  # val_every 10
    c.mesh.shape = {"data": 1, "fsdp": 1, "tensor": 1}
    mesh = sharding.mesh_from_config({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    tx_gen, _ = stage1.make_optimizer(c.train.lr, c.train, 1)
    tx_disc, _ = stage1.make_optimizer(c.train.disc_lr, c.train, 1)
    setup = stage1.setup_state(c, mesh, tx_gen, tx_disc)
    workdir = os.path.join(root, "rqvae")
    ckpt = checkpoints.Checkpointer(workdir, with_data=False, async_save=False)
    ckpt.save(0, setup.init())
    ckpt.close()
    loop.write_run_config(c, workdir)
    return dict(seconds=time.perf_counter() - start, notes=workdir)


def build(a: argparse.Namespace, s: Scale, what: str) -> dict:
    """Writes the data of a case under --root (reused where it exists); seconds taken."""
    start = time.perf_counter()
    if what == "stage1":
        path = build_tfds(a.root, s.images, "array_record")
        build_tfds(a.root, s.images, "tfrecord")
        kb = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / s.images / 1e3
        return dict(seconds=time.perf_counter() - start, notes=f"~{kb:.0f} KB each")
    n, out = feature_dir(a.root, s, what == "large")
    if what == "large" or not os.path.exists(f"{out}.npz"):  # the .npz is renamed into place last
        shutil.rmtree(out, ignore_errors=True)
        write_features(out, n, s.records_per_shard, npz=None if what == "large" else f"{out}.tmp.npz",
                       cold=what == "large")
        if what != "large":
            os.replace(f"{out}.tmp.npz", f"{out}.npz")
    return dict(seconds=time.perf_counter() - start, notes=f"{n * RECORD_BYTES / 1e9:.1f} GB")


# ---- measurements (each in its own process) ---------------------------------------------------------------
def _time_batches(it, batches: int, batch: int) -> tuple[int, float]:
    next(it)  # warm-up: start-up, first reads, thread/process pools
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch, time.perf_counter() - start


def case_stage1(a: argparse.Namespace, s: Scale, mode: str) -> dict:
    """Images/s of one stage-1 pipeline over the synthetic tfds dataset."""
    if STAGE1_MODES[mode] is None:
        import tensorflow as tf
        import tensorflow_datasets as tfds

        def prep(ex):  # rq_jax's training transform: random square of the shorter side, bilinear, flip, [-1, 1]
            img = tf.io.decode_jpeg(ex["image"], channels=3)
            side = tf.reduce_min(tf.shape(img)[:2])
            img = tf.image.random_crop(img, tf.stack([side, side, 3]))
            img = tf.image.resize(img, [256, 256], method="bilinear", antialias=True)
            img = tf.image.random_flip_left_right(img)
            return {"image": img / 127.5 - 1.0, "label": tf.cast(ex["label"], tf.int32)}

        ds = tfds.builder_from_directory(tfds_dir(a.root, s.images, "tfrecord")).as_dataset(
            split="train", shuffle_files=True, decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.repeat().shuffle(min(s.images, 1024), seed=0).map(prep, num_parallel_calls=tf.data.AUTOTUNE)
        it = ds.batch(s.image_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
        notes = "decode_jpeg, random_crop, resize(antialias), flip; shuffle buffer " + str(min(s.images, 1024))
    else:
        from absl import flags

        from rq_jax.data import build_image_pipeline, default_config

        flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
        threads, workers = STAGE1_MODES[mode]
        path = tfds_dir(a.root, s.images, "array_record")
        cfg = default_config(name="tfds", tfds_name=path, image_size=256, num_threads=threads, worker_count=workers)
        it, _ = build_image_pipeline(cfg, split="train", batch_size=s.image_batch, seed=0)
        notes = f"num_threads={threads}, worker_count={workers}"
    items, seconds = _time_batches(it, s.image_batches, s.image_batch)
    return dict(items=items, seconds=seconds, notes=f"{notes}; batch {s.image_batch}")


class OldNpzSource:
    """The old in-RAM reader (rq_jax.data.features.FeatureSource before the ArrayRecord shards)."""

    def __init__(self, path: str):
        with np.load(path) as f:
            self.features, self.labels, self.captions = f["features"], f["labels"], f["captions"]

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"features": self.features[i].astype(np.float32), "label": self.labels[i], "caption": self.captions[i]}


def case_stage2(a: argparse.Namespace, s: Scale, mode: str) -> dict:
    """Examples/s and memory of a feature reader: `new` (warm page cache), `old` (.npz) or `large` (cold)."""
    import grain

    from rq_jax.data.features import build_feature_pipeline

    n, out = feature_dir(a.root, s, mode == "large")
    if mode == "new":  # one pass over the files: in the page cache, as on a machine that read them before
        for dirpath, _, files in os.walk(out):
            for f in files:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    while fh.read(1 << 24):
                        pass
    if mode == "old":  # the old build_feature_pipeline, as it was
        src = OldNpzSource(f"{out}.npz")
        it = grain.MapDataset.source(src).shuffle(seed=0).repeat().batch(s.feature_batch).to_iter_dataset().__iter__()
        reader = "whole .npz in RAM; to_iter_dataset() defaults: 16 threads, 500 batches ahead"
    else:
        it, _ = build_feature_pipeline(out, split="train", batch_size=s.feature_batch, seed=0,
                                       process_index=0, process_count=1)
        reader = "build_feature_pipeline's defaults" + ("; files read once first (page cache)" if mode == "new" else "")
    batches = s.large_batches if mode == "large" else s.feature_batches
    items, seconds = _time_batches(it, batches, s.feature_batch)
    before = peak_rss_kib() / 1024
    time.sleep(s.pause)  # the consumer stalls (a training step): the read-ahead fills
    return dict(items=items, seconds=seconds, notes=f"{reader}; peak before the {s.pause:g} s pause {before:,.0f} "
                f"MiB; batch {s.feature_batch}, {n:,} records ({n * RECORD_BYTES / 1e9:.2f} GB)")


# ---- the parent: child processes, table (it stays small: ru_maxrss of a child counts the spawner's peak) ------
def _spawn(cmd: list[str]) -> tuple[str, float, float]:
    """(output, wall s, peak RSS MiB of the process and its descendants, as wait4 reports it) of a command; raises
    with its output when it fails."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        log.seek(0)
        out = log.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}")
    return out, wall, usage.ru_maxrss / 1024


def _child(a: argparse.Namespace, key: str) -> tuple[dict, float]:
    """`--_case key` in a fresh process: its RESULT, and the peak RSS (MiB) of its process tree."""
    out, _, tree = _spawn([sys.executable, "-m", "benchmarks.data_throughput", "--_case", key, "--scale", a.scale,
                           "--root", a.root, "--pause", str(a.pause)])
    return json.loads(re.findall(r"^RESULT (.*)$", out, re.MULTILINE)[-1]), tree


def _row(case: str, mode: str, items: int, per_s: float, rss: float, notes: str) -> dict:
    print(f"  {case} / {mode}: {per_s:,.1f} items/s, peak RSS {rss:,.0f} MiB", flush=True)
    return dict(case=case, mode=mode, items=items, items_per_s=per_s, items_per_s_per_core=per_s / os.cpu_count(),
                peak_rss_mib=rss, notes=notes)


def _measure(a: argparse.Namespace, case: str, mode: str) -> dict:
    r, tree = _child(a, f"{case}:{mode}")
    rss = r["rss_kib"] / 1024
    notes = r["notes"] + (f"; largest process of its tree {tree:,.0f} MiB" if tree > rss * 1.05 else "")
    return _row(case, mode, r["items"], r["items"] / r["seconds"], rss, notes)


def run_stage1(a: argparse.Namespace, s: Scale) -> list[dict]:
    r, _ = _child(a, "build:stage1")
    print(f"stage1: {s.images} JPEGs ({r['notes']}) as tfds array_record and tfrecord under {a.root} "
          f"({r['seconds']:.1f} s)", flush=True)
    return [_measure(a, "stage1", mode) for mode in STAGE1_MODES]


def run_stage2(a: argparse.Namespace, s: Scale) -> list[dict]:
    r, _ = _child(a, "build:stage2")
    print(f"stage2: {s.records:,} records in {a.root} (.npz and shards; {r['seconds']:.1f} s)", flush=True)
    return [_measure(a, "stage2", mode) for mode in ("new", "old")]


def run_stage2_large(a: argparse.Namespace, s: Scale) -> list[dict]:
    print(f"stage2_large: writing {s.large_records:,} records ...", flush=True)
    try:
        r, _ = _child(a, "build:large")
        print(f"stage2_large: {r['notes']} in {r['seconds']:.0f} s", flush=True)
        row = _measure(a, "stage2", "large")
    finally:
        if not a.keep:
            shutil.rmtree(os.path.join(a.root, f"features_large_{s.large_records}"), ignore_errors=True)
    gbps = s.large_records * RECORD_BYTES / 1e9 / r["seconds"]
    row.update(case="stage2_large", mode="new, cold, random access",
               notes=f"{row['notes']}; written in {r['seconds']:.0f} s ({gbps:.2f} GB/s)")
    return [row]


def run_extract(a: argparse.Namespace, s: Scale) -> list[dict]:
    n = s.extract
    workdir = os.path.join(a.root, f"extract_{n}", "rqvae")
    if not os.path.exists(os.path.join(workdir, "config.json")):
        _child(a, f"make_run:{n}")
    rows = []
    for count in (n, 4 * n):
        out = os.path.join(a.root, f"extract_{n}", f"features_{count}")
        shutil.rmtree(out, ignore_errors=True)  # a rerun would resume, i.e. do nothing
        stdout, wall, rss = _spawn([sys.executable, "-m", "rq_jax.extract", "--rqvae", workdir, "--out", out,
                                    "--batch_size", "16", "--limit", str(count), "--records_per_shard", "64"])
        rate = [float(r) for r in re.findall(r"^train: \d+/\d+ images \| ([\d.]+) img/s", stdout, re.MULTILINE)]
        with open(os.path.join(out, "meta.json")) as f:
            images = sum(int(v["num_images"]) for v in json.load(f)["splits"].values())
        rows.append(_row("extract", f"--limit {count}", images, rate[-1], rss,
                         f"img/s: the command's train-split line; wall {wall:.1f} s for all {images} images "
                         "(train + validation, each also flipped) incl. start-up and compilation"))
    return rows


def facts() -> str:
    """CPUs, RAM and the versions of the packages measured."""
    versions = []
    for package in ("jax", "grain", "tensorflow-cpu", "tensorflow", "tensorflow-datasets", "array-record", "pillow"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return f"{os.cpu_count()} CPUs, {ram:.0f} GiB RAM; {', '.join(versions)}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--only", help=f"comma-separated cases of {','.join(CASES)} (default: all of this scale)")
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "rq_jax_data_throughput"),
                   help="where the data are built (kept for later runs)")
    p.add_argument("--json", help="also write the table (and the machine facts) to this JSON file")
    p.add_argument("--pause", type=float, default=None, help="seconds without consuming after the feature batches")
    p.add_argument("--keep", action="store_true", help="keep the stage2_large set")
    p.add_argument("--_case", help=argparse.SUPPRESS)  # internal: one measurement in this process
    a = p.parse_args(argv)
    s = SCALES[a.scale]
    if a.pause is not None:
        s = dataclasses.replace(s, pause=a.pause)
    a.pause = s.pause
    if a._case:
        case, mode = a._case.split(":", 1)
        r = dict(build=build, make_run=make_stage1_run, stage1=case_stage1, stage2=case_stage2)[case](a, s, mode)
        print("RESULT " + json.dumps(dict(r, rss_kib=peak_rss_kib())), flush=True)
        return
    cases = a.only.split(",") if a.only else [c for c in CASES if c != "stage2_large" or s.large_records]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}")
    if "stage2_large" in cases and not s.large_records:
        p.error("stage2_large runs at --scale full only")
    a.root = os.path.abspath(a.root)
    os.makedirs(a.root, exist_ok=True)
    machine = facts()
    print(f"{machine}\ndata under {a.root}, --scale {a.scale}", flush=True)
    runners = dict(stage1=run_stage1, stage2=run_stage2, stage2_large=run_stage2_large, extract=run_extract)
    rows = [row for case in cases for row in runners[case](a, s)]
    print(f"\n{machine}; --scale {a.scale}\n")
    print("| case | mode | items | items/s | items/s per core | peak RSS MiB | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['case']} | {r['mode']} | {r['items']:,} | {r['items_per_s']:,.1f} | "
              f"{r['items_per_s_per_core']:,.1f} | {r['peak_rss_mib']:,.0f} | {r['notes']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(machine=machine, scale=a.scale, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
