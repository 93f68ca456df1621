"""Training observability: metric writers, a progress line with steps/s and ETA, image grids.

clu's metric writers (TensorBoard + logging) are created on process 0 only; other processes get a
logging-only writer so multi-host runs write one set of files.
"""

from __future__ import annotations

import os
import sys
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
    """Rate and ETA of a counted loop.

    `line` is the trainers' log line (steps/s over the window since the previous line); `update` is the
    evaluation's progress on stderr: "<what> done/total | rate/s | ETA", the rate since the start, printed
    at most every `every_s` seconds and at the end.
    """

    def __init__(self, total_steps: int, start_step: int = 0, *, what: str = "step", every_s: float = 10.0):
        self.total, self.what, self.every_s = total_steps, what, every_s
        self.t0 = self.t_last = self.t_printed = time.perf_counter()
        self.s0 = self.s_last = start_step
        self.last_rate = 0.0  # steps/s over the window of the last `line`

    def line(self, step: int, metrics: dict[str, Any]) -> str:
        now = time.perf_counter()
        rate = (step - self.s_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.s_last, self.last_rate = now, step, rate
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        parts = [f"step {step}/{self.total}", f"{rate:.2f} steps/s", f"ETA {format_seconds(eta)}"]
        parts += [f"{k} {float(v):.4g}" for k, v in sorted(metrics.items()) if np.ndim(v) == 0]
        return " | ".join(parts)

    def update(self, done: int, extra: str = "") -> None:
        """Prints the progress line to stderr unless one was printed under `every_s` ago (the last always is)."""
        now = time.perf_counter()
        if now - self.t_printed < self.every_s and done < self.total:
            return
        self.t_printed = now
        rate = (done - self.s0) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        line = f"{self.what} {done}/{self.total} | {rate:.2f}/s | ETA {format_seconds(eta)}"
        print(line + (f" | {extra}" if extra else ""), file=sys.stderr, flush=True)


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


# Dense bf16 peak FLOP/s per device (chip) by a substring of `device.device_kind` (lower case), first match.
PEAK_FLOPS = (
    ("h200", 989e12), ("h100", 989e12), ("gh200", 989e12), ("a100", 312e12), ("l40s", 362e12), ("l4", 121e12),
    ("a10", 125e12), ("v6", 918e12), ("v5p", 459e12), ("v5 lite", 197e12), ("v5e", 197e12), ("v4", 275e12),
    ("v3", 123e12), ("v2", 45e12),
)


def peak_flops(device: Any, override: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: `override` if > 0, else from PEAK_FLOPS, else None (e.g. a CPU)."""
    if override > 0:
        return float(override)
    kind = str(getattr(device, "device_kind", "")).lower()
    return next((v for k, v in PEAK_FLOPS if k in kind), None)


def step_flops(jitted: Any, *args: Any) -> float | None:
    """FLOPs of one call of a jitted function for these arguments, from XLA's cost analysis of the
    lowered (global, unpartitioned) program; None where the backend gives none. It counts what runs,
    so with remat on it includes the recomputation (hardware rather than model FLOPs)."""
    try:
        cost = jitted.lower(*args).cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    flops = cost.get("flops") if isinstance(cost, dict) else None
    return float(flops) if flops and flops > 0 else None


def throughput(steps_per_sec: float, *, examples_per_step: int, tokens_per_step: int | None = None,
               flops_per_step: float | None = None, peak_per_device: float | None = None,
               num_devices: int = 1) -> dict[str, float]:
    """examples/s, tokens/s and model FLOPs utilisation (achieved FLOP/s over the devices' peak)."""
    out = {"examples_per_sec": steps_per_sec * examples_per_step}
    if tokens_per_step:
        out["tokens_per_sec"] = steps_per_sec * tokens_per_step
    if flops_per_step and peak_per_device:
        out["mfu"] = steps_per_sec * flops_per_step / (peak_per_device * num_devices)
    return out
