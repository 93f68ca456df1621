"""The training loop both stages share: step, log, periodic actions, checkpoints, preemption, NaN stop.

Each trainer builds its state and jitted step, then hands `run` a `Loop`: the step and where its arguments
come from, what the progress line shows, and its periodic actions (evaluation, images, samples), each a
callback `(step, state) -> stop?`. Per step, in this order:

    state, metrics = step_fn(state, *next_args())      under `jax.set_mesh(mesh)`; metrics stay on device
    every log_every steps (and the last):  mean of the pending metrics (a NaN/Inf raises TrainingDiverged
                                           naming the last good checkpoint), progress line with steps/s,
                                           ETA, throughput and MFU, TensorBoard scalars
    every checkpoint_every steps (and the last): save the state and the data iterator, only if every
                                           parameter and optimizer value is finite (else TrainingDiverged
                                           naming the last good step, which is never rotated away)
    each action whose period divides the step (and the last step); one that fails saves first
    SIGTERM / Ctrl-C (PreemptionGuard) or an action asking to stop: save and leave with `stop_line`
    (after Ctrl-C, KeyboardInterrupt: the command line exits 130)

A checkpoint is always written before the step's evaluation, so an evaluation that crashes loses nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections

from rq_jax import checkpoints, metrics


def due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action runs after `step`: every `every` steps and at the last step."""
    return step % every == 0 or step == total


class LogSpec(NamedTuple):
    """What a log step shows and records besides the averaged step metrics."""

    show: tuple[str, ...]                         # metrics on the progress line
    fix: str                                      # the advice when a metric becomes NaN/Inf
    extra: Callable[[int], dict[str, float]]      # host-side scalars of a step (learning rate, ...)
    examples_per_step: int
    tokens_per_step: int | None = None
    suffix: Callable[[dict], str] = lambda m: ""  # appended to the progress line, before the MFU


class Action(NamedTuple):
    """A periodic action: `run(step, state)` every `every` steps and at the last; True stops the run."""

    every: int
    run: Callable[[int, Any], bool | None]


@dataclasses.dataclass
class Loop:
    """Everything `run` needs besides the state."""

    total: int
    mesh: jax.sharding.Mesh
    step_fn: Any                           # jitted (state, *args) -> (state, metrics)
    next_args: Callable[[], tuple]         # the step's arguments after the state (the next global batch, ...)
    ckpt: checkpoints.Checkpointer
    data_iter: Any                         # checkpointed with the state
    writer: Any                            # clu metric writer
    log: LogSpec
    log_every: int
    checkpoint_every: int
    actions: Sequence[Action] = ()
    stop_line: str = "stopped: saved step {step} to {directory}"
    peak_flops: float | None = None        # per device; MFU is logged on accelerators only


def run(loop: Loop, state: Any, start: int) -> tuple[Any, int]:
    """Steps from `start` to `loop.total` (or a stop); returns the last state and step. Always closes the
    checkpointer, restores the signal handlers and flushes the writer."""
    guard = checkpoints.PreemptionGuard()
    progress = metrics.Progress(loop.total, start)
    saver = _Saver(loop, start if loop.ckpt.latest_step() is not None else None)
    step, pending, flops = start, [], None
    try:
        while step < loop.total:
            args = loop.next_args()
            with jax.set_mesh(loop.mesh):
                state, m = loop.step_fn(state, *args)
            pending.append(m)  # device arrays: no host sync until the log step
            step += 1
            if due(step, loop.log_every, loop.total):
                flops = _log(loop, step, state, args, pending, progress, saver.last, flops)
            if due(step, loop.checkpoint_every, loop.total):
                saver.save(step, state)
            stop = _run_actions(loop, step, state, saver) or guard.should_stop(step)
            if stop:
                saver.save(step, state)
                metrics.log_line(loop.stop_line.format(step=step, directory=loop.ckpt.directory))
                if guard.received == signal.SIGINT:
                    raise KeyboardInterrupt
                break
    finally:
        loop.ckpt.close()
        guard.restore()
        loop.writer.flush()
    return state, step


def _run_actions(loop: Loop, step: int, state: Any, saver: _Saver) -> bool:
    """The actions due at `step`; True when one asks to stop. One that raises saves the state first."""
    stop = False
    for action in loop.actions:
        if due(step, action.every, loop.total):
            try:
                stop = bool(action.run(step, state)) or stop
            except BaseException:
                saver.save(step, state)
                raise
    return stop


class _Saver:
    """Saves finite states once per step; `last` is the newest good step (None before the first)."""

    def __init__(self, loop: Loop, last: int | None):
        self.loop, self.last = loop, last

    def save(self, step: int, state: Any) -> None:
        if self.last == step:
            return
        with jax.set_mesh(self.loop.mesh):
            finite = bool(checkpoints.all_finite(state))
        if not finite:
            raise metrics.TrainingDiverged(
                f"Training diverged by step {step}: the parameters or optimizer state hold NaN/Inf, so step {step} "
                f"was not saved; the last good checkpoint is step {self.last} in {self.loop.ckpt.directory} "
                f"(kept): {self.loop.log.fix}"
            )
        self.loop.ckpt.save(step, state, self.loop.data_iter, force=True)
        self.last = step


def _log(loop: Loop, step: int, state: Any, args: tuple, pending: list, progress: metrics.Progress,
         last_saved: int | None, flops: float | None) -> float | None:
    """One log step: averaged metrics (NaN check), progress line, throughput/MFU, TensorBoard scalars.
    Returns the step's FLOPs (measured once, at the first log step, on accelerators)."""
    spec = loop.log
    m = metrics.mean_finite(pending, step, last_saved, loop.ckpt.directory, spec.fix)
    m.update(spec.extra(step))
    line = progress.line(step, {k: m[k] for k in spec.show})
    if loop.peak_flops and flops is None:
        with jax.set_mesh(loop.mesh):
            flops = metrics.step_flops(loop.step_fn, state, *args) or 0.0
    m["steps_per_sec"] = progress.last_rate
    m.update(metrics.throughput(progress.last_rate, examples_per_step=spec.examples_per_step,
                                tokens_per_step=spec.tokens_per_step, flops_per_step=flops,
                                peak_per_device=loop.peak_flops, num_devices=loop.mesh.size))
    loop.writer.write_scalars(step, m)
    metrics.log_line(line + spec.suffix(m) + (f" | {m['mfu']:.1%} MFU" if "mfu" in m else ""))
    return flops


def write_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`<workdir>/config.json` (process 0): what loaders and resumed runs read back."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def write_eval_json(workdir: str, scalars: dict, step: int) -> None:
    """`<workdir>/eval.json` (process 0): the last evaluation's scalars and the step they were taken at."""
    if jax.process_index() == 0 and scalars:
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump({k: float(v) for k, v in scalars.items()} | {"step": step}, f, indent=2)
