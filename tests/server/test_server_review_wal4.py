"""Review of database format 4 (the WAL seal moved off the writer's thread), as the server's
clients see it: a memtable switch must never hold the event loop for an fsync. Real server on
127.0.0.1, redis-py clients. Engine-level tests of the same review: tests/test_review_wal4.py.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import shaledb
from _helpers import dir_emfile_fs, hold_seal
from _helpers import wal_logs as _logs
from shaledb.engine.vfs import MappedFile, WritableFile
from shaledb.server import ServerConfig
from shaledb.testing import FaultInjectionFS

from ._server_support import ServerThread

pytestmark = pytest.mark.timeout(120)


class _SlowSyncerFS(FaultInjectionFS):
    """fsyncs of the file named ``hold`` by the engine's periodic syncer wait for ``release``
    (a disk so busy that one takes seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: str | None = None
        self.release = threading.Event()
        self.waiting = threading.Event()

    def _fsync(self, f: WritableFile | MappedFile, fd: int) -> None:
        if (self.hold is not None and os.path.basename(f.path) == self.hold
                and threading.current_thread().name == "shaledb-wal-sync"
                and not self.release.is_set()):
            self.waiting.set()
            self.release.wait(30)
        super()._fsync(f, fd)


def test_a_set_after_a_memtable_switch_does_not_wait_for_a_background_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a memtable switch the engine's 1-second syncer (appendfsync everysec)
    seals the old WAL segment and fsyncs the new one, holding the new segment's sync lock.
    The next SET's write owed the "prior segment sealed" sync mark and took that lock to
    write it: the event loop waited for the fsync, and every client with it (PING included).
    Failed before the fix (the SET timed out after 2 s)."""
    gate, _ = hold_seal(monkeypatch)  # the flush thread leaves the seal to the syncer
    path = tmp_path / "db"
    fs = _SlowSyncerFS()
    db = shaledb.open(path, fs=fs, fsync_interval=0.05, memtable_size=64 * 1024)
    st = ServerThread(ServerConfig(port=0, host="127.0.0.1", dir=str(path),
                                   metrics_port=None), db)
    try:
        (prepared,) = [n for n in os.listdir(path) if n.endswith(".log.new")]
        fs.hold = prepared.removesuffix(".new")  # the segment the next switch starts
        c = st.client()
        _set_until_a_switch(c, path)
        assert fs.waiting.wait(10), "the syncer did not fsync the new segment"
        quick = st.client(socket_timeout=2)
        try:
            assert quick.set("after-switch", "1")
            assert quick.ping()
        except redis.TimeoutError:
            pytest.fail("a SET waited for the background fsync of the new WAL segment")
        finally:
            quick.close()
        fs.release.set()
        assert c.get("after-switch") == b"1"
        c.close()
    finally:
        gate.set()
        fs.release.set()
        st.stop()
        with contextlib.suppress(shaledb.ShaleError):
            db.close()


def _set_until_a_switch(c: Any, path: Path) -> int:
    """SETs until a memtable switch starts a new WAL segment; returns how many."""
    first = _logs(path)
    i = 0
    while _logs(path) == first:
        assert c.set(f"k{i}", "v" * 1000)
        i += 1
    return i


def _server_with_dir_emfile(path: Path, monkeypatch: pytest.MonkeyPatch, appendfsync: str
                            ) -> tuple[threading.Event, Any, shaledb.DB, ServerThread]:
    """A server on a database whose directory fsyncs can be made to fail with EMFILE, the
    flush thread held before it seals (and names) anything: (gate, fs, db, server)."""
    gate, _ = hold_seal(monkeypatch)
    fs = dir_emfile_fs()
    db = shaledb.open(path, fs=fs, fsync_interval=None, memtable_size=64 * 1024)
    st = ServerThread(ServerConfig(port=0, host="127.0.0.1", dir=str(path), metrics_port=None,
                                   appendfsync=appendfsync), db)
    return gate, fs, db, st


def test_emfile_on_the_new_segments_directory_fsync_does_not_stop_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """appendfsync always: the first fsync after a memtable switch makes the new WAL
    segment's name durable first (the switch only renamed it), a directory fsync that needs a
    descriptor. An EMFILE there made the database read-only: every later SET answered MISCONF
    until a restart. Now the write whose fsync met it is not acknowledged (its connection
    gets MISCONF "fsync failed" and is closed, as for any failed fsync) and the next SET works.
    Failed before the fix (the SET on a new connection answered MISCONF)."""
    path = tmp_path / "db"
    gate, fs, db, st = _server_with_dir_emfile(path, monkeypatch, "always")
    try:
        c = st.client()
        first = _logs(path)
        fs.fail_dirs = 1  # the next directory fsync: the new segment's name, at its first sync
        i = 0
        while _logs(path) == first or fs.fail_dirs:
            try:
                assert c.set(f"k{i}", "v" * 1000)
            except (redis.ResponseError, redis.ConnectionError) as exc:
                assert "fsync failed" in str(exc) or isinstance(exc, redis.ConnectionError)
                c.close()
                c = st.client()
            i += 1
            assert i < 5000, "no directory fsync was attempted"
        c.close()
        again = st.client()
        assert again.set("after", "1")
        assert again.get("after") == b"1"
        again.close()
        assert st.call(db.stats)["background_error"] is None
    finally:
        gate.set()
        st.stop()
        with contextlib.suppress(shaledb.ShaleError):
            db.close()


def test_the_servers_everysec_fsync_goes_on_after_a_descriptor_shortage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """appendfsync everysec on a database opened without the engine's own syncer: the server
    calls DB.sync() every second. DB.sync() now raises DescriptorsExhaustedError (retryable)
    when it cannot open the directory to make a new WAL segment's name durable; the server's
    task took any error for a failed fsync and stopped for good, so the database was never
    fsynced every second again (silently: writes went on). Failed before the fix (no fsync
    of the WAL after the shortage)."""
    path = tmp_path / "db"
    gate, fs, db, st = _server_with_dir_emfile(path, monkeypatch, "everysec")
    try:
        c = st.client()
        first = _logs(path)
        _set_until_a_switch(c, path)
        fs.fail_dirs = 1  # the periodic DB.sync(): the new segment's name first
        deadline = time.monotonic() + 5
        while fs.fail_dirs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fs.fail_dirs == 0, "no periodic sync"
        assert c.set("after", "1")
        (new,) = set(_logs(path)) - set(first)
        before = fs.op_counts.get("fsync", 0)
        time.sleep(2.5)  # two periods
        assert db._engine._wal is not None and db._engine._wal.path.endswith(new)
        assert fs.op_counts.get("fsync", 0) > before, "the server stopped fsyncing every second"
        assert st.call(db.stats)["background_error"] is None
        c.close()
    finally:
        gate.set()
        st.stop()
        with contextlib.suppress(shaledb.ShaleError):
            db.close()
