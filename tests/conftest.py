"""Every test sees 8 fake CPU devices: the flag must be set before JAX is imported."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

DATA_DIR = pathlib.Path(__file__).parent / "data"

# Trainer tests compile the same step several times (resume, SIGTERM, configs): a persistent
# compilation cache (ignored by git) turns the repeats into cache hits.
_CACHE = pathlib.Path(__file__).parent.parent / ".pytest_data" / "jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a slower test (still run in CI)")


@pytest.fixture(scope="session")
def golden():
    """The official PyTorch implementation's tiny-model parameters and outputs (see tests/data/README.md)."""
    with np.load(DATA_DIR / "official_tiny.npz") as f:
        return {k: f[k] for k in f.files}
