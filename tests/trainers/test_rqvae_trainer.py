"""The stage-1 trainer: runs, resumes exactly, survives SIGTERM, and fails clearly."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from rq_jax.metrics import TrainingDiverged
from rq_jax.trainers import rqvae as trainer

REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(num_steps: int, tmp_path):
    sys.path.insert(0, str(REPO))
    from configs.rqvae import demo

    c = demo.get_config("runlocal")
    c.data.data_dir = str(tmp_path / "data")
    c.data.limit = 160
    c.train.num_steps = num_steps
    c.train.log_every = 1
    c.train.eval_every = 1000
    c.train.image_every = 1000
    c.train.checkpoint_every = 2
    c.mesh.shape = {"data": -1, "fsdp": 1, "tensor": 1}
    return c


def saved_state(workdir, step):
    return ocp.StandardCheckpointer().restore(pathlib.Path(workdir) / "checkpoints" / str(step) / "state")


def assert_trees_equal(a, b):
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_resume_reaches_the_same_parameters_as_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    trainer.train(tiny_config(4, tmp_path), str(full))
    split = tmp_path / "split"
    trainer.train(tiny_config(2, tmp_path), str(split))
    assert sorted(os.listdir(split / "checkpoints")) == ["2"]
    trainer.train(tiny_config(4, tmp_path), str(split))  # resumes from step 2: model, codebook, data position
    a, b = saved_state(full, 4), saved_state(split, 4)
    assert int(a["step"]) == int(b["step"]) == 4
    assert_trees_equal(a, b)
    # the discriminator trained (disc_start=1) and the codebook moved
    s0 = saved_state(split, 2)
    import jax

    pairs = zip(jax.tree.leaves(s0["disc"]), jax.tree.leaves(a["disc"]), strict=True)
    moved = [not np.allclose(x, y) for x, y in pairs]
    assert any(moved)
    assert not np.allclose(jax.tree.leaves(s0["codebook"])[0], jax.tree.leaves(a["codebook"])[0])


@pytest.mark.slow
def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
    """Kill the CLI with SIGTERM mid-run, run the same command again, get the uninterrupted result."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONUNBUFFERED="1")
    data = tmp_path / "data"

    def cmd(workdir, steps):
        return [sys.executable, "-m", "rq_jax.train", f"--config={REPO}/configs/rqvae/demo.py:runlocal",
                f"--workdir={workdir}", f"--config.train.num_steps={steps}", f"--config.data.data_dir={data}",
                "--config.data.limit=160", "--config.train.checkpoint_every=1000", "--config.train.eval_every=1000"]

    wd = tmp_path / "killed"
    proc = subprocess.Popen(cmd(wd, 400), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    deadline = time.time() + 300
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "".join(lines)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, "".join(lines) + rest
    assert "preempted: saved step" in rest
    stopped = int(rest.split("preempted: saved step ")[1].split()[0])
    assert 3 <= stopped < 400
    assert sorted(os.listdir(wd / "checkpoints")) == [str(stopped)]
    # the same command (with the run length we compare at) resumes from the saved step
    out = subprocess.run(cmd(wd, stopped + 2), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resumed from" in out.stdout and f"(step {stopped})" in out.stdout
    ref = subprocess.run(cmd(tmp_path / "ref", stopped + 2), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    assert_trees_equal(saved_state(wd, stopped + 2), saved_state(tmp_path / "ref", stopped + 2))


def test_unknown_config_key_is_named(tmp_path):
    c = tiny_config(1, tmp_path)
    with c.unlocked():
        c.train.batch_szie = 3
    with pytest.raises(ValueError, match=r"Unknown config key 'config.train.batch_szie'"):
        trainer.train(c, str(tmp_path / "w"))


def test_corrupt_checkpoint_gives_one_clear_error_and_keeps_files(tmp_path):
    wd = tmp_path / "w"
    trainer.train(tiny_config(2, tmp_path), str(wd))
    state_dir = wd / "checkpoints" / "2" / "state"
    for f in state_dir.rglob("*"):
        if f.is_file() and "ocdbt" in str(f):
            f.write_bytes(b"garbage")
    from rq_jax.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match=r"could not be restored .* move that step directory aside"):
        trainer.train(tiny_config(4, tmp_path), str(wd))
    assert (wd / "checkpoints" / "2").exists()


def test_missing_lpips_weights_name_the_file(tmp_path):
    c = tiny_config(1, tmp_path)
    c.loss.perceptual_weight = 1.0
    c.loss.lpips_path = str(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match=r"nope\.npz.*python -m rq_jax\.convert lpips"):
        trainer.train(c, str(tmp_path / "w"))


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --workdir works (orbax itself needs absolute paths)
    wd = tmp_path / "w"
    trainer.train(tiny_config(2, tmp_path), "w")
    c = tiny_config(4, tmp_path)
    c.train.lr = 1e30  # Adam steps of size ~lr: the parameters overflow at once
    with pytest.raises(TrainingDiverged, match=r"became NaN/Inf; the last good checkpoint is step 2"):
        trainer.train(c, "w")
    assert sorted(os.listdir(wd / "checkpoints")) == ["2"]
    assert int(saved_state(wd, 2)["step"]) == 2


@pytest.mark.slow
def test_train_step_with_the_full_configs_losses(tmp_path):
    """Every full stage-1 config trains with LPIPS and the official discriminator (BatchNorm,
    `loss.disc_norm="batch"`), the runlocal configs with neither. The BatchNorm running statistics are written
    inside the step's vjp and cond: the step must trace, leave them alone before `disc_start` and move them
    after, with a finite perceptual term (random LPIPS weights written like `convert lpips` writes them)."""
    import jax

    from rq_jax import sharding
    from rq_jax.models.lpips import lpips_checkpoint_shapes, save_lpips

    rng = np.random.default_rng(1)
    save_lpips(tmp_path / "lpips.npz", {name: rng.normal(0, 0.1, shape).astype(np.float32)
                                        for name, shape in lpips_checkpoint_shapes().items()})
    c = tiny_config(2, tmp_path)
    c.loss.update(disc_norm="batch", disc_start=1, perceptual_weight=1.0, lpips_path=str(tmp_path / "lpips.npz"))
    mesh = sharding.mesh_from_config({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])  # compiles faster
    tx_gen, _ = trainer.make_optimizer(c.train.lr, c.train, 1)
    tx_disc, _ = trainer.make_optimizer(c.train.disc_lr, c.train, 1)
    setup = trainer.setup_state(c, mesh, tx_gen, tx_disc)
    lpips_graph, lpips_state = trainer.load_perceptual(c)
    step = trainer.jit_train_step(c, mesh, setup, lpips_graph, True)
    x = np.random.default_rng(0).uniform(-1, 1, (8, c.data.image_size, c.data.image_size, 3)).astype(np.float32)
    batch = sharding.global_batch(mesh, {"image": x})
    with jax.set_mesh(mesh):
        state = setup.init()
        stats0 = jax.tree.map(np.asarray, state["disc_stats"])
        assert jax.tree.leaves(stats0)  # BatchNorm has running statistics
        state, m0 = step(state, batch, lpips_state)
        stats1 = jax.tree.map(np.asarray, state["disc_stats"])
        state, m1 = step(state, batch, lpips_state)
        stats2 = jax.tree.map(np.asarray, state["disc_stats"])
    assert_trees_equal(stats1, stats0)  # step 0: discriminator off
    assert float(m0["g_loss"]) == 0.0 and float(m1["g_loss"]) != 0.0
    assert float(m0["nll"]) > float(m0["rec_loss"])  # the perceptual term is in the NLL
    assert all(np.isfinite(float(m[k])) for m in (m0, m1) for k in ("loss", "nll", "d_loss", "grad_norm"))
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(stats2), jax.tree.leaves(stats1), strict=True)]
    assert all(moved)  # step 1: both discriminator calls updated every running mean and variance
