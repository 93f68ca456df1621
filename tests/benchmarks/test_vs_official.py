"""benchmarks/vs_official.py at smoke sizes (rq_jax side only: CI has neither torch's official package nor
its checkout), so the side-by-side harness cannot rot: each side runs in a child process that writes its times
(build, first call, warm calls) to JSON; plus the malloc environment of the children, the ratio tables and the
numerical checks on made-up results, and a clear error for a wrong checkout path."""

import json

import numpy as np
import pytest


@pytest.mark.slow
def test_vs_official_smoke_table_through_child_processes(tmp_path):
    from benchmarks import vs_official

    out = tmp_path / "results.json"
    table = vs_official.main(["--smoke", "--repeats", "2", "--sample_dtype", "bfloat16", "--json", str(out)])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| codec", "| step", "| sample_small"], table
    assert all(r.split(" | ")[1] == "glibc" and r.split(" | ")[2] == "-" for r in rows)  # no official side
    assert "codes equal float32's" in rows[2] and "max abs logit diff" in rows[2], table
    results = json.loads(out.read_text())
    assert [(r["side"], r["work"], r["malloc"], r["malloc_loaded"]) for r in results] == [
        ("rq_jax", w, "glibc", None) for w in ("codec", "step", "sample_small")]
    for r in results:
        assert r["build_s"] > 0 and r["first_s"] > 0 and len(r["warm_s"]) == 2
        assert r["min"] <= r["median"] <= r["max"] and r["max"] == max(r["warm_s"])
        assert f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]" in table


def test_child_env_sets_the_malloc_and_nothing_about_threads(monkeypatch):
    from benchmarks import vs_official

    tc = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    monkeypatch.setenv("LD_PRELOAD", "/x/libjemalloc.so.2 /x/libother.so")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    glibc = vs_official.child_env("glibc", tc)
    assert glibc["LD_PRELOAD"] == "/x/libother.so" and glibc["RQ_JAX_ALLOCATOR"] == "system"
    tcm = vs_official.child_env("tcmalloc", tc)
    assert tcm["LD_PRELOAD"] == f"{tc} /x/libother.so" and tcm["RQ_JAX_ALLOCATOR"] == tc
    assert "OMP_WAIT_POLICY" not in glibc and "OMP_WAIT_POLICY" not in tcm


def _result(median, arrays=None, **kw):
    return {"median": median, "min": median, "max": median, "build_s": 1.0, "first_s": 2.0,
            "arrays": arrays or {}, **kw}


def test_tables_give_same_malloc_ratios_and_the_as_shipped_one():
    from benchmarks import vs_official

    results = {("official", "step", "glibc"): _result(20.0), ("rq_jax", "step", "glibc"): _result(18.0, check="c"),
               ("official", "step", "tcmalloc"): _result(10.0), ("rq_jax", "step", "tcmalloc"): _result(9.0, check="c")}
    text = vs_official.tables(["step"], results, ["glibc", "tcmalloc"])
    assert "| step | glibc | 1.0 / 2.0 | 20.00 [20.00-20.00] | 1.0 / 2.0 | 18.00 [18.00-18.00] | 0.90 | c |" in text
    assert "| step | 0.90 | 0.90 | 0.45 |" in text  # as shipped: rq_jax on tcmalloc / official on glibc


def test_compare_reports_logit_difference_and_top_code_agreement():
    from benchmarks import vs_official

    codes = vs_official.fixed_codes(2, (2, 2, 3), 5)
    logits = np.random.default_rng(0).normal(size=(2, 2, 2, 3, 5)).astype(np.float32)
    off = _result(1.0, vs_official.logit_outputs(codes, logits))
    top = int(logits[0, 0, 0, 0].argmax())
    logits[0, 0, 0, 0] = 10 * np.eye(5)[(top + 1) % 5]  # one position's top code changes
    ours = _result(1.0, vs_official.logit_outputs(codes, logits))
    text = vs_official.compare("sample", off, ours)
    assert "max abs diff" in text and f"top code equal {23 / 24:.2%}" in text, text
    assert "(50% at the first position, first depth)" in text, text
    step = vs_official.compare("step", {"loss": 0.5, "arrays": {}}, {"loss": 0.5, "arrays": {}})
    assert step == "first-call loss 0.5000 vs official 0.5000"


def test_vs_official_rejects_a_directory_that_is_not_the_official_checkout(tmp_path):
    from benchmarks import vs_official

    with pytest.raises(FileNotFoundError, match="is not a checkout of kakaobrain/rq-vae-transformer"):
        vs_official.Official(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is not a checkout of kakaobrain/rq-vae-transformer"):
        vs_official.main(["--official_repo", str(tmp_path), "--work", "codec"])
