"""One training run per workdir: a lock file naming the host and process that holds it.

Two runs writing checkpoints into one workdir silently overwrite each other's steps. `WorkdirLock` writes
`<workdir>/lock.json` ({host, pid, since, heartbeat}) when a run starts and removes it when the run ends; a
second run on the same workdir stops with one sentence naming the holder. A lock is stale, and is taken
over with a warning, when its process is gone (same host) or its heartbeat (refreshed every minute by a
background thread while the run lives) is older than `stale_after_s` (another host, where the process
cannot be checked); `force=True` (`--force`) takes over any lock. Only process 0 of a multi-host run holds the lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from etils import epath

LOCK_NAME = "lock.json"


class WorkdirInUse(RuntimeError):
    """Another live run holds the workdir's lock; the message names it and the fix."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for this run (see the module docstring)."""

    def __init__(self, workdir: str, *, force: bool = False, stale_after_s: float = 600.0, enabled: bool = True,
                 beat_every_s: float = 60.0):
        self.path = epath.Path(workdir) / LOCK_NAME
        self.force, self.stale_after_s, self.enabled = force, stale_after_s, enabled
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.held = False
        self._last_beat = 0.0
        self._beat_every_s = beat_every_s
        self._stop = threading.Event()

    def holder(self) -> dict[str, Any] | None:
        """The lock's content, or None when there is no readable lock."""
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None

    def _stale_reason(self, info: dict[str, Any]) -> str | None:
        if info.get("host") == self.host:
            if not _alive(int(info.get("pid", -1))):
                return f"its process {info.get('pid')} on this host is gone"
            return None
        age = time.time() - float(info.get("heartbeat", 0))
        if age > self.stale_after_s:
            return f"its heartbeat is {age / 60:.0f} min old"
        return None

    def acquire(self) -> WorkdirLock:
        if not self.enabled:
            return self
        info = self.holder()
        if info is not None and not (info.get("host") == self.host and info.get("pid") == self.pid):
            reason = "--force was given" if self.force else self._stale_reason(info)
            if reason is None:
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("since", 0))))
                raise WorkdirInUse(
                    f"The workdir {self.path.parent} is in use by process {info.get('pid')} on host "
                    f"{info.get('host')} (since {since}, lock file {self.path}); stop that run or use another "
                    "--workdir, or pass --force to take it over."
                )
            logging.warning("Taking over the lock of %s from process %s on %s: %s.", self.path.parent,
                            info.get("pid"), info.get("host"), reason)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self._write({"host": self.host, "pid": self.pid, "since": now, "heartbeat": now})
        self.held = True
        threading.Thread(target=self._beat, daemon=True, name="workdir-lock-heartbeat").start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self._beat_every_s) and self.held:
            try:
                self.heartbeat(min_interval_s=0.0)
            except OSError as e:  # a flaky file system must not stop training
                logging.warning("Could not refresh the lock %s: %s", self.path, e)

    def _write(self, info: dict[str, Any]) -> None:
        tmp = self.path.parent / f".{LOCK_NAME}.{self.pid}.tmp"
        tmp.write_text(json.dumps(info))
        tmp.replace(self.path)  # atomic on POSIX file systems
        self._last_beat = time.time()

    def heartbeat(self, min_interval_s: float = 30.0) -> None:
        """Refreshes the heartbeat (cheap to call every step: writes at most every `min_interval_s`)."""
        if not self.held or time.time() - self._last_beat < min_interval_s:
            return
        info = self.holder()
        if info is not None and (info.get("host"), info.get("pid")) != (self.host, self.pid):
            logging.warning("The lock of %s was taken over by process %s on %s.", self.path.parent,
                            info.get("pid"), info.get("host"))
            self.held = False
            return
        self._write({**(info or {"host": self.host, "pid": self.pid, "since": time.time()}), "heartbeat": time.time()})

    def release(self) -> None:
        self._stop.set()
        if not self.held:
            return
        info = self.holder()
        if info is not None and (info.get("host"), info.get("pid")) == (self.host, self.pid):
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
