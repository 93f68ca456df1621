"""benchmarks/device_check.py at smoke sizes on the CPU: every section runs and the table is written, so the
script that measures a GPU in the rare sessions that have one cannot rot."""

import pytest


@pytest.mark.slow
def test_device_check_smoke(tmp_path):
    from benchmarks import device_check

    out = tmp_path / "check.md"
    table = device_check.main(["--smoke", "--out", str(out)])
    assert out.read_text() == table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 5 and not any("FAILED" in r for r in rows), table
    assert "indices equal 100.0000%" in rows[1] and "indices equal 100.0000%" in rows[2]
    assert "s/image incl. decoding" in rows[3] and "steps/s" in rows[4]
