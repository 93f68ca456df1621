"""benchmarks/conv3x3.py at tiny sizes: every algorithm runs and agrees with the direct convolution."""


def test_conv3x3_benchmark_smoke(capsys):
    from benchmarks import conv3x3

    rows = conv3x3.main(["--quick"])
    assert [r["algo"] for r in rows] == ["direct (XLA)", "winograd F(2x2)", "winograd F(4x4)"] * 2
    assert all(r["rel_err"] < 3e-5 and r["s"] > 0 for r in rows)
    assert capsys.readouterr().out.count("| winograd F(4x4) |") == 2
