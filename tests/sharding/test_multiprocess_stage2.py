"""Stage 2 under `jax.distributed`: the features extracted by `python -m rq_jax.extract` on two local processes
(each writing its own shards of one dataset), then the real training CLI in two local processes (two fake CPU
devices each, gloo), FSDP
over all four devices, with the evaluation and the sample grid at every step (the grid at step 1, right after
an evaluation: what used to look like a hang, see `rq_jax.trainers.sample_grid.sample_grid`), a checkpoint
at every step, and a restart of both processes from the step-1 checkpoint that reaches the uninterrupted run's
step-2 state bit for bit.

Kept cheap: the stage-1 run is an initialised (untrained) tiny RQ-VAE saved without a train step (stage 2
only needs its codebook, encoder for the features and decoder for the grid), 32 images of features, 2 steps,
one sample per class; the restart is a copy of the step-1 checkpoint (as in test_multiprocess.py).
"""

import json

import jax
import numpy as np
import pytest
from test_multiprocess import REPO, assert_trees_equal, config, copy_checkpoint, run_processes, saved_state, show

from rq_jax import checkpoints, sharding
from rq_jax.trainers import loop
from rq_jax.trainers import rqvae as stage1

STEPS = 2
TIMEOUT = 240  # a hang becomes a failure showing both logs (with the stacks of every thread)


EXTRACT_ARGS = ["--batch_size=8", "--limit=32", "--records_per_shard=8"]


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    """(rqvae workdir, features dir): an initialised stage-1 state saved as step 0, and its features extracted
    by two processes."""
    root = tmp_path_factory.mktemp("stage1")
    c = config(root / "data")
    mesh = sharding.mesh_from_config({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    tx_gen, _ = stage1.make_optimizer(c.train.lr, c.train, 1)
    tx_disc, _ = stage1.make_optimizer(c.train.disc_lr, c.train, 1)
    setup = stage1.setup_state(c, mesh, tx_gen, tx_disc)
    ckpt = checkpoints.Checkpointer(str(root / "rqvae"), with_data=False, async_save=False)
    ckpt.save(0, setup.init())
    ckpt.close()
    loop.write_run_config(c, str(root / "rqvae"))
    args = [f"--rqvae={root / 'rqvae'}", f"--out={root / 'features'}", *EXTRACT_ARGS]
    _, outs, codes = run_processes(args, root / "extract", 2, 2, root, timeout=TIMEOUT, module="rq_jax.extract")
    assert codes == [0, 0], show(outs)
    return root / "rqvae", root / "features", outs


@pytest.mark.slow
def test_two_process_extraction_is_one_dataset(stage1_run, tmp_path):
    """Each process encoded its own shards; together they are the records of a one-process extraction."""
    from rq_jax.data.features import FeatureSource
    from rq_jax.extract import extract

    rqvae_dir, features_dir, outs = stage1_run
    for out in outs:  # both processes encoded train images
        assert "train: " in out and " img/s" in out, show(outs)
    meta = json.loads((features_dir / "meta.json").read_text())
    train = meta["splits"]["train"]
    assert train["num_records"] == 64 and len(train["shards"]) == 8  # 32 images + flips, 4 images a shard
    single = extract(str(rqvae_dir), str(tmp_path / "single"), **{a[2:].split("=")[0]: int(a.split("=")[1])
                                                                  for a in EXTRACT_ARGS})
    assert single["splits"]["train"]["shards"] == train["shards"]
    for split in ("train", "validation"):
        a, b = FeatureSource(str(features_dir), split), FeatureSource(str(tmp_path / "single"), split)
        ra, rb = a.read(np.arange(len(a))), b.read(np.arange(len(b)))
        for key in ("source_index", "flipped", "label", "caption"):
            np.testing.assert_array_equal(ra[key], rb[key])
        np.testing.assert_allclose(ra["features"], rb["features"], rtol=2e-3, atol=2e-3)  # 2 vs 8 devices


def stage2_args(rqvae_dir, features_dir, _=None) -> list[str]:
    overrides = {"rqvae_workdir": rqvae_dir, "data.features_dir": features_dir, "train.num_steps": STEPS,
                 "train.checkpoint_every": 1, "train.eval_every": 1, "train.sample_every": 1, "train.log_every": 1,
                 "sample.num": 1, "mesh.shape.data": 1, "mesh.shape.fsdp": -1, "mesh.shape.tensor": 1}
    return [f"--config={REPO}/configs/transformer/demo.py:runlocal"] + [f"--config.{k}={v}"
                                                                       for k, v in overrides.items()]


@pytest.mark.slow
def test_stage2_two_processes_eval_sample_grid_and_exact_resume(tmp_path, stage1_run):
    args = stage2_args(*stage1_run)
    full = tmp_path / "full"
    _, outs, codes = run_processes(args, full, 2, 2, tmp_path, timeout=TIMEOUT)
    assert codes == [0, 0], show(outs)
    assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1}" in outs[0], show(outs)
    for step in range(1, STEPS + 1):  # each step: evaluation, then the grid
        assert outs[0].index(f"eval step {step}:") < outs[0].index(f"samples step {step}:"), show(outs)
    # process 0 alone writes the grids (every process draws them)
    assert sorted(p.name for p in (full / "images").iterdir()) == [f"samples_{s:08d}.png" for s in (1, 2)]
    assert "samples step" not in outs[1] and "eval step" not in outs[1], show(outs)

    # both processes restart from the step-1 checkpoint: the same step-2 state, bit for bit
    resumed = tmp_path / "resumed"
    copy_checkpoint(full, resumed, 1)
    _, outs2, codes2 = run_processes(args, resumed, 2, 2, tmp_path, timeout=TIMEOUT)
    assert codes2 == [0, 0], show(outs2)
    assert "resumed from" in outs2[0] and "(step 1)" in outs2[0] and "samples step 2:" in outs2[0], show(outs2)
    assert (resumed / "images" / f"samples_{STEPS:08d}.png").exists()
    assert_trees_equal(saved_state(resumed, STEPS), saved_state(full, STEPS))
