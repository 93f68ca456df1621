"""Stage-1 training across processes and meshes: the real CLI under `jax.distributed` (two local processes,
two fake CPU devices each, gloo collectives), exact resume across a restart of both processes, equality with
a one-process computation on the same global batches, writes from process 0 only, `config.init_from` of the
two-process checkpoint in one process, and a checkpoint saved on one mesh (data=8) restored onto another
(data=2 x fsdp=2, 4 of the 8 devices) and trained on.

The restart is a copy of the uninterrupted run's step-2 checkpoint into a new workdir (what a run stopped right
after that save leaves), which saves a third two-process launch; both launches cost ~1 min on 2 CPU cores
(process 1 compiles from scratch every time: JAX's persistent cache is written by process 0 only, and its keys
differ per process).

Why the one-process reference is not a plain one-process CLI run: the pipeline gives host p the stride
`ds[p::P]`, shuffled per host, so one process (P=1) reads other global batches than two. The reference here
builds both hosts' pipelines in one process (`process_index=p, process_count=2`), concatenates their local
batches the way `make_array_from_process_local_data` does (process 0 owns the first devices of the mesh, so
the first rows) and steps `setup_state` / `jit_train_step` on a 4-device mesh: the trainer's computation,
in one process, on the same data.
"""

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rq_jax import checkpoints, sharding
from rq_jax.trainers import rqvae as trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 4  # the restart happens after the checkpoint at step 2; the discriminator is on from step 1
TIMEOUT = 300


def overrides(data_dir) -> dict:
    return {"train.num_steps": STEPS, "train.checkpoint_every": 2, "train.log_every": 1, "train.eval_every": 1000,
            "train.image_every": 1000, "data.data_dir": str(data_dir), "data.limit": 160}


def config(data_dir):
    sys.path.insert(0, str(REPO))
    from configs.rqvae import demo

    c = demo.get_config("runlocal")
    for key, value in overrides(data_dir).items():
        section, name = key.split(".")
        c[section][name] = value
    c.mesh.shape = {"data": -1, "fsdp": 1, "tensor": 1}
    return c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, data_dir, num_processes: int, devices_per_process: int, log_dir):
    """Runs the stage-1 `python -m rq_jax.train` in `num_processes` local processes; returns (pids, outputs,
    returncodes)."""
    args = [f"--config={REPO}/configs/rqvae/demo.py:runlocal"] + [f"--config.{k}={v}"
                                                                  for k, v in overrides(data_dir).items()]
    return run_processes(args, workdir, num_processes, devices_per_process, log_dir)


def run_processes(args, workdir, num_processes: int, devices_per_process: int, log_dir, timeout: float = TIMEOUT,
                  module: str = "rq_jax.train"):
    """`python -m rq_jax.train --workdir=workdir *args` in `num_processes` local processes (jax.distributed
    with a free coordinator port when more than one); returns (pids, outputs, returncodes). Another `module`
    (`rq_jax.extract`) gets `args` alone (`workdir` then only names the logs). A run still going
    after `timeout` seconds (a hang) gets SIGABRT, so faulthandler writes every thread's Python stack into its
    log, then is killed: its returncode is None and its output ends with a TIMEOUT line."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    if num_processes > 1:  # every process compiles: a cache hit in one and a compile in the other can put
        env.pop("JAX_COMPILATION_CACHE_DIR", None)  # > 30 s between them at the first gloo collective
        env["RQ_JAX_COMPILATION_CACHE"] = "0"
    cmd = [sys.executable, "-m", module, *([f"--workdir={workdir}"] if module == "rq_jax.train" else []), *args]
    port = free_port()
    procs, logs = [], []
    for i in range(num_processes):
        extra = [f"--coordinator=127.0.0.1:{port}", f"--num_processes={num_processes}", f"--process_id={i}"]
        log = open(pathlib.Path(log_dir) / f"{pathlib.Path(workdir).name}_{i}.log", "w+")  # noqa: SIM115
        logs.append(log)
        procs.append(subprocess.Popen(cmd + (extra if num_processes > 1 else []), cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, text=True))
    deadline, codes, timed_out = time.monotonic() + timeout, [], False
    try:
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(deadline - time.monotonic(), 1)))
            except subprocess.TimeoutExpired:
                codes.append(None)
                timed_out = True
    finally:
        for p in procs:  # only after a timeout or an error above: ours, by pid
            if p.poll() is None:
                p.send_signal(signal.SIGABRT)  # faulthandler: the stacks of the hang into the log
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read() + (f"\nTIMEOUT: the processes were still running after {timeout} s\n"
                                     if timed_out else ""))
        log.close()
    return [p.pid for p in procs], outputs, [None if timed_out else c for c in codes]


def show(outputs) -> str:
    return "\n".join(f"----- process {i} -----\n{o[-15000:]}" for i, o in enumerate(outputs))


def logged_losses(output: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in re.findall(r"^step (\d+)/\d+ \|.*\| loss ([-\d.e+]+)", output, re.M)}


def saved_state(workdir, step):
    """A saved train state as host arrays, whatever processes and devices wrote it (orbax refuses to restore a
    checkpoint of two processes' devices without a target here, so the target is built from its metadata)."""
    path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
    reader = ocp.StandardCheckpointer()
    meta = reader.metadata(path)
    meta = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta,
                          is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return jax.device_get(reader.restore(path, target))


def copy_checkpoint(src_workdir, dst_workdir, step):
    """A workdir holding only `step` of another run: as if that run had been stopped right after saving it."""
    shutil.copytree(pathlib.Path(src_workdir) / "checkpoints" / str(step),
                    pathlib.Path(dst_workdir) / "checkpoints" / str(step))


def by_path(tree) -> dict[str, np.ndarray]:
    """Leaves by their path, the same for a live state (nnx Variables) and one read back as nested dicts."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        out["/".join(n for n in names if n != "value")] = np.asarray(leaf)
    return out


def pairs(a, b):
    da, db = by_path(a), by_path(b)
    assert sorted(da) == sorted(db)
    return [(da[k], db[k], k) for k in sorted(da)]


def assert_trees_equal(a, b):
    for x, y, k in pairs(a, b):
        np.testing.assert_array_equal(x, y, err_msg=k)


def assert_close(a, b, rtol, atol, mean_atol=None, outlier_atol=None, max_outliers=0.0):
    """allclose leaf by leaf; with `outlier_atol`, up to a fraction `max_outliers` of all elements may exceed
    `atol` (but never `outlier_atol`), and the mean absolute difference must stay under `mean_atol`."""
    diffs, outliers = [], []
    for x, y, k in pairs(a, b):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        d = np.abs(x64 - y64).ravel()
        if outlier_atol is None:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=k)
        else:
            np.testing.assert_allclose(x, y, rtol=0, atol=outlier_atol, err_msg=k)
            outliers.append(d > atol + rtol * np.abs(y64).ravel())
        diffs.append(d)
    if outliers:
        frac = np.mean(np.concatenate(outliers))
        assert frac <= max_outliers, f"{frac:.4%} of the elements differ by more than {atol}"
    if mean_atol is not None:
        assert np.mean(np.concatenate(diffs)) < mean_atol


def assert_same_training(state, ref, c):
    """Equal up to the summation order of another mesh / collective (see tests/sharding/test_mesh_equivalence.py).
    Adam moves a weight whose gradient is ~0 by rounding noise: its first update is lr * g / |g|, so the sign of
    a near-zero g decides between +lr and -lr and a rare weight may differ by up to 2 lr per step. The weights
    must therefore agree to 0.5 lr except for at most 0.1% of them (which must stay within 2 lr per step), and
    on average to 0.01 lr."""
    steps = int(ref["step"])
    assert int(state["step"]) == steps
    assert_close(state["codebook"], ref["codebook"], rtol=1e-4, atol=1e-5)  # EMA statistics
    assert_close(state["gen_opt"], ref["gen_opt"], rtol=1e-3, atol=1e-5)
    assert_close(state["disc_opt"], ref["disc_opt"], rtol=1e-3, atol=1e-5)
    for name, lr in (("gen", c.train.lr), ("disc", c.train.disc_lr)):
        assert_close(state[name], ref[name], rtol=1e-4, atol=0.5 * lr, mean_atol=0.01 * lr,
                     outlier_atol=2 * lr * steps, max_outliers=1e-3)
    assert_close(state["disc_stats"], ref["disc_stats"], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def one_process_reference(c, num_processes: int = 2):
    """The trainer's steps in this process on a 4-device mesh, fed the global batches of `num_processes` hosts."""
    from rq_jax.data.pipeline import build_image_pipeline

    mesh = sharding.mesh_from_config(c.mesh.shape.to_dict(), devices=jax.devices()[:4])
    local_bs = c.train.batch_size // num_processes
    its = [build_image_pipeline(c.data, split="train", batch_size=local_bs, seed=c.seed, process_index=p,
                                process_count=num_processes) for p in range(num_processes)]
    total, warmup = trainer.steps_for(c, its[0][1].steps_per_epoch)
    tx_gen, _ = trainer.make_optimizer(c.train.lr, c.train, warmup)
    tx_disc, _ = trainer.make_optimizer(c.train.disc_lr, c.train, warmup)
    setup = trainer.setup_state(c, mesh, tx_gen, tx_disc)
    state = setup.init()
    step = trainer.jit_train_step(c, mesh, setup, None, False)
    losses = {}
    for i in range(total):
        images = np.concatenate([next(it)["image"] for it, _ in its])
        with jax.set_mesh(mesh):
            state, m = step(state, sharding.global_batch(mesh, {"image": images}), None)
        losses[i + 1] = float(m["loss"])
    return losses, jax.device_get(state), setup


@pytest.mark.slow
def test_two_processes_resume_exactly_and_equal_one_process_on_the_same_batches(tmp_path, data_dir):
    c = config(data_dir)
    # 1. two processes x two devices (mesh data=4), uninterrupted 0 -> 4, checkpoints at 2 and 4
    full = tmp_path / "full"
    pids, outs, codes = launch(full, data_dir, 2, 2, tmp_path)
    assert codes == [0, 0], show(outs)
    assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in outs[0], show(outs)
    losses = logged_losses(outs[0])
    assert sorted(losses) == list(range(1, STEPS + 1)), show(outs)

    # writes and progress lines come from process 0 only
    assert not logged_losses(outs[1]) and "state:" not in outs[1], show(outs)
    events = sorted(p.name for p in full.glob("events.out.tfevents.*"))
    assert len(events) == 1 and f".{pids[0]}." in events[0], (events, pids)  # clu names the file by pid
    assert sorted(p.name for p in (full / "images").iterdir()) == [f"recon_{STEPS:08d}.png"]
    assert (full / "config.json").exists() and (full / "eval.json").exists()
    # both hosts saved their shard of the state and their data-iterator position
    data_files = sorted(p.name for p in (full / "checkpoints" / "2" / "data").glob("process_*"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]

    # 2. both processes restart from the step-2 checkpoint: the same step-4 state, bit for bit
    resumed = tmp_path / "resumed"
    copy_checkpoint(full, resumed, 2)
    _, outs2, codes2 = launch(resumed, data_dir, 2, 2, tmp_path)
    assert codes2 == [0, 0], show(outs2)
    assert "resumed from" in outs2[0] and "(step 2)" in outs2[0], show(outs2)
    resumed_losses = logged_losses(outs2[0])
    assert resumed_losses == {s: losses[s] for s in range(3, STEPS + 1)}, (resumed_losses, losses)
    final = saved_state(full, STEPS)
    assert_trees_equal(saved_state(resumed, STEPS), final)

    # 3. one process, same mesh shape, the same global batches: the same losses and state
    ref_losses, ref_state, setup = one_process_reference(c)
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [ref_losses[s] for s in sorted(losses)],
                               rtol=2e-3)  # the log prints 4 significant digits
    assert_same_training(final, ref_state, c)

    # 4. config.init_from of the two-process checkpoint in this one process (another topology)
    keys = ("gen", "codebook", "disc", "disc_stats")
    parts = checkpoints.restore_partial(str(full / "checkpoints"), {k: setup.abstract[k] for k in keys})
    assert_trees_equal(jax.device_get(parts), {k: final[k] for k in keys})
    assert all(x.sharding == s for x, s in zip(jax.tree.leaves(parts), jax.tree.leaves(
        {k: setup.shardings[k] for k in keys}), strict=True))


@pytest.mark.slow
def test_checkpoint_of_an_8_device_mesh_restores_and_trains_on_4_devices(tmp_path, data_dir, monkeypatch, capsys):
    c = config(data_dir)
    eight = tmp_path / "eight"
    trainer.train(c, str(eight))  # mesh data=8, checkpoints at 2 and 4
    saved = saved_state(eight, 2)

    four = tmp_path / "four"
    copy_checkpoint(eight, four, 2)
    c4 = config(data_dir)
    c4.mesh.shape = {"data": 2, "fsdp": 2, "tensor": 1}
    build_mesh = sharding.mesh_from_config

    def first_four(shape=None, devices=None, **kwargs):  # the trainer's mesh: over 4 of the 8 devices
        return build_mesh(shape, devices=jax.devices()[:4] if devices is None else devices, **kwargs)

    monkeypatch.setattr(sharding, "mesh_from_config", first_four)

    # the restore itself: onto the new mesh's shardings (some leaves split over fsdp), values unchanged
    mesh = sharding.mesh_from_config(c4.mesh.shape.to_dict())
    tx_gen, _ = trainer.make_optimizer(c4.train.lr, c4.train, c4.train.warmup_steps)
    tx_disc, _ = trainer.make_optimizer(c4.train.disc_lr, c4.train, c4.train.warmup_steps)
    setup = trainer.setup_state(c4, mesh, tx_gen, tx_disc)
    ckpt = checkpoints.Checkpointer(str(four), with_data=False, async_save=False)
    restored = ckpt.restore(2, setup.abstract)
    ckpt.close()
    leaves, shardings = jax.tree.leaves(restored), jax.tree.leaves(setup.shardings)
    assert all(x.sharding == s and len(x.sharding.device_set) == 4 for x, s in zip(leaves, shardings, strict=True))
    assert any(not x.sharding.is_fully_replicated for x in leaves)  # FSDP really splits some of the state
    assert_trees_equal(jax.device_get(restored), saved)
    del restored

    # the trainer resumes there (state and data position) and trains on to step 4
    capsys.readouterr()
    trainer.train(c4, str(four))
    out = capsys.readouterr().out
    assert "resumed from" in out and "(step 2)" in out and "mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in out, out
    assert_same_training(saved_state(four, STEPS), saved_state(eight, STEPS), c)

