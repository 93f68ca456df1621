"""benchmarks/sample_startup.py at smoke sizes: it writes trainer-shaped runs and times `python -m rq_jax.sample`
in fresh processes, so the script behind the start-up figures in benchmarks/RESULTS.md cannot rot."""

import re

import pytest


@pytest.mark.slow
def test_sample_startup_smoke(tmp_path, capsys):
    from benchmarks import sample_startup

    sample_startup.main(["--smoke", "--dir", str(tmp_path), "--warm", "0"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| cold cache |"))
    assert re.search(r"^\| cold cache \| [\d.]+ \| -?[\d.]+ \| load [\d.]+ s, sample [\d.]+ s, decode [\d.]+ s \|$",
                     row), out  # wall, start-up, the command's own time line
    assert re.search(r"^work \(sampling \+ decoding, .*\): [\d.]+ s$", out, re.MULTILINE), out
    assert (tmp_path / "samples.png").exists()
