"""The replication seam of the engine: the backlog of committed write groups and the
apply entry point of a replica (engine/replication.py)."""

from __future__ import annotations

import threading

import pytest

import shaledb
from shaledb.engine.batch import decode_batch_timed
from shaledb.engine.replication import MIN_BACKLOG_BYTES, ReplicationBacklog
from shaledb.errors import InvalidArgument


def test_backlog_reads_from_a_group_boundary_and_bounds_its_bytes() -> None:
    b = ReplicationBacklog(MIN_BACKLOG_BYTES, 10)
    assert b.read(10, 1 << 20) == []
    assert b.read(9, 1 << 20) is None  # before the attach point: never kept
    assert b.read(11, 1 << 20) is None  # ahead of the primary: diverged
    b.append(11, 12, b"a" * 100)
    b.append(13, 13, b"b" * 100)
    assert b.read(10, 1 << 20) == [b"a" * 100, b"b" * 100]
    assert b.read(12, 1 << 20) == [b"b" * 100]
    assert b.read(11, 1 << 20) is None  # inside a group: not a replica's position
    assert b.read(10, 50) == [b"a" * 100]  # at least one group, then max_bytes
    # Past the limit the oldest groups go, and a reader behind them must resync fully.
    seq = 13
    for _ in range(400):
        b.append(seq + 1, seq + 1, b"x" * 100)
        seq += 1
    assert b.size <= MIN_BACKLOG_BYTES
    assert b.dropped > 0
    assert b.read(10, 1 << 20) is None
    assert b.read(b.first_seq, 1 << 30) is not None
    assert b.read(b.first_seq - 1, 1 << 30) is None
    # One group larger than the limit is still kept (the newest always is).
    b.append(seq + 1, seq + 1, b"y" * (2 * MIN_BACKLOG_BYTES))
    assert b.read(seq, 1) == [b"y" * (2 * MIN_BACKLOG_BYTES)]
    with pytest.raises(ValueError):
        ReplicationBacklog(MIN_BACKLOG_BYTES - 1, 0)


def test_engine_feeds_committed_groups_and_a_replica_applies_them(tmp_path) -> None:
    primary = shaledb.open(str(tmp_path / "p"))
    replica = shaledb.open(str(tmp_path / "r"))
    try:
        primary.put(b"before", b"1")
        start = primary.last_sequence
        seen: list[int] = []
        backlog = primary.attach_replication(1 << 20, seen.append)
        assert backlog is not None
        with primary.batch() as wb:
            wb.put(b"k1", b"v1")
            wb.put(b"k2", b"v2", expire_at_ms=4_000_000_000_000)
            wb.delete(b"before")
        primary.put(b"k3", b"v3")
        assert seen == [start + 3, start + 4]
        groups = backlog.read(start, 1 << 20)
        assert groups is not None and len(groups) == 2
        for payload in groups:
            first, ops, ms = decode_batch_timed(payload)
            replica.apply_replicated(ops, ms)
        assert replica.get(b"k1") == b"v1" and replica.get(b"k3") == b"v3"
        assert replica.ttl(b"k2") is not None
        assert replica.get(b"before") is None
        # Detached: nothing more is kept or announced.
        primary.attach_replication(None, None)
        primary.put(b"k4", b"v4")
        assert seen == [start + 3, start + 4]
        with pytest.raises(InvalidArgument):
            replica.apply_replicated([0, b"k", 0], None)
        with pytest.raises(InvalidArgument):
            replica.apply_replicated([7, b"k", 0, b"v"], None)
    finally:
        primary.close()
        replica.close()


def test_backlog_groups_stay_contiguous_under_concurrent_writers(tmp_path) -> None:
    db = shaledb.open(str(tmp_path / "p"))
    try:
        backlog = db.attach_replication(64 << 20, None)
        assert backlog is not None
        start = backlog.last_seq

        def writer(n: int) -> None:
            for i in range(300):
                db.put(b"w%d-%d" % (n, i), b"x" * 10)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        groups = backlog.read(start, 1 << 30)
        assert groups is not None
        expected = start + 1
        count = 0
        for payload in groups:
            first, ops, _ = decode_batch_timed(payload)
            assert first == expected
            expected += len(ops) // 4
            count += len(ops) // 4
        assert count == 1200 and expected - 1 == db.last_sequence
    finally:
        db.close()


def test_groups_older_than_the_backlog_are_read_back_from_the_wal(tmp_path) -> None:
    db = shaledb.open(str(tmp_path / "p"))
    try:
        start = db.last_sequence
        for i in range(50):
            with db.batch() as wb:
                wb.put(b"a%d" % i, b"x" * 100)
                wb.put(b"b%d" % i, b"y" * 100)
        last = db.last_sequence
        assert db.wal_groups_after(last, 1 << 20) == []
        assert db.wal_groups_after(last + 1, 1 << 20) is None  # ahead: diverged
        groups = db.wal_groups_after(start, 1 << 30)
        assert groups is not None and len(groups) == 50
        expected = start + 1
        for payload in groups:
            first, ops, _ = decode_batch_timed(payload)
            assert first == expected and len(ops) == 8
            expected += 2
        assert db.wal_groups_after(start + 1, 1 << 20) is None  # inside a group
        assert len(db.wal_groups_after(start + 2, 1) or []) == 1  # at least one, then bytes
        # Flushed: the segments are gone, and so are their groups.
        db.flush()
        db.put(b"after", b"flush")
        assert db.wal_groups_after(start, 1 << 30) is None
        tail = db.wal_groups_after(last, 1 << 30)
        assert tail is not None and len(tail) == 1
    finally:
        db.close()


def test_wal_groups_of_an_encrypted_database_survive_a_reopen(tmp_path) -> None:
    key = bytes(range(32))
    path = str(tmp_path / "enc")
    db = shaledb.open(path, encryption_key=key)
    db.put(b"k1", b"v1")
    start = db.last_sequence
    db.put(b"k2", b"v2")
    db.close()
    db = shaledb.open(path, encryption_key=key)  # recovery copies the records over
    try:
        groups = db.wal_groups_after(start, 1 << 20)
        assert groups is not None and len(groups) == 1
        _, ops, _ = decode_batch_timed(groups[0])
        assert ops[1] == b"k2"
    finally:
        db.close()
