"""`python -m rq_jax.train` user errors: one line `error: ...` on stderr, an exit code, no traceback; and one run
per workdir. Each case fails before anything is compiled (a few seconds per process)."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from tests.helpers import assert_one_line_error

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = f"{REPO}/configs/rqvae/demo.py"


def train_cli(*args, cwd=REPO):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("RQ_JAX_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "rq_jax.train", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def one_line(proc, code: int, contains: str) -> None:
    assert_one_line_error(proc.stderr, contains, code=proc.returncode, want_code=code)


@pytest.mark.parametrize("args, code, contains", [
    ([f"--config={DEMO}:runlocal", "--config.train.bogus=1"], 2, "bogus"),
    ([f"--config={REPO}/configs/rqvae/nothere.py"], 2, "nothere.py"),
    ([f"--config={DEMO}:runlocl"], 2, "Unknown config argument(s) 'runlocl'; accepted"),
])
def test_config_mistakes_are_one_line(tmp_path, args, code, contains):
    one_line(train_cli(*args, f"--workdir={tmp_path / 'w'}"), code, contains)


def test_workdir_that_is_a_file(tmp_path):
    (tmp_path / "w").write_text("")
    one_line(train_cli(f"--config={DEMO}:runlocal", f"--workdir={tmp_path / 'w'}"), 2, "is a file, not a directory")


def test_a_second_run_on_a_locked_workdir_stops(tmp_path):
    """The lock names this test process (alive, same host) as the holder of the workdir."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "lock.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": 0,
                                                 "heartbeat": 0}))
    one_line(train_cli(f"--config={DEMO}:runlocal", f"--workdir={work}"), 1,
             f"is in use by process {os.getpid()} on host {socket.gethostname()}")
    assert json.loads((work / "lock.json").read_text())["pid"] == os.getpid()  # the holder's lock is untouched


def test_stage2_without_features_names_the_missing_setting(tmp_path):
    one_line(train_cli(f"--config={REPO}/configs/transformer/demo.py:runlocal", f"--workdir={tmp_path / 'w'}",
                       cwd=tmp_path), 1, "config.data.features_dir is not set: extract the stage-2 features")
