"""The directory lock: one open handle per database directory, across threads and processes.

A second open (same process or another) must raise LockedError with a helpful message and
must not disturb the holder; the lock is released by close() and by the holder's death.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import shaledb
from shaledb import LockedError, ShaleError


def child_env() -> dict[str, str]:
    """Environment letting a child ``python`` import the same shaledb as this process."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(shaledb.__file__)))
    paths = [pkg_parent] + [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


TRY_OPEN = textwrap.dedent("""
    import sys, shaledb
    try:
        db = shaledb.open(sys.argv[1])
    except shaledb.LockedError as exc:
        print("LOCKED", exc)
        sys.exit(3)
    db.put(b"child", b"was-here", sync=True)
    db.close()
    print("OPENED")
""")


def try_open_in_child(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRY_OPEN, str(path)], env=child_env(),
                          capture_output=True, text=True, timeout=60)


def test_second_open_same_process_raises_locked(db_path):
    """A second open of an open directory in the same process -> LockedError; the first handle
    keeps working and keeps the lock."""
    with shaledb.open(db_path) as db:
        db.put(b"k", b"v")
        with pytest.raises(LockedError) as ei:
            shaledb.open(db_path)
        assert isinstance(ei.value, ShaleError)
        # the failed open must not have released or damaged anything
        db.put(b"k2", b"v2")
        assert db.get(b"k") == b"v"
        with pytest.raises(LockedError):
            shaledb.open(db_path)
        with pytest.raises(LockedError):
            shaledb.open(str(db_path) + "/")  # same dir, other spelling
    with shaledb.open(db_path) as db:
        assert db.get(b"k2") == b"v2"


def test_open_in_other_process_raises_locked(db_path):
    """Another process opening a held directory gets LockedError with a message naming the
    directory and saying it is locked/in use; the holder is unaffected."""
    with shaledb.open(db_path) as db:
        db.put(b"k", b"v")
        res = try_open_in_child(db_path)
        assert res.returncode == 3, (res.stdout, res.stderr)
        msg = res.stdout
        assert msg.startswith("LOCKED")
        low = msg.lower()
        assert str(db_path) in msg or "lock" in low or "in use" in low or "already open" in low, msg
        assert len(msg.strip()) > len("LOCKED") + 10, msg
        assert db.get(b"k") == b"v"
        db.put(b"k3", b"v3")
    with shaledb.open(db_path) as db:
        assert db.get(b"k3") == b"v3"
        assert db.get(b"child") is None


def test_lock_free_after_close(db_path):
    """After close() the directory can be opened again, here and in another process."""
    db = shaledb.open(db_path)
    db.put(b"k", b"v")
    db.close()
    res = try_open_in_child(db_path)
    assert res.returncode == 0 and "OPENED" in res.stdout, (res.stdout, res.stderr)
    with shaledb.open(db_path) as db:
        assert db.get(b"k") == b"v"
        assert db.get(b"child") == b"was-here"


def test_lock_free_after_context_manager_exit_with_exception(db_path):
    """Leaving ``with shaledb.open()`` by an exception releases the lock too."""
    with pytest.raises(RuntimeError), shaledb.open(db_path) as db:
        db.put(b"k", b"v")
        raise RuntimeError
    with shaledb.open(db_path) as db:
        assert db.get(b"k") == b"v"


def test_lock_released_when_holder_is_sigkilled(db_path):
    """A child holding the DB open is SIGKILLed: while alive others get LockedError; after
    its death the directory opens again and its acknowledged writes are there."""
    holder = textwrap.dedent("""
        import sys, time, shaledb
        db = shaledb.open(sys.argv[1])
        for i in range(100):
            db.put(b"k%03d" % i, b"v%03d" % i)
        print("READY", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder, str(db_path)], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", (line, proc.stderr.read() if proc.poll() else "")
        with pytest.raises(LockedError):
            shaledb.open(db_path)
        res = try_open_in_child(db_path)
        assert res.returncode == 3, (res.stdout, res.stderr)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    with shaledb.open(db_path) as db:
        assert list(db.range()) == [(b"k%03d" % i, b"v%03d" % i) for i in range(100)]
