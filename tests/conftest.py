"""Every test sees 8 fake CPU devices: the flag must be set before JAX is imported. Also the session-wide
tiny stage-1 + stage-2 training run shared by the trainer, generation-evaluation and notebook tests."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import load_repo_config  # noqa: E402

DATA_DIR = pathlib.Path(__file__).parent / "golden"
REPO = pathlib.Path(__file__).resolve().parent.parent

# Trainer tests compile the same step several times (resume, SIGTERM, configs): a persistent
# compilation cache (ignored by git) turns the repeats into cache hits.
_CACHE = pathlib.Path(__file__).parent.parent / ".pytest_data" / "jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a slower test (still run in CI)")


@pytest.fixture(scope="session")
def golden():
    """The official PyTorch implementation's tiny-model parameters and outputs (see tests/golden/README.md)."""
    with np.load(DATA_DIR / "official_tiny.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def tiny_stage2_runs(tmp_path_factory):
    """(root, stage-2 config, eval scalars): a tiny stage 1 on 160 demo images, features of 32 of them, a
    tiny class-conditional stage 2 (CFG null class) in root/{rqvae,features,transformer}; ~2-3 min on CPU."""
    from rq_jax.extract import extract
    from rq_jax.trainers import rq_transformer as t2
    from rq_jax.trainers.rqvae import train

    tmp = tmp_path_factory.mktemp("stage2")
    c1 = load_repo_config("configs/rqvae/demo.py", "runlocal")
    c1.data.data_dir = str(tmp / "data")
    c1.data.limit = 160
    train(c1, str(tmp / "rqvae"))
    extract(str(tmp / "rqvae"), str(tmp / "features"), batch_size=16, limit=32)
    c2 = load_repo_config("configs/transformer/demo.py", "runlocal")
    c2.rqvae = c1
    c2.rqvae_workdir = str(tmp / "rqvae")
    c2.data.features_dir = str(tmp / "features")
    c2.train.peak_flops = 1e12  # exercises the FLOP count and MFU logging on the CPU
    scalars = t2.train(c2, str(tmp / "transformer"))
    return tmp, c2, scalars


# The longest test files first: under `pytest -n 2 --dist loadfile` (make test) each starts at once on a
# worker instead of being the last file left running while the other worker idles.
HEAVY_FIRST = ("trainers/test_rqvae_trainer.py", "sharding/test_multiprocess.py",
               "trainers/test_transformer_trainer.py", "sharding/test_multiprocess_stage2.py", "eval/test_generate.py",
               "sharding/test_mesh_equivalence.py")


def pytest_collection_modifyitems(config, items):
    root = pathlib.Path(__file__).parent
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}

    def key(item):
        try:
            rel = pathlib.Path(str(item.fspath)).relative_to(root).as_posix()
        except ValueError:
            rel = ""
        return rank.get(rel, len(rank))

    items.sort(key=key)  # stable: the order inside a file and among the other files is unchanged
