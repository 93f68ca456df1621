"""`python -m rq_jax.train --config configs/<stage>/<setting>.py[:arg] --workdir DIR`.

Parses the ml_collections config (overrides such as `--config.train.batch_size=64` work), calls
`jax.distributed.initialize()` when launched on a cluster (or with `--coordinator`), and dispatches
on `config.stage`. Re-running the same command resumes from the workdir's latest checkpoint.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a .py with get_config(arg)).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and images.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator).")


def _maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() under TPU pods / SLURM / an explicit coordinator; no-op on one host."""
    import jax

    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif any(v in os.environ for v in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")):
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
            jax.distributed.initialize()


def main(argv: list[str]) -> None:
    del argv
    if _CONFIG.value is None or not _WORKDIR.value:
        sys.exit("Usage: python -m rq_jax.train --config configs/rqvae/demo.py --workdir /tmp/rqvae_demo")
    logging.set_verbosity(logging.WARNING)  # our progress lines are printed; orbax's INFO is noise
    _maybe_initialize_distributed()
    config = _CONFIG.value
    stage = config.get("stage", None)
    if stage == "rqvae":
        from rq_jax.trainers.rqvae import train

        train(config, _WORKDIR.value)
    elif stage == "rq_transformer":
        from rq_jax.trainers.rq_transformer import train as train_transformer

        train_transformer(config, _WORKDIR.value)
    else:
        sys.exit(f"config.stage={stage!r} has no trainer; known stages: 'rqvae', 'rq_transformer'.")


if __name__ == "__main__":
    # configs/transformer/*.py import their stage-1 config (`from configs.rqvae import ...`): the folder holding
    # `configs/` goes on sys.path before config_flags executes the file, so any working directory works.
    from rq_jax.config_lib import add_config_root_from_argv

    add_config_root_from_argv(sys.argv)
    app.run(main)
