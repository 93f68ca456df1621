"""Plain helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import pathlib

from rq_jax.config_lib import load_config_file

REPO = pathlib.Path(__file__).resolve().parent.parent


def load_repo_config(rel: str | pathlib.Path, arg: str | None = None):
    """`get_config(arg)` of a config file, its path relative to the repository root (or absolute)."""
    path = str(REPO / rel)
    return load_config_file(f"{path}:{arg}" if arg else path)


def assert_one_line_error(err: str, contains: str = "", *, code: int | None = None, want_code: int | None = None
                          ) -> None:
    """The command-line contract for user errors: exactly one stderr line starting `error: ` and holding
    `contains`, no traceback, and (when given) the exit code `code` equal to `want_code`."""
    if want_code is not None:
        assert code == want_code, (code, err[-2000:])
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], err[-2000:]
    assert "Traceback" not in err
