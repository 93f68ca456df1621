"""benchmarks/data_throughput.py at its tiny preset, end to end through the command line: every measurement in
its own process, the table and the JSON, so the script behind the input-pipeline figures cannot rot."""

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO


def run_benchmark(tmp_path, only: str) -> tuple[str, list[dict]]:
    out_json = tmp_path / "table.json"
    cmd = [sys.executable, "-m", "benchmarks.data_throughput", "--scale", "tiny", "--only", only,
           "--root", str(tmp_path / "data"), "--json", str(out_json)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(out_json.read_text())["rows"]


def assert_rows(out: str, rows: list[dict], case: str, modes: list[str]) -> None:
    assert [(r["case"], r["mode"]) for r in rows] == [(case, m) for m in modes], out
    for r in rows:
        assert r["items"] > 0 and r["items_per_s"] > 0 and r["items_per_s_per_core"] > 0, r
        assert 50 < r["peak_rss_mib"] < 4096, r  # a Python process with numpy/grain, far from the read-ahead of old
        line = next(line for line in out.splitlines() if line.startswith(f"| {case} | {r['mode']} |"))
        assert re.match(rf"^\| {case} \| {re.escape(r['mode'])} \| [\d,]+ \| [\d,.]+ \| [\d,.]+ \| [\d,]+ \| .+ \|$",
                        line), line
    assert re.search(r"^\d+ CPUs, \d+ GiB RAM; jax [\d.]+, grain [\d.]+", out, re.MULTILINE), out


def test_stage2_feature_readers(tmp_path):
    out, rows = run_benchmark(tmp_path, "stage2")
    assert_rows(out, rows, "stage2", ["new", "old"])
    meta = json.loads((tmp_path / "data" / "features_64" / "meta.json").read_text())
    assert meta["splits"]["train"]["num_records"] == 64 and len(meta["splits"]["train"]["shards"]) == 4
    assert (tmp_path / "data" / "features_64.npz").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="the tf.data baseline needs tensorflow")
def test_stage1_image_pipelines(tmp_path):
    out, rows = run_benchmark(tmp_path, "stage1")
    assert_rows(out, rows, "stage1", ["grain threads=2", "grain threads=4", "grain workers=1", "grain workers=2",
                                      "tf.data AUTOTUNE"])
    sizes = re.search(r"^stage1: 8 JPEGs \(~(\d+) KB each\)", out, re.MULTILINE)
    assert sizes and 60 <= int(sizes[1]) <= 200, out  # photo-like JPEGs of ImageNet's size
