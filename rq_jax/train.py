"""`python -m rq_jax.train --config configs/<stage>/<setting>.py[:arg] --workdir DIR`.

Parses the ml_collections config (overrides such as `--config.train.batch_size=64` work), calls
`jax.distributed.initialize()` when launched on a cluster (or with `--coordinator`), and dispatches
on `config.stage`. Re-running the same command resumes from the workdir's latest checkpoint.

One run per workdir: a second one stops with a sentence naming the first (`--force` takes the workdir
over). User errors (a misspelt config key, a missing file, a diverged run) print one line `error: ...`
and exit 1 (2 for bad flags; 130 after Ctrl-C, which saves a checkpoint first); `--debug` or
RQ_JAX_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rq_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a .py with get_config(arg)).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and images.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator).")
_FORCE = flags.DEFINE_bool("force", False, "Take the workdir over even if another live run holds its lock.")
flags.DEFINE_bool("debug", False, "Show tracebacks of errors (also RQ_JAX_DEBUG=1).")


def _maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() under TPU pods / SLURM / an explicit coordinator; no-op on one host."""
    cli.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def train(config, workdir: str) -> None:
    """Dispatches on config.stage, holding the workdir's lock (process 0) while the run lasts."""
    import jax

    from rq_jax.workdir_lock import WorkdirLock

    stage = config.get("stage", None)
    if stage not in ("rqvae", "rq_transformer"):
        raise cli.UsageError(f"config.stage={stage!r} has no trainer; known stages: 'rqvae', 'rq_transformer'.")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise cli.UsageError(f"--workdir {workdir} is a file, not a directory; give a directory for the run.")
    with WorkdirLock(workdir, force=_FORCE.value, enabled=jax.process_index() == 0 and "://" not in workdir):
        if stage == "rqvae":
            from rq_jax.trainers.rqvae import train as train_rqvae

            train_rqvae(config, workdir)
        else:
            from rq_jax.trainers.rq_transformer import train as train_transformer

            train_transformer(config, workdir)


def main(argv: list[str]) -> None:
    del argv
    config = cli.loaded_config(_CONFIG)
    if config is None or not _WORKDIR.value:
        print("error: usage: python -m rq_jax.train --config configs/rqvae/demo.py --workdir /tmp/rqvae_demo",
              file=sys.stderr)
        sys.exit(2)
    logging.set_verbosity(logging.WARNING)  # our progress lines are printed; orbax's INFO is noise
    _maybe_initialize_distributed()
    import jax

    if jax.process_index() == 0 and jax.default_backend() == "cpu":
        from rq_jax.allocator import describe

        print(describe(), flush=True)
    # Several processes: no default compilation cache. A process that loads the step from the cache while
    # another compiles it reaches the first collective tens of seconds earlier, past the fixed 30 s gloo
    # (CPU) waits; JAX_COMPILATION_CACHE_DIR still turns it on.
    cli.guard(lambda _: train(config, _WORKDIR.value), sys.argv[1:], compilation_cache=jax.process_count() == 1)


if __name__ == "__main__":
    cli.preload_allocator()  # first, before any thread exists (rq_jax/allocator.py says why)
    # configs/transformer/*.py import their stage-1 config (`from configs.rqvae import ...`): the folder holding
    # `configs/` goes on sys.path before config_flags executes the file, so any working directory works.
    from rq_jax.config_lib import add_config_root_from_argv

    add_config_root_from_argv(sys.argv)
    app.run(main, flags_parser=cli.parse_flags)
