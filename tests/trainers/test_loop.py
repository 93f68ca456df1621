"""The shared training loop with a fake step, checkpointer and writer: order of actions, saves, stops."""

import jax
import jax.numpy as jnp
import pytest

from rq_jax import sharding
from rq_jax.metrics import TrainingDiverged
from rq_jax.trainers import loop


class FakeCheckpointer:
    directory = "/ckpt"

    def __init__(self):
        self.saved, self.closed = [], False

    def latest_step(self):
        return None

    def save(self, step, state, data_iter, force):
        self.saved.append((step, state))

    def close(self):
        self.closed = True


class FakeWriter:
    def __init__(self):
        self.scalars, self.flushed = [], False

    def write_scalars(self, step, m):
        self.scalars.append((step, dict(m)))

    def flush(self):
        self.flushed = True


def make_loop(total, actions=(), loss=lambda step: 1.0, **kw):
    def step_fn(state, x):
        assert not jax.sharding.get_abstract_mesh().empty  # steps run under jax.set_mesh
        return state + x, {"loss": jnp.float32(loss(state + x))}

    log = loop.LogSpec(show=("loss",), fix="lower the lr.", extra=lambda step: {"lr": 0.1}, examples_per_step=2)
    mesh = sharding.mesh_from_config({"data": 1}, devices=jax.devices()[:1])
    return loop.Loop(total=total, mesh=mesh, step_fn=step_fn, next_args=lambda: (1,), ckpt=FakeCheckpointer(),
                     data_iter=None, writer=FakeWriter(), log=log, log_every=2, checkpoint_every=3,
                     actions=list(actions), **kw)


def test_periodic_actions_logs_and_checkpoints(capsys):
    seen = []
    lp = make_loop(5, [loop.Action(2, lambda step, state: seen.append((step, state)))])
    state, step = loop.run(lp, 0, 0)
    assert (state, step) == (5, 5)
    assert seen == [(2, 2), (4, 4), (5, 5)]  # every 2 steps and the last
    assert [s for s, _ in lp.ckpt.saved] == [3, 5]
    assert [s for s, _ in lp.writer.scalars] == [2, 4, 5]
    assert lp.writer.scalars[0][1]["lr"] == 0.1 and "examples_per_sec" in lp.writer.scalars[0][1]
    assert lp.ckpt.closed and lp.writer.flushed
    assert "loss" in capsys.readouterr().out


def test_an_action_can_stop_the_run_after_a_save(capsys):
    lp = make_loop(10, [loop.Action(1, lambda step, state: step == 4)], stop_line="stopped at {step} in {directory}")
    state, step = loop.run(lp, 0, 0)
    assert step == 4 and lp.ckpt.saved[-1] == (4, 4)
    assert "stopped at 4 in /ckpt" in capsys.readouterr().out


def test_nan_raises_and_still_closes():
    lp = make_loop(6, loss=lambda s: float("nan") if s >= 3 else 1.0)
    with pytest.raises(TrainingDiverged, match="by step 4: loss became NaN/Inf; the last good checkpoint is step 3"):
        loop.run(lp, 0, 0)
    assert lp.ckpt.closed and lp.writer.flushed


def test_a_non_finite_state_is_never_saved():
    """The state turns NaN at step 5 while the logged loss stays finite: step 6 is not written, step 3 is kept."""
    lp = make_loop(9, loss=lambda s: 1.0)
    lp.step_fn = lambda state, x: (jnp.where(state + x >= 5, jnp.nan, state + x), {"loss": jnp.float32(1.0)})
    with pytest.raises(TrainingDiverged, match=r"hold NaN/Inf, so step 6 was not saved; the last good checkpoint "
                                               r"is step 3 in /ckpt \(kept\)"):
        loop.run(lp, jnp.float32(0), 0)
    assert [s for s, _ in lp.ckpt.saved] == [3]


def test_a_failing_action_saves_first():
    def evaluate(step, state):
        raise ValueError("need at least one array to concatenate")

    lp = make_loop(10, [loop.Action(2, evaluate)])
    with pytest.raises(ValueError, match="concatenate"):
        loop.run(lp, 0, 0)
    assert [s for s, _ in lp.ckpt.saved] == [2] and lp.ckpt.closed


def test_ctrl_c_saves_then_interrupts(capsys):
    import os
    import signal

    def press_ctrl_c(step, state):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    lp = make_loop(10, [loop.Action(1, press_ctrl_c)], stop_line="stopped: saved step {step}")
    with pytest.raises(KeyboardInterrupt):
        loop.run(lp, 0, 0)
    assert lp.ckpt.saved[-1] == (4, 4) and "stopped: saved step 4" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
