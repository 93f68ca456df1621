"""`python -m rq_jax.extract`: shards equal to encoding the images directly, a killed extraction that resumes to
exactly the records of an uninterrupted one, one sentence for a directory of another extraction, and peak memory
that does not grow with the number of images."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rq_jax import checkpoints, sharding
from rq_jax.data import feature_format as fmt
from rq_jax.data.features import FeatureSource
from rq_jax.trainers import loop
from rq_jax.trainers import rqvae as stage1
from tests.helpers import assert_one_line_error
from tests.helpers import load_repo_config as load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    """An initialised (untrained) tiny RQ-VAE saved as step 0: extraction needs only its encoder and codebook."""
    root = tmp_path_factory.mktemp("extract")
    c = load_config("configs/rqvae/demo.py", "runlocal")
    c.data.data_dir, c.data.limit = str(root / "data"), 1800  # 1,620 training images
    c.model.embed_dim = 128  # 64 KiB records: what the memory test measures stands out of the noise
    mesh = sharding.mesh_from_config({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    setup = stage1.setup_state(c, mesh, stage1.make_optimizer(c.train.lr, c.train, 1)[0],
                               stage1.make_optimizer(c.train.disc_lr, c.train, 1)[0])
    ckpt = checkpoints.Checkpointer(str(root / "rqvae"), with_data=False, async_save=False)
    ckpt.save(0, setup.init())
    ckpt.close()
    loop.write_run_config(c, str(root / "rqvae"))
    return root


def _all(features_dir, split: str) -> dict[str, np.ndarray]:
    """Every record of a split, sorted by (source index, flipped)."""
    src = FeatureSource(str(features_dir), split)
    rec = src.read(np.arange(len(src)))
    order = np.lexsort((rec["flipped"], rec["source_index"]))
    return {k: v[order] for k, v in rec.items()}


def test_shards_hold_the_encoder_features_of_every_image_and_flip(stage1_run):
    from rq_jax.data.pipeline import build_image_pipeline
    from rq_jax.extract import extract
    from rq_jax.runs import load_rqvae

    out = stage1_run / "direct"
    meta = extract(str(stage1_run / "rqvae"), str(out), batch_size=8, limit=20, records_per_shard=6)
    train = meta["splits"]["train"]
    assert train["num_records"] == 40 and [s["num_records"] for s in train["shards"]] == [6] * 6 + [4]
    assert meta["splits"]["validation"]["num_records"] == 20  # no flips
    assert meta["q_tau"]["rows"] and (out / "codebook.npy").exists()
    assert json.loads((out / "meta.json").read_text())["splits"] == meta["splits"]
    got = _all(out, "train")
    np.testing.assert_array_equal(got["source_index"], np.repeat(np.arange(20), 2))
    np.testing.assert_array_equal(got["flipped"], np.tile([False, True], 20))

    model, config, _ = load_rqvae(str(stage1_run / "rqvae"))
    it, _ = build_image_pipeline(config.data, split="train", batch_size=20, shuffle=False, repeat=False,
                                 augment=False, process_index=0, process_count=1)
    batch = next(it)
    np.testing.assert_array_equal(got["label"][::2], batch["label"])
    for flipped in (0, 1):
        x = batch["image"][:, :, ::-1] if flipped else batch["image"]
        want = np.asarray(jax.jit(model.encode_features)(x)).astype(np.float16).astype(np.float32)
        np.testing.assert_allclose(got["features"][flipped::2], want, rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(FeatureSource(str(out), "train").codebook,
                                  np.asarray(model.codebook_state.embedding_KxC))


def _cli(stage1_run, out, *extra) -> list[str]:
    return [sys.executable, "-m", "rq_jax.extract", f"--rqvae={stage1_run / 'rqvae'}", f"--out={out}",
            "--batch_size=4", "--limit=64", "--records_per_shard=4", "--tau=0.5", *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _kill_after_shards(cmd, out, count: int, sig: int) -> int:
    """Starts the command and sends `sig` once `count` train shards exist; returns the exit code."""
    p = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while p.poll() is None and time.monotonic() < deadline:
        if len(list((out / "train").glob("*.array_record"))) >= count:
            p.send_signal(sig)
            break
        time.sleep(0.01)
    return p.wait(timeout=60)


@pytest.mark.slow
def test_killed_extraction_resumes_to_exactly_the_uninterrupted_records(stage1_run):
    straight, killed = stage1_run / "straight", stage1_run / "killed"
    subprocess.run(_cli(stage1_run, straight), env=_env(), cwd=REPO, check=True, capture_output=True)
    assert _kill_after_shards(_cli(stage1_run, killed), killed, 3, signal.SIGKILL) == -signal.SIGKILL
    assert not (killed / "meta.json").exists()
    first = sorted(p.name for p in (killed / "train").glob("*.array_record"))
    assert 3 <= len(first) < 32  # 64 images + flips, 2 images a shard
    assert _kill_after_shards(_cli(stage1_run, killed), killed, len(first) + 3, signal.SIGTERM) == -signal.SIGTERM
    done = subprocess.run(_cli(stage1_run, killed), env=_env(), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "shards are complete; resuming" in done.stdout
    assert not list(killed.glob("*/*.tmp-*"))  # what the killed runs were writing is gone
    for split in ("train", "validation"):
        a, b = _all(straight, split), _all(killed, split)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])  # the same records, features bit for bit
    assert len(np.unique(a["source_index"])) == len(a["source_index"]) // (2 if split == "train" else 1)


def test_a_directory_of_another_extraction_is_one_sentence(stage1_run, capsys):
    from rq_jax.extract import main

    out = stage1_run / "other"
    main([f"--rqvae={stage1_run / 'rqvae'}", f"--out={out}", "--batch_size=8", "--limit=8", "--tau=0.5"])
    with pytest.raises(SystemExit) as e:
        main([f"--rqvae={stage1_run / 'rqvae'}", f"--out={out}", "--batch_size=8", "--limit=16", "--tau=0.5"])
    assert e.value.code == 1
    assert_one_line_error(capsys.readouterr().err, "holds an extraction with other settings (splits differ")
    with pytest.raises(SystemExit) as e:
        main([f"--rqvae={stage1_run / 'rqvae'}", f"--out={out}", "--records_per_shard=0"])
    assert e.value.code == 2


RSS = """
import sys
from rq_jax.extract import extract
extract(sys.argv[1], sys.argv[2], batch_size=32, limit=int(sys.argv[3]), splits=("train",), records_per_shard=512)
print("peak", int([ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]) // 1024)
"""


@pytest.mark.slow
def test_extraction_memory_does_not_grow_with_the_images(stage1_run):
    """Peak RSS extracting 1,024 images exceeds that of 256 by < 48 MiB (the better of two runs each; the
    old extractor, which held every batch and then concatenated them, measured +112 to +131 MiB here:
    768 images x 2 flips x 64 KiB = 96 MiB a copy). glibc's per-thread malloc arenas are capped
    (MALLOC_ARENA_MAX), else how many its threads touch moves the peak by +-60 MiB. VmHWM, not ru_maxrss:
    after fork + exec, ru_maxrss still counts the parent's resident memory."""
    env = dict(_env(), MALLOC_ARENA_MAX="2")
    peaks = {}
    for n in (256, 1024):
        for i in range(2):
            out = subprocess.run([sys.executable, "-c", RSS, str(stage1_run / "rqvae"),
                                  str(stage1_run / f"rss{n}_{i}"), str(n)], env=env, cwd=REPO, capture_output=True,
                                 text=True)
            assert out.returncode == 0, out.stderr[-3000:]
            peaks[n] = min(peaks.get(n, 1 << 30), int(out.stdout.split("peak")[-1]))
    assert fmt.shard_num_records(str(next((stage1_run / "rss1024_0" / "train").glob("*00000-*")))) == 512
    assert peaks[1024] - peaks[256] < 48, peaks
