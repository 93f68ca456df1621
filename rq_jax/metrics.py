"""Training observability: metric writers, a progress line with steps/s and ETA, image grids.

clu's metric writers (TensorBoard + logging) are created on process 0 only; other processes get a
logging-only writer so multi-host runs write one set of files.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from PIL import Image

from rq_jax.data.transforms import to_uint8


def create_writer(workdir: str):
    """clu's default writer (TensorBoard files + log lines) on process 0, logging only elsewhere."""
    from clu import metric_writers  # imports TensorFlow: keep it out of module import time

    return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


class Progress:
    """Steps/s and ETA over a sliding window, formatted as one log line."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total = total_steps
        self.t0, self.s0 = time.perf_counter(), start_step
        self.t_last, self.s_last = self.t0, start_step

    def line(self, step: int, metrics: dict[str, Any]) -> str:
        now = time.perf_counter()
        rate = (step - self.s_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.s_last = now, step
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        parts = [f"step {step}/{self.total}", f"{rate:.2f} steps/s", f"ETA {format_seconds(eta)}"]
        parts += [f"{k} {float(v):.4g}" for k, v in sorted(metrics.items()) if np.ndim(v) == 0]
        return " | ".join(parts)

    def rate(self, step: int) -> float:
        return (step - self.s0) / max(time.perf_counter() - self.t0, 1e-9)


def format_seconds(s: float) -> str:
    if not np.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def image_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stacks lists of [N, H, W, 3] images in [-1, 1] as grid rows (one row per list) -> uint8 [H', W', 3]."""
    rows = [to_uint8(r) for r in rows]
    n = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[1:3]
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j in range(r.shape[0]):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = r[j]
    return grid


def save_png(path: str, image_uint8: np.ndarray, upscale: int = 1) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img = Image.fromarray(image_uint8)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    img.save(path)
    return path


def psnr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2, axis=(1, 2, 3))
    return 10.0 * np.log10(4.0 / np.maximum(mse, 1e-12))


def log_line(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf; the message says which checkpoint is the last good one."""


def mean_finite(pending: list[dict], step: int, last_saved: int | None, ckpt_dir: Any, fix: str) -> dict[str, float]:
    """Averages the step metrics gathered since the last log (one host sync) and empties `pending`.

    Raises TrainingDiverged naming the non-finite metrics, the last good checkpoint (left intact) and `fix`.
    """
    m = {k: float(np.mean([p[k] for p in jax.device_get(pending)])) for k in pending[0]}
    pending.clear()
    bad = [k for k, v in m.items() if not np.isfinite(v)]
    if bad:
        raise TrainingDiverged(
            f"Training diverged by step {step}: {', '.join(bad)} became NaN/Inf; the last good checkpoint is "
            f"step {last_saved} in {ckpt_dir} (left intact): {fix}"
        )
    return m
