"""`python -m rq_jax.compile_check`: the run's programs compiled by libtpu for TPU slices, on this CPU.

The compile tests run where libtpu (TPU) or the jax CUDA plugin (GPU) is installed (`make test` puts them in
.venv/libtpu and .venv/cuda_plugin, outside the venv's site-packages, so CPU runs never load them) and are
skipped elsewhere.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import assert_one_line_error

REPO = pathlib.Path(__file__).resolve().parents[2]
LIBTPU_DIR = pathlib.Path(sys.prefix) / "libtpu"
CUDA_DIR = pathlib.Path(sys.prefix) / "cuda_plugin"
STAGE1 = "configs/rqvae/imagenet_8x8x4.py:runlocal"
STAGE2 = "configs/transformer/imagenet_480m.py:runlocal"


def _env(with_libtpu: bool = True, with_cuda: bool = False) -> dict[str, str] | None:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    paths = [str(REPO)]
    if with_libtpu and importlib.util.find_spec("libtpu") is None:
        if not (LIBTPU_DIR / "libtpu").is_dir():
            return None
        paths.insert(0, str(LIBTPU_DIR))
    if with_cuda and importlib.util.find_spec("jax_cuda12_plugin") is None:
        if not (CUDA_DIR / "jax_cuda12_plugin").is_dir():
            return None
        paths.insert(0, str(CUDA_DIR))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


needs_libtpu = pytest.mark.skipif(_env() is None, reason="libtpu is not installed (pip install 'jax[tpu]')")
needs_cuda_plugin = pytest.mark.skipif(_env(False, True) is None, reason="the jax CUDA plugin is not installed")


def run(*args: str, with_libtpu: bool = True, with_cuda: bool = False, timeout: int = 600
        ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rq_jax.compile_check", *args], cwd=REPO,
                          env=_env(with_libtpu, with_cuda), capture_output=True, text=True, timeout=timeout)


def test_bad_topology_is_one_line_and_exit_2():
    p = run("--config", STAGE2, "--topology", "v5e-48", with_libtpu=False)
    assert_one_line_error(p.stderr, "power of two", code=p.returncode, want_code=2)
    p = run("--config", STAGE2, "--topology", "tpu-v9", with_libtpu=False)
    assert_one_line_error(p.stderr, "unknown TPU topology 'tpu-v9'", code=p.returncode, want_code=2)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu is in this environment")
def test_missing_libtpu_names_the_install_command():
    p = run("--config", STAGE2, "--topology", "v5e-4", with_libtpu=False)
    assert_one_line_error(p.stderr, 'pip install "jax[tpu]==', code=p.returncode, want_code=1)


@needs_libtpu
@pytest.mark.slow
def test_stage2_fits_and_reports_every_program(tmp_path):
    out = tmp_path / "report.json"
    p = run("--config", STAGE2, "--topology", "v5e-4", "--json", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "compiled, not run" in p.stdout and "v5litepod-4" in p.stdout
    reports = {r["program"]: r for r in json.loads(out.read_text())["reports"]}
    assert set(reports) == {"train step", "eval step", "sampler"}
    for r in reports.values():
        assert r["fits"] and 0 < r["total"] < r["hbm"] and r["flops"] > 0 and r["roofline_s"] > 0
        assert 0 < r["best_utilisation"] <= 1 and not r["lower_bound"]
    # Drawing 64 images with KV caches is about one forward pass over 64 sequences, i.e. 8x the evaluation
    # forward of batch 8: every trip of the loop over T positions x D depths is counted (once would be 1/256).
    ratio = reports["sampler"]["flops"] / (reports["eval step"]["flops"] * 64 / 8)
    assert 0.5 < ratio < 2, ratio


@needs_libtpu
@pytest.mark.slow
def test_does_not_fit_is_one_line_and_exit_1():
    p = run("--config", STAGE2, "--topology", "v5e-4", "--programs", "sample", "--sample_batch", "1000000")
    assert_one_line_error(p.stderr, "the sampler does not fit", code=p.returncode, want_code=1)
    assert "HBM" in p.stderr and "v5litepod-4" in p.stderr


@needs_libtpu
@pytest.mark.slow
def test_multislice_mesh_spans_the_slices():
    p = run("--config", STAGE2, "--topology", "v5e-4", "--num_slices", "2", "--programs", "eval")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "8 chips x 2 slices" in p.stdout and "'data': 8" in p.stdout and "{'data': 2}" in p.stdout


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("topology", ["v5e-4", "v4-8"])
def test_pallas_nearest_code_compiles_through_mosaic(tmp_path, topology):
    """The stage-1 train step with the Pallas TPU kernel (impl="pallas"), compiled for real: the kernel sits in a
    shard_map over every mesh axis and appears in the program as Mosaic custom calls, one per depth."""
    p = run("--config", STAGE1, "--topology", topology, "--programs", "train", "--hlo_dir", str(tmp_path),
            "--config.model.quantizer.impl=pallas")
    assert p.returncode == 0, p.stderr[-3000:]
    hlo = (tmp_path / "train_step.hlo.txt").read_text()
    assert hlo.count('custom_call_target="tpu_custom_call"') >= 4


@needs_cuda_plugin
@pytest.mark.slow
def test_gpu_deviceless_compile_with_the_triton_kernel(tmp_path):
    """8 x H100 through the pip CUDA plugin and XLA's GPU target description, no GPU: the stage-1 step with the
    Pallas GPU kernel (Triton) compiles, one Triton call per depth, and its memory is checked against the
    allocator's share of 80 GB."""
    out = tmp_path / "gpu.json"
    p = run("--config", STAGE1, "--topology", "h100-8", "--programs", "train", "--hlo_dir", str(tmp_path),
            "--json", str(out), "--config.model.quantizer.impl=pallas", with_libtpu=False, with_cuda=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "8 x H100" in p.stdout and "jax-cuda12-plugin" in p.stdout
    hlo = (tmp_path / "train_step.hlo.txt").read_text()
    assert hlo.count('custom_call_target="__gpu$xla.gpu.triton"') >= 4
    (r,) = json.loads(out.read_text())["reports"]
    assert r["fits"] and r["flops"] > 0 and abs(r["hbm"] - 0.75 * 84_942_979_072) < 1


@needs_cuda_plugin
@pytest.mark.slow
def test_gpu_does_not_fit_exits_1():
    p = run("--config", STAGE2, "--topology", "a100-8", "--programs", "sample", "--sample_batch", "4000000",
            with_libtpu=False, with_cuda=True)
    assert p.returncode == 1, p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "the sampler does not fit" in errors[0], p.stderr[-3000:]
