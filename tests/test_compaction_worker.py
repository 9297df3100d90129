"""The compaction worker process: same results as in-process compaction, survives its own
death, never outlives a SIGKILLed parent, and stops when the database closes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import shaledb

WORKER = dict(compaction_process_threshold=0)


def _worker_pids(parent_pid: int) -> list[int]:
    """Pids of compaction workers started by ``parent_pid`` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"shaledb.engine._worker_main" in argv and str(parent_pid).encode() in argv:
            pids.append(int(entry))
    return pids


def _fill(db: shaledb.DB, n: int, tag: bytes = b"",
          model: dict[bytes, bytes] | None = None) -> dict[bytes, bytes]:
    model = {} if model is None else model
    for i in range(n):
        k = b"key%06d" % ((i * 7919) % n)
        v = b"%s-%d-" % (tag, i) + b"x" * 60
        db.put(k, v)
        model[k] = v
        if i % 7 == 0:
            db.delete(b"key%06d" % ((i * 31) % n))
            model.pop(b"key%06d" % ((i * 31) % n), None)
    return model


def test_worker_compactions_match_the_model(db_path, small_opts) -> None:
    with shaledb.open(db_path, **small_opts, **WORKER) as db:
        model = _fill(db, 20000)
        with db.snapshot() as snap:
            before = dict(snap.range())
            model2 = dict(model)
            for k in list(model2)[:500]:
                db.delete(k)
                model2.pop(k)
            db.compact_range()
            assert dict(snap.range()) == before == model  # versions a snapshot needs survive
        assert dict(db.range()) == model2
        st = db.stats()
        assert st["compactions_in_worker"] > 0
        assert st["compactions_in_worker"] <= st["compactions"]
    with shaledb.open(db_path, **small_opts) as db:
        assert dict(db.range()) == model2


def test_worker_death_is_retried(db_path, small_opts) -> None:
    """A killed worker is replaced by a new one (a job it was running fails as a retryable
    error); nothing is lost."""
    with shaledb.open(db_path, **small_opts, **WORKER) as db:
        model = _fill(db, 5000)
        db.compact_range()
        for pid in _worker_pids(os.getpid()):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        _fill(db, 8000, b"second", model)
        db.compact_range()
        assert dict(db.range()) == model
        assert db.stats()["background_error"] is None
        worker = db._engine._worker
        assert worker is not None and worker.restarts >= 1


def test_worker_exits_when_parent_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed database process leaves no worker behind, and the directory reopens."""
    path = tmp_path / "db"
    script = textwrap.dedent(f"""
        import sys, shaledb
        db = shaledb.open({str(path)!r}, memtable_size=64 * 1024, target_file_size=64 * 1024,
                          max_bytes_for_level_base=128 * 1024, l0_compaction_trigger=2,
                          compaction_process_threshold=0)
        i = 0
        while True:
            db.put(b"k%08d" % (i % 50000), b"v" * 100)
            i += 1
            if i == 20000:
                print("ready", flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 20
        while not _worker_pids(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _worker_pids(child.pid)
        assert workers, "the child never started a compaction worker"
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 10
    while _worker_pids(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _worker_pids(child.pid) == []
    with shaledb.open(path) as db:
        assert db.get(b"k00000000") == b"v" * 100


@pytest.mark.timeout(60)
def test_close_stops_the_worker(db_path, small_opts) -> None:
    db = shaledb.open(db_path, **small_opts, **WORKER)
    _fill(db, 20000)
    db.close()
    assert _worker_pids(os.getpid()) == []


def test_worker_outlives_the_thread_that_started_it(db_path, small_opts) -> None:
    """PR_SET_PDEATHSIG fires when the *thread* that spawned the worker exits (Linux): a
    worker first used from a short-lived thread must not die when that thread ends."""
    opts = dict(small_opts, l0_compaction_trigger=30, l0_slowdown_trigger=30,
                l0_stop_trigger=36)  # no background compaction: the thread starts the worker
    with shaledb.open(db_path, **opts, **WORKER) as db:
        _fill(db, 3000)
        worker = db._engine._worker
        assert worker is not None and worker._proc is None  # not started yet
        t = threading.Thread(target=db.compact_range)
        t.start()
        t.join()
        assert worker.jobs >= 1 and worker._proc is not None
        pid = worker._proc.pid
        time.sleep(0.3)  # the starting thread is gone
        assert worker._proc.poll() is None, "the worker died with the thread that started it"
        _fill(db, 3000, b"second")
        db.compact_range()
        assert worker.restarts == 0 and worker._proc.pid == pid
        assert db.stats()["background_error"] is None


def test_worker_watchdog_exits_when_the_parent_pid_changes() -> None:
    """The backstop of PR_SET_PDEATHSIG: the worker's watchdog thread polls its parent pid
    and exits when it is not the pid it was started by."""
    code = ("import os, threading\n"
            "from shaledb.engine.compaction_worker import _watch_parent\n"
            "threading.Thread(target=_watch_parent, args=(os.getppid() + 1,)).start()\n"
            "threading.Event().wait(30)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=20)
    assert proc.returncode == 0 and time.monotonic() - t0 < 10
