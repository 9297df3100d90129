"""Review 15c: attacks on the sync-mode fix of commit 9a4ad14 (a sync primary's replies
wait for its own fsync as well as for K replica acknowledgements). Each test failed on the
code under review. Fixed: the visible sequence of sync-mode reads moves only as far as the
primary's own successful fsync covers (``Replication.durable``), and a write command's
reply is held like a read's while anything is unacknowledged (it may write nothing)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from ._server_support import HOST, ServerThread, wait_until
from .test_server_sync_reads import FakeReplica, Pending, _waiting

Factory = Callable[..., ServerThread]


def _answered_within(pending: Pending, seconds: float) -> bool:
    pending.thread.join(seconds)
    return bool(pending.result)


def test_a_write_that_changes_nothing_does_not_reveal_an_unacknowledged_write(
        server_factory: Factory) -> None:
    """SETNX on a key whose only version is an unacknowledged SET (not on any replica, not
    fsynced on the primary) answers 0 at once: a reply that shows the write, while GET
    still hides it and the SET may yet fail with -NOREPLICAS. (Writes read the latest
    state; the design relies on "a write's reply is released only when its own sequence
    number ... is acknowledged" -- a write that wrote nothing has none and is not held.)"""
    p = server_factory(sync_replicas=1, sync_replicas_timeout=10.0)
    pc = p.client()
    fake = FakeReplica(p.port, pc)
    try:
        w = Pending(p, lambda c: c.set("x", "unacked"))
        _waiting(p, 1)
        assert pc.get("x") is None  # the acknowledged view hides it
        probe = Pending(p, lambda c: c.setnx("x", "other"))
        early = _answered_within(probe, 2.0)
        early_reply = probe.result[:1]
        fake.ack()
        assert w.get() is True
        probe.get()
        assert not early, (f"SETNX answered {early_reply} while the SET it read was "
                           "unacknowledged (GET still said nil)")
    finally:
        fake.close()


class _SlowDiskFS:
    """Made lazily (FaultInjectionFS imports the engine): a fault-injecting file system
    whose fsyncs wait, before they start, while ``hold`` is set."""

    @staticmethod
    def make() -> Any:
        from shaledb.testing import FaultInjectionFS

        class SlowDisk(FaultInjectionFS):
            def __init__(self) -> None:
                super().__init__()
                self.hold = threading.Event()
                self.released = threading.Event()
                self.waiting = 0

            def _sync(self, path: str, do: Callable[[], None]) -> None:
                if self.hold.is_set():
                    self.waiting += 1
                    self.released.wait(30)
                super()._sync(path, do)

        return SlowDisk()


def test_a_read_does_not_show_a_write_the_primarys_disk_does_not_hold(
        server_factory: Factory, tmp_path: Any) -> None:
    """The fix makes a sync primary's write reply wait for its own fsync, because a power
    loss takes back what was only in its page cache. But the view point reads answer from
    (``Replication.visible``) moves on replica ACKs alone: a GET on the primary shows a
    write the moment a replica acknowledged it, before the primary's fsync. A power loss
    then takes it back: the writer gets an error, the reader saw a value that is gone."""
    import shaledb
    from shaledb.server import ServerConfig

    path = str(tmp_path / "primary")
    fs = _SlowDiskFS.make()
    db = shaledb.open(path, fs=fs, fsync_interval=None)
    p = ServerThread(ServerConfig(port=0, host=HOST, dir=path, metrics_port=None,
                                  appendfsync="everysec", sync_replicas=1,
                                  sync_replicas_timeout=10.0), db)
    seen: Any = None
    fake: FakeReplica | None = None
    try:
        pc = p.client()
        fake = FakeReplica(p.port, pc)
        fs.hold.set()  # the primary's disk is slow from now on
        w = Pending(p, lambda c: c.set("x", "only-in-page-cache"))
        _waiting(p, 1)
        fake.ack()  # the replica holds it durably
        wait_until(lambda: fs.waiting >= 1, 10, "the primary's fsync under way")
        reader = p.client()
        seen = reader.get("x")
        still_waiting = not _answered_within(w, 0.5)
        fs.crash()  # power loss of the primary: its page cache is gone
        fs.released.set()
        writer_got = w.get()
        reader.close()
        pc.close()
    finally:
        fs.released.set()
        if fake is not None:
            fake.close()
        p.stop()
        with contextlib.suppress(shaledb.ShaleError):
            db.close()
    after = server_factory(dir=path)  # the primary restarted on what its disk kept
    kept = after.client().get("x")
    assert still_waiting, "the writer's reply did not wait for the primary's fsync"
    assert seen is None or kept == seen, (
        f"GET showed {seen!r} before the primary's fsync; after its power loss the key "
        f"is {kept!r} (the writer got {writer_got!r})")


def test_a_write_whose_fsync_failed_is_not_shown_by_reads(
        server_factory: Factory, tmp_path: Any) -> None:
    """The same gap with a failed fsync: the writer gets -MISCONF ("writes not
    acknowledged"), yet GET on the primary shows the write (a replica acknowledged it),
    though no one can say it is on the primary's disk -- unlike a -NOREPLICAS write, which
    point reads keep hiding."""
    import shaledb
    from shaledb.server import ServerConfig
    from shaledb.testing import FaultInjectionFS

    path = str(tmp_path / "primary")
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, fsync_interval=None)
    p = ServerThread(ServerConfig(port=0, host=HOST, dir=path, metrics_port=None,
                                  appendfsync="everysec", sync_replicas=1,
                                  sync_replicas_timeout=10.0), db)
    fake: FakeReplica | None = None
    try:
        pc = p.client()
        fake = FakeReplica(p.port, pc)
        fs.inject("fsync", count=None)  # the primary's disk fails every fsync from now on
        w = Pending(p, lambda c: c.set("x", "fsync-failed"))
        _waiting(p, 1)
        fake.ack()
        writer_got = w.get()
        assert isinstance(writer_got, redis.ResponseError) and "MISCONF" in str(writer_got)
        seen = p.client().get("x")
        assert seen is None, (f"GET showed {seen!r}, a write whose writer was told "
                              f"{writer_got!r}")
    finally:
        if fake is not None:
            fake.close()
        p.stop()
        with contextlib.suppress(shaledb.ShaleError):
            db.close()


def test_ping_and_info_in_the_turn_of_unacknowledged_writes_are_answered_at_once(
        server_factory: Factory) -> None:
    """A command that reads no data settled the turn's buffered writes before it ran, and
    a batch that committed holds its replies: a PING or INFO arriving in the same turn as
    another client's write waited for that write's acknowledgement and, past
    sync-replicas-timeout, answered -NOREPLICAS (a monitoring INFO failing exactly when
    the replicas are slow; found by CI through a test's INFO poll)."""
    from .test_server_review_data import _cmd, _connected, _hold_loop, _line

    p = server_factory(sync_replicas=1, sync_replicas_timeout=5.0)
    pc = p.client()
    fake = FakeReplica(p.port, pc)
    try:
        writer, pinger, informer = _connected(p, 3)
        _hold_loop(p, 0.4)
        writer.sendall(_cmd(b"SET", b"k", b"unacked"))
        time.sleep(0.1)  # served first in the turn: its write is buffered
        pinger.sendall(_cmd(b"PING"))
        informer.sendall(_cmd(b"INFO", b"replication"))
        for s in (pinger, informer):
            s.settimeout(3.0)
        t0 = time.monotonic()
        assert _line(pinger) == b"+PONG\r\n"
        assert _line(informer).startswith(b"$")
        assert time.monotonic() - t0 < 2.5, "PING/INFO waited for another client's ACK"
        writer.settimeout(0.2)
        with pytest.raises(TimeoutError):
            writer.recv(1)  # the SET itself still waits for its acknowledgement
        fake.ack()
        writer.settimeout(5.0)
        assert _line(writer) == b"+OK\r\n"
    finally:
        fake.close()
