"""benchmarks/vs_official.py at smoke sizes (rq_jax side only: CI has neither torch's official package nor
its checkout), so the side-by-side harness cannot rot; and a clear error for a wrong checkout path."""

import pytest


@pytest.mark.slow
def test_vs_official_smoke_table():
    from benchmarks import vs_official

    table = vs_official.main(["--smoke", "--repeats", "1", "--sample_dtype", "bfloat16"])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| codec", "| step", "| sample_small"], table
    assert all(r.split(" | ")[1] == "-" for r in rows)  # no official side
    assert "codes equal float32's" in rows[2] and "max abs logit diff" in rows[2], table


def test_vs_official_rejects_a_directory_that_is_not_the_official_checkout(tmp_path):
    from benchmarks import vs_official

    with pytest.raises(FileNotFoundError, match="is not a checkout of kakaobrain/rq-vae-transformer"):
        vs_official.Official(str(tmp_path))
