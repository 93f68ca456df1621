"""rq_jax.allocator: when the command lines re-execute themselves on tcmalloc/jemalloc, and that they do."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rq_jax import allocator
from rq_jax.allocator import AllocatorError, find_allocator, loaded_allocator, preload_env

LIB = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def test_auto_preloads_the_found_library_first_and_keeps_the_users_preloads():
    env = preload_env({"PATH": "/bin", "LD_PRELOAD": "/opt/libfoo.so"}, found=LIB, platform="linux")
    assert env["LD_PRELOAD"] == f"{LIB} /opt/libfoo.so"
    assert env["PATH"] == "/bin" and env[allocator._REEXEC_MARK] == LIB
    assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == str(1 << 50)
    kept = preload_env({"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "7"}, found=LIB, platform="linux")
    assert kept["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "7" and kept["LD_PRELOAD"] == LIB


@pytest.mark.parametrize("environ, kw", [
    ({allocator.ENV: "system"}, {}),                                 # the user keeps glibc
    ({}, {"found": None}),                                           # nothing installed
    ({}, {"already_loaded": "/usr/lib/libjemalloc.so.2"}),           # one is mapped already
    ({"LD_PRELOAD": "/x/libjemalloc.so.2"}, {}),                     # the user preloads one
    ({allocator._REEXEC_MARK: LIB}, {}),                             # this is the re-executed process
    ({}, {"platform": "darwin"}),                                    # no LD_PRELOAD semantics
])
def test_no_reexec(environ, kw):
    kw = {"found": LIB, "platform": "linux", **kw}
    assert preload_env(environ, **kw) is None


def test_explicit_path(tmp_path):
    lib = tmp_path / "libmymalloc.so"
    lib.write_bytes(b"")
    env = preload_env({allocator.ENV: str(lib)}, found=None, platform="linux")
    assert env["LD_PRELOAD"] == str(lib)
    with pytest.raises(AllocatorError, match="is not a file; give the path"):
        preload_env({allocator.ENV: str(tmp_path / "missing.so")}, found=LIB, platform="linux")


def test_find_and_loaded(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "libjemalloc.so.2").write_bytes(b"")
    (tmp_path / "a").mkdir()
    dirs = (str(tmp_path / "a"), str(tmp_path / "b"))
    assert find_allocator(dirs) == str(tmp_path / "b" / "libjemalloc.so.2")
    (tmp_path / "a" / "libtcmalloc.so.4").write_bytes(b"")  # earlier in CANDIDATES wins over the directory order
    assert find_allocator(dirs) == str(tmp_path / "a" / "libtcmalloc.so.4")
    assert find_allocator((str(tmp_path / "nowhere"),)) is None
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n\n"
                    "7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n")
    assert loaded_allocator(str(maps)) == "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n")
    assert loaded_allocator(str(maps)) is None and loaded_allocator(str(tmp_path / "none")) is None


@pytest.mark.skipif(sys.platform != "linux" or find_allocator() is None,
                    reason="no tcmalloc/jemalloc installed (apt install libtcmalloc-minimal4)")
def test_reexec_runs_the_same_command_on_the_allocator():
    code = ("import sys; from rq_jax.allocator import reexec_with_allocator, loaded_allocator; "
            "print('start', flush=True); reexec_with_allocator(); print(loaded_allocator(), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in (allocator.ENV, allocator._REEXEC_MARK, "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", code, "a", "--b=1"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split("\n")
    assert out[0] == "start" and out[1] == "start"  # the command ran twice: before and after the exec
    assert os.path.basename(find_allocator()) in out[2] and out[2].endswith("['a', '--b=1']")
    off = subprocess.run([sys.executable, "-c", code], env={**env, allocator.ENV: "system"}, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split("\n")
    assert off[:2] == ["start", "None []"]
