"""rq_jax.metrics: the progress line, image grids, PSNR, the NaN guard and throughput figures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rq_jax import metrics


def test_progress_line_rate_and_eta(monkeypatch):
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    p = metrics.Progress(total_steps=120, start_step=0)
    line = p.line(20, {"loss": np.float32(0.123456), "vector": np.zeros(3)})
    assert line == "step 20/120 | 2.00 steps/s | ETA 0m50s | loss 0.1235"
    assert p.last_rate == pytest.approx(2.0)


@pytest.mark.parametrize("s, text", [(59.9, "0m59s"), (61, "1m01s"), (3600 * 2 + 60 * 5, "2h05m"), (float("inf"), "?")])
def test_format_seconds(s, text):
    assert metrics.format_seconds(s) == text


def test_image_grid_layout_and_png(tmp_path):
    white = np.ones((2, 4, 5, 3), np.float32)
    black = -np.ones((1, 4, 5, 3), np.float32)
    grid = metrics.image_grid([white, black], pad=1)
    assert grid.shape == (2 * (4 + 1) + 1, 2 * (5 + 1) + 1, 3) and grid.dtype == np.uint8
    assert grid[1:5, 1:6].min() == 255 and grid[6:10, 1:6].max() == 0
    assert grid[6:10, 7:12].min() == 255  # the missing image of the short row stays background
    path = metrics.save_png(str(tmp_path / "sub" / "g.png"), grid, upscale=2)
    assert Image.open(path).size == (grid.shape[1] * 2, grid.shape[0] * 2)


def test_psnr_of_known_errors():
    x = np.zeros((2, 4, 4, 3))
    y = np.stack([np.full((4, 4, 3), 0.2), np.zeros((4, 4, 3))])
    np.testing.assert_allclose(metrics.psnr(x, y), [10 * np.log10(4 / 0.04), 10 * np.log10(4 / 1e-12)], rtol=1e-12)


def test_mean_finite_averages_and_names_the_bad_metric():
    pending = [{"loss": np.float32(1.0), "acc": np.float32(0.5)}, {"loss": np.float32(3.0), "acc": np.float32(0.7)}]
    assert metrics.mean_finite(pending, 2, None, "d", "fix") == pytest.approx({"loss": 2.0, "acc": 0.6})
    assert pending == []
    bad = [{"loss": np.float32(np.nan), "acc": np.float32(0.5)}]
    with pytest.raises(metrics.TrainingDiverged, match=r"by step 9: loss became NaN/Inf; .* step 8 in ckpts .*: lower"):
        metrics.mean_finite(bad, 9, 8, "ckpts", "lower the lr")


def test_throughput_and_peak_flops():
    class Dev:
        device_kind = "NVIDIA H200"

    assert metrics.peak_flops(Dev()) == 989e12
    assert metrics.peak_flops(Dev(), override=1e12) == 1e12
    assert metrics.peak_flops(object()) is None
    out = metrics.throughput(2.0, examples_per_step=8, tokens_per_step=512, flops_per_step=1e12,
                             peak_per_device=1e13, num_devices=4)
    assert out == pytest.approx({"examples_per_sec": 16.0, "tokens_per_sec": 1024.0, "mfu": 0.05})
