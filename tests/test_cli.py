"""rq_jax.cli: one line on stderr and an exit code for user errors, tracebacks only with --debug."""

from __future__ import annotations

import pytest

from rq_jax import cli
from rq_jax.checkpoints import CheckpointError


def _exit(main, argv, capsys, monkeypatch, env=None):
    if env is None:
        monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    else:
        monkeypatch.setenv(cli.DEBUG_ENV, env)
    with pytest.raises(SystemExit) as info:
        cli.run(main, argv)
    return info.value.code, capsys.readouterr()


def assert_one_line_error(err: str, contains: str) -> None:
    """The CLI contract: exactly one stderr line, starting `error: `, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], err
    assert "Traceback" not in err


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
