"""rq_jax.workdir_lock: a second run on a workdir stops with a sentence; stale locks and --force take over."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from rq_jax.workdir_lock import LOCK_NAME, WorkdirInUse, WorkdirLock


def test_second_holder_is_refused_and_release_frees(tmp_path):
    with WorkdirLock(str(tmp_path)) as lock:
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == lock.pid
        other = WorkdirLock(str(tmp_path))
        other.pid = lock.pid + 1  # a second live run on this host: this test process stands in for it
        other_info = dict(info, pid=lock.pid)
        (tmp_path / LOCK_NAME).write_text(json.dumps(other_info))
        # the holder is alive (it is us), so a run with another pid is refused with one sentence
        with pytest.raises(WorkdirInUse, match=rf"in use by process {lock.pid} on host .*--force"):
            other.acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    WorkdirLock(str(tmp_path)).acquire().release()


def test_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = WorkdirLock(str(tmp_path))
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": lock.host, "pid": dead.pid, "since": 0, "heartbeat": 0}))
    with lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == lock.pid
    assert "is gone" in caplog.text


def test_other_host_lock_stale_by_heartbeat_or_forced(tmp_path):
    fresh = {"host": "elsewhere", "pid": 1, "since": time.time(), "heartbeat": time.time()}
    (tmp_path / LOCK_NAME).write_text(json.dumps(fresh))
    with pytest.raises(WorkdirInUse, match="on host elsewhere"):
        WorkdirLock(str(tmp_path)).acquire()
    WorkdirLock(str(tmp_path), force=True).acquire().release()

    (tmp_path / LOCK_NAME).write_text(json.dumps(dict(fresh, heartbeat=time.time() - 3600)))
    lock = WorkdirLock(str(tmp_path), stale_after_s=600).acquire()
    assert lock.held
    before = json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"]
    time.sleep(0.01)
    lock.heartbeat(min_interval_s=0)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"] > before
    lock.release()


def test_a_taken_over_lock_is_not_deleted_by_its_old_holder(tmp_path):
    lock = WorkdirLock(str(tmp_path)).acquire()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 7, "since": 0,
                                                  "heartbeat": time.time()}))
    lock.heartbeat(min_interval_s=0)
    assert not lock.held
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "elsewhere"
