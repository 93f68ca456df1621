"""Run the command lines on a malloc that keeps freed memory for reuse (tcmalloc or jemalloc), when one is installed.

Why: XLA:CPU allocates the whole temporary buffer of an execution with one malloc (9.1 GB for the backward
pass of the ImageNet RQ-VAE decoder at batch 2) and frees it when the call returns. glibc serves such a
block with a fresh `mmap` and gives it back with `munmap`, so every training step page-faults through all of
it again: 2.27 million faults per decoder backward, which took 10-12 s instead of 6.0-6.2 s on the 2-core
development VM (page faults cost 3-10 us each there). tcmalloc and jemalloc keep the freed pages and hand the
same ones back at the next step (benchmarks/RESULTS.md, 2026-12-03). The official PyTorch trainer suffers
the same way; TPU VM images preload tcmalloc for this reason.

A malloc can only be chosen before the process starts, so `reexec_with_allocator()` (called first thing by
`python -m rq_jax.train`, `sample`, `extract` and `evaluate`, through `cli.preload_allocator`) re-executes
the same command line with the library in `LD_PRELOAD`. Controlled by
`RQ_JAX_ALLOCATOR`: "auto" (default: the first of `CANDIDATES` found), "system" (keep glibc's malloc), or a
path to a shared library. Nothing happens off Linux, when a tcmalloc/jemalloc is already loaded, or when no
library is found (`apt install libtcmalloc-minimal4` provides one).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

ENV = "RQ_JAX_ALLOCATOR"
_REEXEC_MARK = "RQ_JAX_ALLOCATOR_REEXEC"  # set in the re-executed process: never re-execute twice
CANDIDATES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2")
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
               "/usr/local/lib", "/opt/conda/lib")
_KNOWN = ("tcmalloc", "jemalloc")
# gperftools prints a stack trace for every allocation over 1 GiB unless told otherwise; XLA's are routine.
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 50)}


class AllocatorError(ValueError):
    """RQ_JAX_ALLOCATOR names a library that does not exist."""


def _is_allocator(path: str) -> bool:
    return any(k in os.path.basename(path) for k in _KNOWN)


def loaded_allocator(maps_path: str = "/proc/self/maps") -> str | None:
    """Path of the tcmalloc/jemalloc mapped into this process, or None (also off Linux)."""
    try:
        with open(maps_path) as f:
            for line in f:
                path = line.split()[-1] if line.strip() else ""
                if _is_allocator(path):
                    return path
    except OSError:
        return None
    return None


def find_allocator(dirs: tuple[str, ...] = SEARCH_DIRS, names: tuple[str, ...] = CANDIDATES) -> str | None:
    """The first installed library of `names` in `dirs` (in the order of `names`), or None."""
    for name in names:
        for d in dirs:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                return path
    return None


def preload_env(environ: Mapping[str, str], *, found: str | None = None, already_loaded: str | None = None,
                platform: str = sys.platform) -> dict[str, str] | None:
    """The environment to re-execute with (LD_PRELOAD naming the allocator first), or None to go on as is.

    `found` is what `find_allocator()` returned (only read in "auto" mode); `already_loaded` what
    `loaded_allocator()` returned. Pure, so the decision is testable without executing anything.
    """
    choice = environ.get(ENV, "auto").strip() or "auto"
    if choice == "system" or platform != "linux" or environ.get(_REEXEC_MARK) or already_loaded:
        return None
    if choice == "auto":
        lib = found
    elif os.path.isfile(choice):
        lib = choice
    else:
        raise AllocatorError(f"{ENV}={choice!r} is not a file; give the path of libtcmalloc/libjemalloc, "
                             "'auto' to look for one, or 'system' for glibc's malloc.")
    if lib is None:
        return None
    preload = [p for p in environ.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    if any(_is_allocator(p) for p in preload):
        return None  # the user preloads one already (it would be mapped; this is the belt to those braces)
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join([lib, *preload])
    env[_REEXEC_MARK] = lib
    for key, value in _QUIET.items():
        env.setdefault(key, value)
    return env


def reexec_with_allocator() -> None:
    """Re-executes this command line with tcmalloc/jemalloc preloaded (see the module docstring); may not return.

    Call it before anything else runs (no threads, no open work): the process image is replaced.
    """
    env = preload_env(os.environ, found=find_allocator(), already_loaded=loaded_allocator())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *sys.orig_argv[1:]]
    try:
        os.execve(sys.executable, argv, env)
    except OSError:  # cannot exec (a sandbox): run on as we are, only slower on CPU
        return


def describe() -> str:
    """One line for the logs: which malloc serves XLA's buffers, and how to change it."""
    lib = loaded_allocator()
    if lib:
        return f"malloc: {os.path.basename(lib)} (keeps freed memory for the next step; {ENV}=system turns it off)"
    if os.environ.get(ENV, "auto") == "system":
        return f"malloc: glibc ({ENV}=system)"
    return ("malloc: glibc; XLA:CPU steps page-fault through their temporary buffers at every call: install "
            "tcmalloc (apt install libtcmalloc-minimal4) for up to 2x faster CPU training steps")
