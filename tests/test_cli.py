"""rq_jax.cli: one line on stderr and an exit code for user errors, tracebacks only with --debug."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rq_jax import cli
from rq_jax.checkpoints import CheckpointError
from tests.helpers import assert_one_line_error


def _exit(main, argv, capsys, monkeypatch, env=None):
    if env is None:
        monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    else:
        monkeypatch.setenv(cli.DEBUG_ENV, env)
    with pytest.raises(SystemExit) as info:
        cli.run(main, argv)
    return info.value.code, capsys.readouterr()


@pytest.mark.parametrize("error, code", [
    (FileNotFoundError("/x/config.json does not exist: give the --workdir of a run."), 1),
    (CheckpointError("The checkpoint /w/3 could not be read; pick another step.\nmore detail"), 1),
    (cli.UsageError("--top_p must be in (0, 1], got 0."), 2),
    (KeyboardInterrupt(), 130),
])
def test_user_errors_are_one_line(error, code, capsys, monkeypatch):
    def main(argv):
        raise error

    rc, out = _exit(main, [], capsys, monkeypatch)
    assert rc == code
    assert_one_line_error(out.err, "error: ")
    if str(error):
        assert cli.one_line(error) in out.err and "more detail" not in out.err


def test_debug_keeps_the_traceback_and_is_removed_from_argv(capsys, monkeypatch):
    seen = []

    def main(argv):
        seen.append(argv)
        raise ValueError("bad value")

    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(ValueError, match="bad value"):
        cli.run(main, ["--x", "1", "--debug"])
    assert seen == [["--x", "1"]]
    with pytest.raises(ValueError):
        _exit(main, [], capsys, monkeypatch, env="1")


def test_bugs_keep_their_traceback_and_success_exits_with_the_code(capsys, monkeypatch):
    def bug(argv):
        raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError):
        cli.run(bug, [])
    rc, _ = _exit(lambda argv: 3, [], capsys, monkeypatch)
    assert rc == 3
    rc, _ = _exit(lambda argv: None, [], capsys, monkeypatch)
    assert rc == 0


_CACHED_PROGRAM = """
import jax, jax.numpy as jnp
from rq_jax import cli
def main(argv):
    jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
cli.run(main, [])
"""


@pytest.mark.parametrize("setting", ["dir", "off"])
def test_commands_use_a_persistent_compilation_cache(setting, tmp_path):
    """A command line's compiled programs go to $RQ_JAX_COMPILATION_CACHE, so the next start loads them."""
    cache = tmp_path / "xla"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(RQ_JAX_COMPILATION_CACHE=str(cache) if setting == "dir" else "0",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", _CACHED_PROGRAM], env=env, check=True, timeout=120)
    entries = list(cache.rglob("*")) if cache.exists() else []
    assert bool(entries) == (setting == "dir"), entries
