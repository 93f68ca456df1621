"""rq_jax.checkpoints: save/restore of the state and the data iterator, the resume order, partial
restores, shape checks and the preemption flag — on tiny pytrees, in seconds."""

from __future__ import annotations

import os
import signal

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rq_jax import checkpoints


def _state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"step": jnp.int32(seed), "params": {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                                                "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
            "opt": {"mu": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}}


def _abstract(state: dict) -> dict:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), state)


def _iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())


def _equal(a, b) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_save_restore_state_and_data_iterator(tmp_path):
    ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
    it = _iterator()
    for _ in range(3):
        next(it)
    saved = _state(7)
    assert ckpt.save(7, saved, it)
    expected_next = next(it)
    ckpt.close()

    ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
    assert ckpt.latest_step() == 7
    it2 = _iterator()
    restored = ckpt.restore(7, _abstract(saved), it2)
    ckpt.close()
    _equal(restored, saved)
    np.testing.assert_array_equal(next(it2), expected_next)  # the data position came back too


def test_max_to_keep_rotates_old_steps(tmp_path):
    ckpt = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2, async_save=False, with_data=False)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step))
    ckpt.close()
    assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == [2, 3]


def test_restore_or_init_order(tmp_path):
    fresh = _state(0)
    # 1. nothing saved: a fresh initialisation
    ckpt = checkpoints.Checkpointer(str(tmp_path / "a"), async_save=False, with_data=False)
    state, step, how = checkpoints.restore_or_init(ckpt, _abstract(fresh), lambda: fresh)
    assert (step, how) == (0, "initialised from scratch")
    # 2. a checkpoint in the workdir wins
    ckpt.save(5, _state(5))
    state, step, how = checkpoints.restore_or_init(ckpt, _abstract(fresh), lambda: fresh)
    ckpt.close()
    assert step == 5 and how.startswith("resumed from")
    _equal(state, _state(5))
    # 3. init_from takes only the named parts of another run; step and the rest start fresh
    other = checkpoints.Checkpointer(str(tmp_path / "b"), async_save=False, with_data=False)
    state, step, how = checkpoints.restore_or_init(
        other, _abstract(fresh), lambda: fresh, init_from=str(tmp_path / "a" / "checkpoints"),
        init_from_keys=("params",))
    other.close()
    assert step == 0 and "initialised params from" in how
    _equal(state["params"], _state(5)["params"])
    _equal(state["opt"], fresh["opt"])


def test_restore_partial_rejects_other_shapes_and_missing_paths(tmp_path):
    ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False, with_data=False)
    ckpt.save(1, _state(1))
    ckpt.close()
    wrong = _abstract({"params": {"w": jnp.zeros((5, 4)), "b": jnp.zeros((4,))}})
    with pytest.raises(checkpoints.CheckpointError, match="other shapes"):
        checkpoints.restore_partial(str(tmp_path / "checkpoints"), wrong)
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        checkpoints.restore_partial(str(tmp_path / "nowhere"), wrong)
    with pytest.raises(checkpoints.CheckpointError, match=r"has no 'ema' entry \(it has \['opt', 'params', 'step'\]"):
        checkpoints.restore_partial(str(tmp_path / "checkpoints"), {"ema": _abstract(_state())["params"]})


def test_restore_onto_reads_only_the_keys_asked_for(tmp_path, caplog):
    ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False, with_data=False)
    saved = _state(2)
    ckpt.save(2, saved)
    ckpt.close()
    state_dir = ckpt.directory / "2" / "state"
    cpu = jax.local_devices()[0]
    some = checkpoints.restore_onto(state_dir, cpu, ["params", "missing"])
    assert set(some) == {"params"}  # the optimizer state is not read; an absent key is left out
    _equal(some["params"], saved["params"])
    _equal(checkpoints.restore_onto(state_dir, cpu), saved)
    assert checkpoints.restore_onto(state_dir, cpu, ["missing"]) == {}
    assert not [r for r in caplog.records if "_CHECKPOINT_METADATA" in r.getMessage()]  # orbax's noise is dropped


def test_corrupt_checkpoint_names_it_and_deletes_nothing(tmp_path):
    ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False, with_data=False)
    ckpt.save(2, _state(2))
    ckpt.close()
    step_dir = tmp_path / "checkpoints" / "2"
    for f in step_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"\0garbage" * 4)
    before = sorted(str(p) for p in step_dir.rglob("*"))
    ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False, with_data=False)
    with pytest.raises(checkpoints.CheckpointError, match=str(step_dir)):
        ckpt.restore(2, _abstract(_state()))
    ckpt.close()
    assert sorted(str(p) for p in step_dir.rglob("*")) == before


def test_fill_abstract_checks_every_leaf():
    abstract = _abstract(_state())
    saved = jax.tree.map(np.asarray, _state(4))
    _equal(checkpoints.fill_abstract(abstract, saved, "here"), _state(4))
    del saved["opt"]["mu"]
    with pytest.raises(checkpoints.CheckpointError, match=r"here .*\['opt'\]\['mu'\]"):
        checkpoints.fill_abstract(abstract, saved, "here")


def test_preemption_guard_turns_sigterm_into_a_flag():
    guard = checkpoints.PreemptionGuard()
    try:
        assert not guard.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.should_stop(1)
    finally:
        guard.restore()
    assert signal.getsignal(signal.SIGTERM) is not guard._handle


def test_preemption_guard_ctrl_c_sets_the_flag_and_a_second_one_interrupts():
    guard = checkpoints.PreemptionGuard()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.should_stop(3) and guard.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        guard.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_refuses_a_non_finite_checkpoint_naming_the_good_step(tmp_path):
    ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False, with_data=False)
    ckpt.save(4, _state(4))
    bad = _state(6)
    bad["params"]["w"] = bad["params"]["w"].at[0, 0].set(jnp.nan)
    ckpt.save(6, bad)
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoints/6 holds NaN/Inf values .* aside to resume "
                                                          r"from step 4"):
        checkpoints.restore_or_init(ckpt, _abstract(_state()), lambda: _state())
    ckpt.close()


def test_resume_with_other_shapes_names_the_first_differing_array(tmp_path):
    ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False, with_data=False)
    ckpt.save(1, _state(1))
    other = _state()
    other["params"]["w"] = jnp.zeros((3, 8))
    with pytest.raises(checkpoints.CheckpointError, match=r"another model than the checkpoint .*1 \(params/w is "
                                                          r"\(3, 4\) in the checkpoint and \(3, 8\) in this config\)"):
        ckpt.restore(1, _abstract(other))
    ckpt.close()
