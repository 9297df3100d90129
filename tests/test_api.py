"""Tests of ShaleDB's public API (see docs / the API spec).

Each test checks one documented promise of the API; the tests only use the public surface
(``shaledb.open`` and what it returns), never engine internals.
"""

from __future__ import annotations

import math

import pytest

import shaledb
from conftest import FakeClock
from shaledb import (
    MAX_KEY_SIZE,
    MAX_VALUE_SIZE,
    ClosedError,
    InvalidArgument,
    ShaleError,
    TransactionConflict,
    WriteBatch,
)


@pytest.fixture
def db(db_path):
    d = shaledb.open(db_path)
    yield d
    d.close()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def cdb(db_path, clock):
    """A database whose TTLs are judged by a FakeClock."""
    d = shaledb.open(db_path, clock=clock)
    yield d
    d.close()


def fill(db, items):
    for k, v in items:
        db.put(k, v)


# ---------------------------------------------------------------------------------------------
# basic put / get / delete and argument types
# ---------------------------------------------------------------------------------------------

def test_put_get_delete_roundtrip(db):
    """A put value is read back; delete removes it; get returns default for missing keys."""
    assert db.get(b"k") is None
    assert db.get(b"k", b"dflt") == b"dflt"
    db.put(b"k", b"v1")
    assert db.get(b"k") == b"v1"
    db.put(b"k", b"v2")
    assert db.get(b"k") == b"v2"
    db.delete(b"k")
    assert db.get(b"k") is None
    assert db.get(b"k", b"dflt") == b"dflt"
    db.delete(b"never-existed")  # no error for a missing key


def test_get_returns_bytes_type(db):
    """Values come back as ``bytes`` whatever type they were written as."""
    db.put("s", "välue")
    db.put(b"b", bytearray(b"ba"))
    db.put(b"m", memoryview(b"mv"))
    assert type(db.get("s")) is bytes and db.get("s") == "välue".encode()
    assert type(db.get(b"b")) is bytes and db.get(b"b") == b"ba"
    assert type(db.get(b"m")) is bytes and db.get(b"m") == b"mv"


def test_str_bytes_bytearray_keys_are_equivalent(db):
    """A str key is its UTF-8 bytes; bytearray/memoryview keys equal their bytes."""
    db.put("clé", b"1")
    assert db.get("clé".encode()) == b"1"
    assert db.get(bytearray("clé".encode())) == b"1"
    assert db.get(memoryview("clé".encode())) == b"1"
    db.put(bytearray(b"ba"), b"2")
    assert db.get("ba") == b"2"
    db.delete(memoryview(b"ba"))
    assert db.get(b"ba") is None
    assert [k for k, _ in db.range()] == ["clé".encode()]


def test_bytearray_value_is_copied(db):
    """Mutating a bytearray after put must not change the stored value."""
    buf = bytearray(b"original")
    db.put(b"k", buf)
    buf[:] = b"mutated!"
    assert db.get(b"k") == b"original"
    kbuf = bytearray(b"key")
    db.put(kbuf, b"v")
    kbuf[:] = b"xyz"
    assert db.get(b"key") == b"v"
    assert db.get(b"xyz") is None


@pytest.mark.parametrize("bad", [1, None, 1.5, ["k"], object()])
def test_bad_key_types_raise_typeerror(db, bad):
    """Non bytes/str keys raise the built-in TypeError on every entry point; nothing is written."""
    with pytest.raises(TypeError):
        db.put(bad, b"v")
    with pytest.raises(TypeError):
        db.get(bad)
    with pytest.raises(TypeError):
        db.delete(bad)
    with pytest.raises(TypeError), db.batch() as b:
        b.put(bad, b"v")
    assert list(db.range()) == []


@pytest.mark.parametrize("bad", [1, None, 2.5, [b"v"], object()])
def test_bad_value_types_raise_typeerror(db, bad):
    """Non bytes/str values raise TypeError and nothing is written."""
    with pytest.raises(TypeError):
        db.put(b"k", bad)
    wb = WriteBatch()
    with pytest.raises(TypeError):
        wb.put(b"k", bad)
    assert db.get(b"k") is None
    assert list(db.range()) == []


def test_empty_key_and_empty_value_allowed(db):
    """b"" is a valid key (sorting first) and b"" a valid value distinct from missing."""
    db.put(b"", b"empty-key")
    db.put(b"a", b"")
    assert db.get(b"") == b"empty-key"
    assert db.get("") == b"empty-key"
    assert db.get(b"a") == b""
    assert b"a" in db
    assert b"" in db
    assert list(db.range()) == [(b"", b"empty-key"), (b"a", b"")]
    db.flush()
    assert db.get(b"") == b"empty-key"
    assert db.get(b"a") == b""
    db.delete(b"")
    assert db.get(b"") is None
    assert list(db.range()) == [(b"a", b"")]


def test_key_size_limit(db):
    """A key of MAX_KEY_SIZE bytes works; one byte more raises InvalidArgument (a ValueError)
    and writes nothing."""
    assert MAX_KEY_SIZE == 65536
    big = b"k" * MAX_KEY_SIZE
    db.put(big, b"v")
    assert db.get(big) == b"v"
    seq = db.stats()["last_sequence"]
    too_big = b"k" * (MAX_KEY_SIZE + 1)
    with pytest.raises(InvalidArgument):
        db.put(too_big, b"v")
    with pytest.raises(ValueError):
        db.put(too_big, b"v")
    with pytest.raises(InvalidArgument):
        db.delete(too_big)
    assert db.stats()["last_sequence"] == seq
    assert [k for k, _ in db.range()] == [big]
    db.flush()
    assert db.get(big) == b"v"


def test_value_size_limit(db):
    """A value of MAX_VALUE_SIZE + 1 bytes raises InvalidArgument and nothing is written."""
    assert MAX_VALUE_SIZE == 64 * 1024 * 1024
    seq = db.stats()["last_sequence"]
    with pytest.raises(InvalidArgument):
        db.put(b"k", b"\0" * (MAX_VALUE_SIZE + 1))
    assert db.get(b"k") is None
    assert db.stats()["last_sequence"] == seq
    # a 1 MiB value round-trips, also through a flush
    v = bytes(range(256)) * 4096
    db.put(b"k", v)
    db.flush()
    assert db.get(b"k") == v


def test_max_size_value_roundtrip(db_path):
    """A value of exactly MAX_VALUE_SIZE is accepted and reads back after flush and reopen."""
    v = bytes(range(256)) * (MAX_VALUE_SIZE // 256)
    assert len(v) == MAX_VALUE_SIZE
    with shaledb.open(db_path, memtable_size=64 * 1024) as d:
        d.put(b"big", v)
        d.put(b"small", b"s")
        d.flush()
        assert d.get(b"big") == v
    with shaledb.open(db_path) as d:
        assert d.get(b"big") == v
        assert d.get(b"small") == b"s"


def test_oversized_op_in_batch_writes_nothing(db):
    """An InvalidArgument raised by an op inside ``with db.batch()`` discards the whole batch."""
    db.put(b"a", b"old")
    with pytest.raises(InvalidArgument), db.batch() as b:
        b.put(b"a", b"new")
        b.put(b"b", b"new")
        b.put(b"k" * (MAX_KEY_SIZE + 1), b"v")
    assert db.get(b"a") == b"old"
    assert db.get(b"b") is None


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------

def test_batch_commits_all_ops(db):
    """All ops of a batch are applied on normal exit, later ops on the same key win."""
    db.put(b"gone", b"x")
    with db.batch() as b:
        b.put(b"a", b"1")
        b.put(b"b", b"2")
        b.delete(b"gone")
        b.put(b"a", b"3")
        b.delete(b"b")
        b.put(b"c", b"4")
    assert list(db.range()) == [(b"a", b"3"), (b"c", b"4")]


def test_batch_exception_writes_nothing(db):
    """An exception raised in ``with db.batch()`` propagates and nothing of the batch is written."""
    db.put(b"a", b"old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.batch() as b:
        b.put(b"a", b"new")
        b.delete(b"a")
        b.put(b"z", b"new")
        raise Boom
    assert db.get(b"a") == b"old"
    assert db.get(b"z") is None
    db.close()
    with shaledb.open(db.path) as db2:  # nothing of it was logged either
        assert list(db2.range()) == [(b"a", b"old")]


def test_explicit_writebatch(db):
    """``db.write(WriteBatch)`` applies every op; an empty batch is a no-op."""
    wb = WriteBatch()
    wb.put(b"x", b"1")
    wb.put("y", "2")
    wb.delete(b"x")
    assert len(wb) == 3
    db.write(wb)
    assert list(db.range()) == [(b"y", b"2")]
    db.write(WriteBatch())
    assert list(db.range()) == [(b"y", b"2")]


def test_batch_atomic_for_snapshot(db):
    """A snapshot taken before a batch sees none of it; after it, all of it."""
    with db.snapshot() as before:
        with db.batch() as b:
            for i in range(100):
                b.put(b"k%03d" % i, b"v")
        with db.snapshot() as after:
            assert list(before.range()) == []
            assert len(list(after.range())) == 100


def test_batch_larger_than_memtable(db_path, small_opts):
    """A single batch much larger than the memtable is applied atomically and survives reopen."""
    with shaledb.open(db_path, **small_opts) as d:
        d.put(b"k00000", b"before")
        with d.snapshot() as snap:
            with d.batch() as b:
                for i in range(3000):
                    b.put(b"k%05d" % i, b"v" * 300)
            assert snap.get(b"k00000") == b"before"
            assert snap.get(b"k02999") is None
        assert sum(1 for _ in d.range()) == 3000
        assert d.get(b"k00000") == b"v" * 300
    with shaledb.open(db_path, **small_opts) as d:
        assert list(d.range()) == [(b"k%05d" % i, b"v" * 300) for i in range(3000)]


def test_writebatch_ttl_uses_db_clock(db_path, clock):
    """An explicit WriteBatch's TTL is judged by the database's ``clock`` option, like put()'s.

    (The spec: expiry is computed from the clock option; ``db.write(wb)`` is the same as a
    ``with db.batch()`` block.)"""
    with shaledb.open(db_path, clock=clock) as d:
        wb = WriteBatch()
        wb.put(b"k", b"v", ttl=10)
        d.write(wb)
        t = d.ttl(b"k")
        assert t is not None and 9.0 <= t <= 10.0, t
        clock.advance(11)
        assert d.get(b"k") is None


# ---------------------------------------------------------------------------------------------
# range / prefix
# ---------------------------------------------------------------------------------------------

KEYS = [b"", b"a", b"aa", b"ab", b"b", b"ba", b"b\xff", b"b\xff\xff", b"c", b"\xff", b"\xff\xff"]


@pytest.fixture
def rdb(db):
    fill(db, [(k, b"v" + k) for k in KEYS])
    return db


def expected_range(keys, start=None, stop=None, reverse=False, limit=None):
    ks = sorted(k for k in keys if (start is None or k >= start) and (stop is None or k < stop))
    if reverse:
        ks.reverse()
    if limit is not None:
        ks = ks[:limit]
    return [(k, b"v" + k) for k in ks]


@pytest.mark.parametrize("flush", [False, True])
@pytest.mark.parametrize(
    "start,stop",
    [(None, None), (b"a", None), (None, b"b"), (b"a", b"b"), (b"aa", b"b\xff"), (b"b", b"b"),
     (b"c", b"a"), (b"", b"\xff"), (b"a\x00", b"ab\x00"), (b"zz", None), (b"\xff", None)],
)
def test_range_bounds_both_directions(rdb, start, stop, flush):
    """range(start, stop) yields exactly the keys in [start, stop), ascending or descending."""
    if flush:
        rdb.flush()
    for reverse in (False, True):
        got = list(rdb.range(start, stop, reverse=reverse))
        assert got == expected_range(KEYS, start, stop, reverse), (start, stop, reverse)


@pytest.mark.parametrize("limit", [0, 1, 3, 100])
def test_range_limit(rdb, limit):
    """limit caps the number of pairs, counted from the start of the iteration direction."""
    for reverse in (False, True):
        assert list(rdb.range(reverse=reverse, limit=limit)) == expected_range(
            KEYS, reverse=reverse, limit=limit)
        assert list(rdb.range(b"a", b"c", reverse=reverse, limit=limit)) == expected_range(
            KEYS, b"a", b"c", reverse=reverse, limit=limit)


def test_range_str_bounds(rdb):
    """str bounds are UTF-8 encoded like keys."""
    assert list(rdb.range("a", "b")) == expected_range(KEYS, b"a", b"b")


def test_range_skips_deleted_and_overwritten(db):
    """Deleted keys are skipped and only the newest version of a key is yielded, across
    memtable and tables."""
    fill(db, [(b"k%02d" % i, b"old") for i in range(20)])
    db.flush()
    for i in range(0, 20, 2):
        db.delete(b"k%02d" % i)
    for i in range(1, 20, 4):
        db.put(b"k%02d" % i, b"new")
    exp = [(b"k%02d" % i, b"new" if i % 4 == 1 else b"old") for i in range(1, 20, 2)]
    assert list(db.range()) == exp
    assert list(db.range(reverse=True)) == exp[::-1]
    db.flush()
    db.compact_range()
    assert list(db.range()) == exp
    assert list(db.range(reverse=True)) == exp[::-1]


@pytest.mark.parametrize(
    "prefix", [b"", b"a", b"b", b"b\xff", b"\xff", b"\xff\xff", b"c", b"d", b"ab"])
def test_prefix_both_directions(rdb, prefix):
    """prefix(p) yields exactly the keys starting with p, in order or reversed, with limit;
    prefixes ending in 0xff are handled."""
    exp = [(k, b"v" + k) for k in sorted(KEYS) if k.startswith(prefix)]
    assert list(rdb.prefix(prefix)) == exp
    assert list(rdb.prefix(prefix, reverse=True)) == exp[::-1]
    assert list(rdb.prefix(prefix, limit=2)) == exp[:2]
    assert list(rdb.prefix(prefix, reverse=True, limit=2)) == exp[::-1][:2]


def test_range_iterator_is_consistent_under_writes(db):
    """A range iterator sees the state at the moment range() was called, even if keys are
    written, deleted and flushed while it is consumed."""
    fill(db, [(b"k%03d" % i, b"old") for i in range(300)])
    it = db.range()
    first = next(it)
    for i in range(300):
        if i % 2:
            db.delete(b"k%03d" % i)
        else:
            db.put(b"k%03d" % i, b"new")
    db.put(b"k0005x", b"inserted")
    db.flush()
    db.compact_range()
    rest = list(it)
    assert [first] + rest == [(b"k%03d" % i, b"old") for i in range(300)]


# ---------------------------------------------------------------------------------------------
# TTL
# ---------------------------------------------------------------------------------------------

def test_ttl_expiry_hides_key_everywhere(cdb, clock):
    """A key put with ttl is visible until clock reaches its expiry, then hidden from get,
    ``in``, db[k], range, prefix and iteration."""
    cdb.put(b"t", b"v", ttl=10)
    cdb.put(b"p", b"keep")
    clock.advance(9.5)
    assert cdb.get(b"t") == b"v"
    assert b"t" in cdb
    assert list(cdb.range()) == [(b"p", b"keep"), (b"t", b"v")]
    clock.advance(0.5)  # exactly at expiry: expired (clock*1000 >= expire_at_ms)
    assert cdb.get(b"t") is None
    assert cdb.get(b"t", b"d") == b"d"
    assert b"t" not in cdb
    with pytest.raises(KeyError):
        cdb[b"t"]
    assert list(cdb.range()) == [(b"p", b"keep")]
    assert list(cdb.range(reverse=True)) == [(b"p", b"keep")]
    assert list(cdb.prefix(b"t")) == []
    assert list(cdb) == [b"p"]
    assert cdb.ttl(b"t") is None


def test_range_include_expired_shows_expired_until_compaction(cdb, clock):
    """``range(include_expired=True)`` also yields expired PUTs (for tools that delete them
    eagerly) from the memtable and from tables, never deleted keys, and nothing once a
    flush or compaction has dropped them; plain reads never see them."""
    cdb.put(b"t", b"table", ttl=5)
    cdb.flush()  # in a table, not yet expired
    cdb.put(b"a", b"1", ttl=5)
    cdb.put(b"b", b"2")
    cdb.put(b"c", b"3", ttl=5)
    cdb.delete(b"c")
    clock.advance(6)
    assert list(cdb.range()) == [(b"b", b"2")]
    assert list(cdb.range(include_expired=True)) == [(b"a", b"1"), (b"b", b"2"),
                                                     (b"t", b"table")]
    assert list(cdb.range(include_expired=True, reverse=True)) == [
        (b"t", b"table"), (b"b", b"2"), (b"a", b"1")]
    cdb.flush()  # a flush drops what has expired by then
    assert list(cdb.range(include_expired=True)) == [(b"b", b"2"), (b"t", b"table")]
    cdb.compact_range()  # and so does compaction
    assert list(cdb.range(include_expired=True)) == [(b"b", b"2")]


def test_ttl_expiry_after_flush_and_compaction(cdb, clock):
    """Expiry also applies to keys stored in tables, and an expired newer version never
    resurrects an older one after flush or compaction."""
    cdb.put(b"k", b"old")
    cdb.flush()
    cdb.compact_range()
    cdb.put(b"k", b"new", ttl=5)
    cdb.put(b"j", b"new", ttl=5)
    cdb.flush()
    assert cdb.get(b"k") == b"new"
    clock.advance(6)
    assert cdb.get(b"k") is None
    assert cdb.get(b"j") is None
    cdb.compact_range()
    assert cdb.get(b"k") is None
    assert list(cdb.range()) == []
    cdb.put(b"x", b"1")
    cdb.flush()
    cdb.compact_range()
    assert cdb.get(b"k") is None
    assert list(cdb.range()) == [(b"x", b"1")]


def test_ttl_values(cdb, clock):
    """db.ttl: remaining seconds for a live key with expiry, None without expiry/missing/expired."""
    cdb.put(b"t", b"v", ttl=10)
    cdb.put(b"n", b"v")
    assert cdb.ttl(b"t") == pytest.approx(10, abs=1e-3)
    assert cdb.ttl(b"n") is None
    assert cdb.ttl(b"missing") is None
    clock.advance(4)
    assert cdb.ttl(b"t") == pytest.approx(6, abs=1e-3)
    cdb.flush()
    assert cdb.ttl(b"t") == pytest.approx(6, abs=1e-3)
    clock.advance(6)
    assert cdb.ttl(b"t") is None
    cdb.put(b"f", b"v", ttl=0.25)
    assert isinstance(cdb.ttl(b"f"), float)
    assert cdb.ttl(b"f") == pytest.approx(0.25, abs=1e-3)


def test_put_without_ttl_clears_expiry(cdb, clock):
    """Overwriting a key with no ttl removes its expiry; overwriting with a new ttl resets it."""
    cdb.put(b"k", b"v1", ttl=5)
    cdb.put(b"k", b"v2")
    assert cdb.ttl(b"k") is None
    clock.advance(100)
    assert cdb.get(b"k") == b"v2"
    cdb.put(b"k", b"v3", ttl=5)
    cdb.put(b"k", b"v4", ttl=50)
    clock.advance(10)
    assert cdb.get(b"k") == b"v4"
    assert cdb.ttl(b"k") == pytest.approx(40, abs=1e-3)
    with cdb.batch() as b:
        b.put(b"k", b"v5")
    clock.advance(100)
    assert cdb.get(b"k") == b"v5"
    assert cdb.ttl(b"k") is None


def test_batch_put_with_ttl(cdb, clock):
    """TTLs given to a ``with db.batch()`` put follow the DB clock."""
    with cdb.batch() as b:
        b.put(b"a", b"1", ttl=3)
        b.put(b"b", b"2")
    assert cdb.ttl(b"a") == pytest.approx(3, abs=1e-3)
    clock.advance(3)
    assert list(cdb.range()) == [(b"b", b"2")]


@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf])
def test_invalid_ttl_rejected(cdb, bad):
    """ttl <= 0, NaN or inf raise InvalidArgument (put and batch put), nothing written."""
    with pytest.raises(InvalidArgument):
        cdb.put(b"k", b"v", ttl=bad)
    with pytest.raises(InvalidArgument), cdb.batch() as b:
        b.put(b"other", b"v")
        b.put(b"k", b"v", ttl=bad)
    assert cdb.get(b"k") is None
    assert cdb.get(b"other") is None


def test_ttl_survives_reopen(db_path, clock):
    """Expiry is persistent: after reopen a TTL'd key still expires at the same time."""
    with shaledb.open(db_path, clock=clock) as d:
        d.put(b"k", b"v", ttl=10)
        d.put(b"f", b"v", ttl=10)
        d.flush()
        d.put(b"m", b"v", ttl=10)  # memtable/WAL only
    clock.advance(5)
    with shaledb.open(db_path, clock=clock) as d:
        for k in (b"k", b"f", b"m"):
            assert d.ttl(k) == pytest.approx(5, abs=1e-3)
        clock.advance(5)
        assert list(d.range()) == []


# ---------------------------------------------------------------------------------------------
# snapshots
# ---------------------------------------------------------------------------------------------

def test_snapshot_isolation(db):
    """Writes after a snapshot (puts, overwrites, deletes) are invisible to it, also after
    flush and compaction; the live DB sees them."""
    fill(db, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    with db.snapshot() as snap:
        db.put(b"a", b"10")
        db.delete(b"b")
        db.put(b"d", b"4")
        for _ in range(2):
            assert snap.get(b"a") == b"1"
            assert snap.get(b"b") == b"2"
            assert snap.get(b"d") is None
            assert b"d" not in snap
            assert list(snap.range()) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
            assert list(snap.range(reverse=True, limit=2)) == [(b"c", b"3"), (b"b", b"2")]
            assert list(snap.prefix(b"b")) == [(b"b", b"2")]
            db.flush()
            db.compact_range()
        assert list(db.range()) == [(b"a", b"10"), (b"c", b"3"), (b"d", b"4")]
        assert db.stats()["live_snapshots"] >= 1
    with pytest.raises(ClosedError):
        snap.get(b"a")
    with pytest.raises(ClosedError):
        list(snap.range())
    assert db.stats()["live_snapshots"] == 0


def test_snapshot_sees_many_overwrites_after_compaction(db_path, small_opts):
    """With tiny tables and many overwrites compacted away, a snapshot still reads the
    versions of its moment."""
    with shaledb.open(db_path, **small_opts) as db:
        fill(db, [(b"k%04d" % i, b"gen0-%04d" % i) for i in range(1000)])
        snap = db.snapshot()
        for gen in range(1, 4):
            fill(db, [(b"k%04d" % i, b"gen%d-%04d" % (gen, i) + b"x" * 100) for i in range(1000)])
        for i in range(0, 1000, 3):
            db.delete(b"k%04d" % i)
        db.flush()
        db.compact_range()
        for i in range(0, 1000, 7):
            assert snap.get(b"k%04d" % i) == b"gen0-%04d" % i
        assert list(snap.range()) == [(b"k%04d" % i, b"gen0-%04d" % i) for i in range(1000)]
        snap.close()
        assert db.get(b"k0001") == b"gen3-0001" + b"x" * 100
        assert db.get(b"k0003") is None


def test_snapshot_at_an_older_sequence_reads_its_versions_after_compaction(
        db_path, small_opts):
    """DB.snapshot_at moves a view forward (the server's sync-replicas reads): a snapshot
    at a sequence between an open snapshot and now reads exactly that moment's versions,
    even after the versions in between were overwritten, flushed and compacted; without
    an open snapshot at or below it, it is refused (those versions may be gone)."""
    with shaledb.open(db_path, **small_opts) as db:
        fill(db, [(b"k%04d" % i, b"gen0-%04d" % i) for i in range(500)])
        pin = db.snapshot()
        with pytest.raises(InvalidArgument, match="needs an open snapshot"):
            db.snapshot_at(pin.sequence - 1)
        fill(db, [(b"k%04d" % i, b"gen1-%04d" % i) for i in range(500)])
        middle = db.last_sequence
        for gen in range(2, 4):
            fill(db, [(b"k%04d" % i, b"gen%d-%04d" % (gen, i) + b"x" * 100)
                      for i in range(500)])
        db.flush()
        db.compact_range()
        moved = db.snapshot_at(middle)
        pin.close()  # the older view goes once the newer one is open
        db.compact_range()
        assert list(moved.range()) == [(b"k%04d" % i, b"gen1-%04d" % i) for i in range(500)]
        with pytest.raises(InvalidArgument):
            db.snapshot_at(db.last_sequence + 1)
        moved.close()


def test_snapshot_ttl_judged_at_read_time(cdb, clock):
    """A snapshot hides a key once it expires, even if it was live when the snapshot was taken."""
    cdb.put(b"t", b"v", ttl=10)
    with cdb.snapshot() as snap:
        assert snap.get(b"t") == b"v"
        assert snap.ttl(b"t") == pytest.approx(10, abs=1e-3)
        clock.advance(10)
        assert snap.get(b"t") is None
        assert list(snap.range()) == []
        assert snap.ttl(b"t") is None


# ---------------------------------------------------------------------------------------------
# transactions
# ---------------------------------------------------------------------------------------------

def test_transaction_sees_own_writes(db):
    """Inside a transaction, get/range/prefix see its buffered puts and deletes; outside it
    they are invisible until commit."""
    fill(db, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    with db.transaction() as txn:
        txn.put(b"a", b"10")
        txn.delete(b"b")
        txn.put(b"bb", b"new")
        assert txn.get(b"a") == b"10"
        assert txn.get(b"b") is None
        assert txn.get(b"bb") == b"new"
        assert list(txn.range()) == [(b"a", b"10"), (b"bb", b"new"), (b"c", b"3")]
        assert list(txn.range(reverse=True)) == [(b"c", b"3"), (b"bb", b"new"), (b"a", b"10")]
        assert list(txn.prefix(b"b")) == [(b"bb", b"new")]
        assert db.get(b"a") == b"1"
        assert db.get(b"bb") is None
    assert list(db.range()) == [(b"a", b"10"), (b"bb", b"new"), (b"c", b"3")]


def test_transaction_reads_its_begin_snapshot(db):
    """A transaction reads the state of its start, not later writes by others."""
    db.put(b"a", b"1")
    txn = db.transaction()
    db.put(b"b", b"2")
    assert txn.get(b"b") is None
    assert list(txn.range()) == [(b"a", b"1")]
    txn.rollback()


def test_transaction_conflict_on_read_key(db):
    """A key read by the transaction and then changed by someone else -> TransactionConflict on
    commit and none of the transaction's writes is applied."""
    db.put(b"x", b"1")
    with pytest.raises(TransactionConflict), db.transaction() as txn:
        assert txn.get(b"x") == b"1"
        txn.put(b"y", b"from-txn")
        db.put(b"x", b"2")
    assert db.get(b"x") == b"2"
    assert db.get(b"y") is None


def test_read_only_transaction_conflict(db):
    """Spec: commit fails if ANY key the transaction read was changed after it began -- also
    when the transaction wrote nothing (callers use commit() to validate what they read)."""
    db.put(b"x", b"1")
    txn = db.transaction()
    assert txn.get(b"x") == b"1"
    db.put(b"x", b"2")
    with pytest.raises(TransactionConflict):
        txn.commit()


def test_transaction_conflict_on_missing_read_key(db):
    """Reading a missing key that someone else then creates is a conflict too."""
    with pytest.raises(TransactionConflict), db.transaction() as txn:
        assert txn.get(b"x") is None
        txn.put(b"y", b"t")
        db.put(b"x", b"other")
    assert db.get(b"y") is None


def test_transaction_conflict_on_range_read_key(db):
    """A key returned by the transaction's range() and changed by someone else -> conflict."""
    fill(db, [(b"a", b"1"), (b"b", b"2")])
    with pytest.raises(TransactionConflict), db.transaction() as txn:
        assert list(txn.range()) == [(b"a", b"1"), (b"b", b"2")]
        txn.put(b"z", b"t")
        db.delete(b"b")
    assert db.get(b"z") is None


def test_transaction_conflict_on_written_key(db):
    """A blind write to a key someone else wrote after the transaction began -> conflict."""
    db.put(b"x", b"1")
    txn = db.transaction()
    txn.put(b"x", b"txn")
    txn.put(b"y", b"txn")
    db.put(b"x", b"other")
    with pytest.raises(TransactionConflict):
        txn.commit()
    assert db.get(b"x") == b"other"
    assert db.get(b"y") is None


def test_transaction_conflict_detected_across_flush(db):
    """Conflict detection still works when the competing write was already flushed."""
    db.put(b"x", b"1")
    txn = db.transaction()
    assert txn.get(b"x") == b"1"
    db.put(b"x", b"2")
    db.flush()
    db.compact_range()
    txn.put(b"x", b"3")
    with pytest.raises(TransactionConflict):
        txn.commit()
    assert db.get(b"x") == b"2"


def test_transaction_conflict_when_key_rewritten_then_deleted(db):
    """Someone else puts then deletes a key the transaction read (value back to 'missing'),
    and compaction runs: still a conflict (a newer version existed)."""
    txn = db.transaction()
    assert txn.get(b"x") is None
    db.put(b"x", b"1")
    db.delete(b"x")
    db.flush()
    db.compact_range()
    txn.put(b"y", b"t")
    with pytest.raises(TransactionConflict):
        txn.commit()
    assert db.get(b"y") is None


def test_no_conflict_on_unrelated_key(db):
    """A write by someone else to a key the transaction never touched does not conflict."""
    db.put(b"x", b"1")
    with db.transaction() as txn:
        assert txn.get(b"x") == b"1"
        txn.put(b"y", b"txn")
        db.put(b"unrelated", b"u")
        db.put(b"x0", b"u")
    assert db.get(b"y") == b"txn"
    assert db.get(b"unrelated") == b"u"


def test_transaction_exception_discards(db):
    """An exception in ``with db.transaction()`` propagates and nothing is committed."""
    db.put(b"x", b"1")
    with pytest.raises(KeyError), db.transaction() as txn:
        txn.put(b"x", b"2")
        txn.put(b"y", b"2")
        raise KeyError("boom")
    assert db.get(b"x") == b"1"
    assert db.get(b"y") is None


def test_transaction_explicit_rollback_and_commit(db):
    """rollback() discards buffered writes; commit() applies them."""
    t1 = db.transaction()
    t1.put(b"a", b"1")
    t1.rollback()
    assert db.get(b"a") is None
    t2 = db.transaction()
    t2.put(b"b", b"2")
    t2.commit()
    assert db.get(b"b") == b"2"


def test_transactions_release_their_snapshot(db):
    """Committed, rolled-back, conflicting and failed transactions all release their snapshot
    (otherwise compaction could never drop old versions)."""
    db.put(b"x", b"0")
    with db.transaction() as t:
        t.put(b"a", b"1")
    t = db.transaction()
    t.rollback()
    with pytest.raises(TransactionConflict), db.transaction() as t:
        t.get(b"x")
        t.put(b"y", b"1")
        db.put(b"x", b"1")
    with pytest.raises(ZeroDivisionError), db.transaction() as t:
        t.put(b"z", b"1")
        raise ZeroDivisionError
    db.run_transaction(lambda t: t.put(b"r", b"1"))
    assert db.stats()["live_snapshots"] == 0


def test_run_transaction_retries_on_conflict(db):
    """run_transaction re-runs fn after a conflict (with a fresh view) and returns its result."""
    db.put(b"counter", b"0")
    calls = []

    def incr(txn):
        calls.append(1)
        n = int(txn.get(b"counter"))
        if len(calls) <= 2:  # someone else increments meanwhile -> conflict
            db.put(b"counter", str(int(db.get(b"counter")) + 1).encode())
        txn.put(b"counter", str(n + 1).encode())
        return n + 1

    assert db.run_transaction(incr) == 3
    assert len(calls) == 3
    assert db.get(b"counter") == b"3"


def test_run_transaction_gives_up(db):
    """After ``retries`` extra attempts run_transaction re-raises TransactionConflict."""
    db.put(b"x", b"0")
    calls = []

    def always_conflict(txn):
        calls.append(1)
        txn.get(b"x")
        db.put(b"x", b"%d" % len(calls))
        txn.put(b"y", b"t")

    with pytest.raises(TransactionConflict):
        db.run_transaction(always_conflict, retries=2)
    assert len(calls) == 3
    assert db.get(b"y") is None


# ---------------------------------------------------------------------------------------------
# mapping sugar
# ---------------------------------------------------------------------------------------------

def test_mapping_interface(db):
    """db[k], db[k] = v, del db[k], ``in`` and iter(db) behave like a sorted dict of bytes."""
    db[b"b"] = b"2"
    db["a"] = "1"
    db[b"c"] = b"3"
    assert db[b"a"] == b"1"
    assert db["b"] == b"2"
    with pytest.raises(KeyError):
        db[b"zz"]
    assert b"a" in db
    assert "a" in db
    assert b"zz" not in db
    assert list(db) == [b"a", b"b", b"c"]
    del db[b"b"]
    assert b"b" not in db
    with pytest.raises(KeyError):
        del db[b"b"]
    with pytest.raises(KeyError):
        del db[b"never"]
    assert list(db) == [b"a", b"c"]


# ---------------------------------------------------------------------------------------------
# lifecycle, options, persistence, stats
# ---------------------------------------------------------------------------------------------

def test_closed_db_raises_closederror(db_path):
    """Every operation on a closed DB raises ClosedError; close() is idempotent."""
    d = shaledb.open(db_path)
    d.put(b"k", b"v")
    d.close()
    d.close()
    assert d.closed
    ops = [
        lambda: d.put(b"k", b"v"),
        lambda: d.get(b"k"),
        lambda: d.delete(b"k"),
        lambda: list(d.range()),
        lambda: list(d.prefix(b"k")),
        lambda: d.ttl(b"k"),
        lambda: d.snapshot(),
        lambda: d.batch(),
        lambda: d.flush(),
        lambda: d.compact_range(),
        lambda: d[b"k"],
        lambda: b"k" in d,
        lambda: list(d),
        lambda: d.transaction().get(b"k"),
    ]
    for i, op in enumerate(ops):
        with pytest.raises(ClosedError):
            op()
            pytest.fail(f"op #{i} did not raise")
    assert issubclass(ClosedError, ShaleError)


def test_iterator_after_close_raises(db_path):
    """Continuing a range iterator after its DB was closed raises ClosedError (no garbage,
    no crash on closed files)."""
    d = shaledb.open(db_path)
    fill(d, [(b"k%03d" % i, b"v") for i in range(100)])
    d.flush()
    it = d.range()
    assert next(it) == (b"k000", b"v")
    d.close()
    with pytest.raises(ClosedError):
        list(it)


def test_finished_transaction_raises_closederror(db):
    """A committed or rolled-back transaction refuses further use with ClosedError."""
    t = db.transaction()
    t.put(b"a", b"1")
    t.commit()
    with pytest.raises(ClosedError):
        t.get(b"a")
    with pytest.raises(ClosedError):
        t.put(b"b", b"2")
    t2 = db.transaction()
    t2.rollback()
    with pytest.raises(ClosedError):
        t2.put(b"b", b"2")
    assert list(db.range()) == [(b"a", b"1")]


def test_write_batch_after_close_raises(db_path):
    """A non-empty WriteBatch written to a closed DB raises ClosedError."""
    d = shaledb.open(db_path)
    d.close()
    wb = WriteBatch()
    wb.put(b"k", b"v")
    with pytest.raises(ClosedError):
        d.write(wb)


def test_context_manager_closes(db_path):
    """``with shaledb.open(...) as db`` closes the DB on exit."""
    with shaledb.open(db_path) as d:
        d.put(b"k", b"v")
    assert d.closed
    with pytest.raises(ClosedError):
        d.get(b"k")


def test_unknown_option_rejected(db_path):
    """An unknown option name raises InvalidArgument naming it, before touching the disk."""
    with pytest.raises(InvalidArgument, match="no_such_option"):
        shaledb.open(db_path, no_such_option=1)
    assert not db_path.exists()


@pytest.mark.parametrize("opts", [{"memtable_size": 1024}, {"compression": "gzip"},
                                  {"wal_recovery": "lenient"}, {"fsync_interval": -1}])
def test_bad_option_values_rejected(db_path, opts):
    """Out-of-range option values raise InvalidArgument."""
    with pytest.raises(InvalidArgument):
        shaledb.open(db_path, **opts)


def test_open_creates_directory(tmp_path):
    """open() creates a missing directory (including parents' last component)."""
    p = tmp_path / "new" / "db"
    p.parent.mkdir()
    with shaledb.open(p) as d:
        d.put(b"k", b"v")
    assert p.is_dir()
    with shaledb.open(str(p)) as d:
        assert d.get(b"k") == b"v"


def test_reopen_keeps_data(db_path):
    """Data written (including deletes and overwrites) is there after close and reopen."""
    with shaledb.open(db_path) as d:
        fill(d, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
        d.delete(b"b")
        d.put(b"a", b"10")
    with shaledb.open(db_path) as d:
        assert list(d.range()) == [(b"a", b"10"), (b"c", b"3")]
        d.put(b"d", b"4")
    with shaledb.open(db_path) as d:
        assert list(d.range()) == [(b"a", b"10"), (b"c", b"3"), (b"d", b"4")]


def test_data_survives_flush_and_compact_range(db_path):
    """flush() and compact_range() (full and partial) change no visible data; reopen neither."""
    with shaledb.open(db_path) as d:
        fill(d, [(b"k%03d" % i, b"v%03d" % i) for i in range(200)])
        d.flush()
        for i in range(0, 200, 5):
            d.delete(b"k%03d" % i)
        d.put(b"k001", b"new")
        d.flush()
        exp = [(b"k%03d" % i, b"new" if i == 1 else b"v%03d" % i) for i in range(200) if i % 5]
        assert list(d.range()) == exp
        d.compact_range(b"k050", b"k100")
        assert list(d.range()) == exp
        d.compact_range()
        assert list(d.range()) == exp
        assert d.get(b"k000") is None
        assert d.get(b"k001") == b"new"
        st = d.stats()
        assert st["flushes"] >= 2
    with shaledb.open(db_path) as d:
        assert list(d.range()) == exp
        assert list(d.range(reverse=True)) == exp[::-1]


def test_stats_keys(db):
    """stats() holds every documented key with sensible types/values."""
    db.put(b"k", b"v")
    st = db.stats()
    for key in ["last_sequence", "memtable_bytes", "memtable_entries", "immutable_memtables",
                "levels", "flushes", "compactions", "compaction_bytes_read",
                "compaction_bytes_written", "wal_bytes", "wal_syncs", "block_cache",
                "write_stalls", "background_error", "live_snapshots", "read_only"]:
        assert key in st, key
    assert st["last_sequence"] >= 1
    assert st["memtable_entries"] >= 1
    assert st["background_error"] is None
    assert st["read_only"] is False
    assert isinstance(st["levels"], list)
    for lv in st["levels"]:
        assert {"level", "files", "bytes"} <= set(lv)
    assert {"hits", "misses", "bytes", "capacity"} <= set(st["block_cache"])
    db.flush()
    st2 = db.stats()
    assert st2["flushes"] >= 1
    assert sum(lv["files"] for lv in st2["levels"]) >= 1
    db.put(b"k2", b"v")
    assert db.stats()["last_sequence"] == st["last_sequence"] + 1


def test_many_memtables_of_data(db_path, small_opts):
    """20k keys (far more than one 64 KiB memtable) with overwrites and deletes read back
    correctly, in get and range, before and after reopen; flush/compaction really ran."""
    n = 20_000
    exp = {}
    with shaledb.open(db_path, **small_opts) as d:
        for i in range(n):
            k = b"key%06d" % ((i * 7919) % n)
            v = b"val%06d-" % i + b"p" * (i % 50)
            d.put(k, v)
            exp[k] = v
        for i in range(0, n, 10):
            k = b"key%06d" % i
            d.delete(k)
            del exp[k]
        with d.batch() as b:
            for i in range(1, n, 100):
                k = b"key%06d" % i
                b.put(k, b"batched")
                exp[k] = b"batched"
        st = d.stats()
        assert st["flushes"] >= 5, st
        assert st["compactions"] >= 1, st
        ordered = sorted(exp.items())
        assert list(d.range()) == ordered
        for i in range(0, n, 97):
            k = b"key%06d" % i
            assert d.get(k) == exp.get(k)
    with shaledb.open(db_path, **small_opts) as d:
        assert list(d.range()) == ordered
        assert list(d.range(reverse=True)) == ordered[::-1]
        for i in range(0, n, 89):
            k = b"key%06d" % i
            assert d.get(k) == exp.get(k)
        assert list(d.prefix(b"key0001", limit=5)) == [kv for kv in ordered
                                                        if kv[0].startswith(b"key0001")][:5]


def test_empty_batch_with_sync_makes_earlier_writes_durable(tmp_path) -> None:
    """db.write(WriteBatch(), sync=True) is a durability barrier (as in LevelDB): it fsyncs
    the WAL even though it writes nothing (review)."""
    with shaledb.open(str(tmp_path / "db"), fsync_interval=None) as db:
        db.put(b"k", b"v")
        before = db.stats()["wal_syncs"]
        db.write(shaledb.WriteBatch(), sync=True)
        assert db.stats()["wal_syncs"] == before + 1
