"""What every command line (`train`, `extract`, `sample`, `evaluate`, `convert`) does with errors.

A user's mistake (a missing file, a bad flag value, a checkpoint of another model, a diverged run) prints
one line `error: ...` on stderr and exits 1 (2 for usage errors, 130 for Ctrl-C), without a traceback:
the messages already name the problem and the fix. `--debug` or `RQ_JAX_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

DEBUG_ENV = "RQ_JAX_DEBUG"
CACHE_ENV = "RQ_JAX_COMPILATION_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "rq_jax", "xla")


def preload_allocator() -> None:
    """First thing in a command's `__main__`, before JAX is imported: re-execute the command on tcmalloc/jemalloc
    when one is installed (`rq_jax/allocator.py` says why); a bad RQ_JAX_ALLOCATOR is one line and exit 2."""
    from rq_jax.allocator import AllocatorError, reexec_with_allocator

    try:
        reexec_with_allocator()
    except AllocatorError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


class UsageError(ValueError):
    """A command-line argument is invalid (exit code 2)."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from rq_jax.checkpoints import CheckpointError
    from rq_jax.metrics import TrainingDiverged
    from rq_jax.workdir_lock import WorkdirInUse

    return (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError,
            CheckpointError, TrainingDiverged, WorkdirInUse)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(error: BaseException) -> str:
    """The error's message on one line (its first non-empty line; the type when it has no message)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[0] if lines else type(error).__name__


def exit_code(error: BaseException) -> int:
    return 2 if isinstance(error, UsageError) else 130 if isinstance(error, KeyboardInterrupt) else 1


def enable_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache for a command line; returns its directory (None: off).

    A command's programs (the sampler's loop, a train step) take tens of seconds to compile on a CPU
    and the same again at every start; cached, a later start loads them. The directory is
    $RQ_JAX_COMPILATION_CACHE (default ~/.cache/rq_jax/xla; "0" or "" turns it off); a directory set
    through JAX's own JAX_COMPILATION_CACHE_DIR is kept. Programs that compile in under a second are
    not cached.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = os.environ.get(CACHE_ENV, DEFAULT_CACHE)
    if path.strip() in ("", "0"):
        return None
    path = os.path.expanduser(path)
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def guard(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *,
          compilation_cache: bool = True) -> int | None:
    """Runs `main(argv)` (argv without the program name, `--debug` removed) and returns its result.

    User errors become one stderr line and SystemExit(1, or 2 for usage errors); Ctrl-C exits 130;
    anything else (a bug) keeps its traceback. With `--debug` / RQ_JAX_DEBUG=1 every error keeps its
    traceback. `compilation_cache`: turn on the persistent compilation cache (`enable_compilation_cache`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    if compilation_cache:
        enable_compilation_cache()
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted (Ctrl-C).", file=sys.stderr)
        sys.exit(130)
    except _user_error_types() as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(exit_code(e))


def add_distributed_flags(parser: Any) -> None:
    """`--coordinator/--num_processes/--process_id` on an argparse parser (the same flags as `train`'s)."""
    parser.add_argument("--coordinator", default=None, help="host:port of process 0 for a multi-process run")
    parser.add_argument("--num_processes", type=int, default=None, help="number of processes (with --coordinator)")
    parser.add_argument("--process_id", type=int, default=None, help="this process's id (with --coordinator)")


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """`jax.distributed.initialize()` for every command that runs on a cluster: with an explicit coordinator,
    or detected on a TPU pod / a SLURM job of several tasks / a multi-slice job; a no-op on one host."""
    import jax

    if coordinator:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif any(v in os.environ for v in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")):
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
            jax.distributed.initialize()


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *,
        compilation_cache: bool = True) -> None:
    """`guard(main, argv)`, then exits with main's return code (0 for None): a module's `__main__`."""
    sys.exit(int(guard(main, argv, compilation_cache=compilation_cache) or 0))


def config_error(error: BaseException, argv: list[str]) -> str:
    """One sentence for a config that could not be loaded: the root cause's last line (ml_collections wraps
    the config file's own error in several layers), or the override naming a key the config lacks."""
    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    if isinstance(root, (AttributeError, KeyError)):  # ml_collections: an override names a key the config lacks
        key = one_line(root).strip("\"'")
        given = [a for a in argv if a.startswith("--config.") and f".{key}" in a.split("=")[0]]
        where = f" ({given[0]})" if given else ""
        return f"the config has no key {key!r}{where}; check its spelling against the config file."
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    return lines[-1] if lines else type(root).__name__


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (a missing or broken config file, a misspelt override key)."""
    try:
        from absl import flags

        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - parsing runs the config file: any failure is a config error
        if debug_requested(argv[1:]):
            raise
        print(f"error: {config_error(e, argv)}", file=sys.stderr)
        sys.exit(2)


def loaded_config(config_flag: Any) -> Any:
    """The value of a `config_flags` flag (None when not given). A file that failed to load is a placeholder
    that raises on first use: that prints one line `error: ...` and exits 2 (`--debug`: the traceback)."""
    try:
        config = config_flag.value
        if config is not None:
            config.get("stage", None)
    except Exception as e:  # noqa: BLE001 - loading runs the config file: any failure is a config error
        if debug_requested(sys.argv[1:]):
            raise
        print(f"error: {config_error(e, sys.argv)}", file=sys.stderr)
        sys.exit(2)
    return config
