"""RANDOMKEY COPY MOVE SWAPDB, the database map behind O(1) atomic FLUSHDB/SWAPDB (also
across SIGKILL), the background purge, the identity layout of older directories, and
active expiry. Real servers on 127.0.0.1, redis-py clients."""

from __future__ import annotations

import os
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import shaledb
from shaledb.errors import CorruptionError, IncompatibleFormatError, InvalidArgument
from shaledb.server import ServerConfig
from shaledb.server.keyspace.dbmap import (
    MAP_KEY,
    PHYSICAL_DATABASES,
    decode_map,
    encode_map,
    identity_map,
)
from shaledb.server.keyspace.expiry import KEYS_PER_TICK, tick_budget
from shaledb.server.keyspace.keyspace import Keyspace, encode_value
from shaledb.server.keyspace.purge import PURGE_CHUNK

from ._server_support import HOST, ServerThread, free_port, run_server_process, wait_until


def _client(port: int, db: int = 0) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, db=db, socket_timeout=10)


def _raw_keys(st: ServerThread, phys: int) -> list[bytes]:
    """Every engine key of physical database ``phys``, expired ones included."""
    ks = st.server.keyspace  # type: ignore[union-attr]
    return st.call(lambda: [k for k, _ in ks.raw_range(bytes((phys,)), bytes((phys + 1,)))])


def _wait(cond: Callable[[], Any], timeout: float = 20.0) -> None:
    wait_until(cond, timeout, "condition", 0.02)


def _purged(st: ServerThread) -> bool:
    ks = st.server.keyspace  # type: ignore[union-attr]
    return not st.call(lambda: len(ks.purger.queue))


# -- RANDOMKEY -----------------------------------------------------------------------------

def test_randomkey(server: ServerThread, r: redis.Redis) -> None:
    assert r.randomkey() is None
    r.set("only", "1")
    assert r.randomkey() == b"only"
    r.delete("only")
    keys = {b"key:%04d" % i for i in range(500)}
    r.mset({k: b"v" for k in keys})
    got = [r.randomkey() for _ in range(200)]
    assert set(got) <= keys
    assert len(set(got)) > 20  # spread over the keys, not one answer
    # Not uniform (documented): a key after a wide gap in key order comes up more often,
    # but every key can come up.
    r.set("zzz", "1")
    got = [r.randomkey() for _ in range(200)]
    assert set(got) <= keys | {b"zzz"} and len(set(got)) > 1
    r.delete(*(k for k in keys if k != b"key:0250"), "zzz")
    assert {r.randomkey() for _ in range(20)} == {b"key:0250"}
    # Expired keys are never returned.
    r.select(2)
    r.set("gone", "1", px=1)
    time.sleep(0.01)
    assert r.randomkey() is None
    # Inside EXEC it sees the transaction's own writes.
    r.execute_command("MULTI")
    r.execute_command("SET", "fresh", "1")
    r.execute_command("RANDOMKEY")
    assert r.execute_command("EXEC") == [b"OK", b"fresh"]
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("RANDOMKEY", "x")


def test_randomkey_with_long_keys_and_common_prefixes(r: redis.Redis) -> None:
    long_a, long_b = b"p" * 65_000 + b"a", b"p" * 65_000 + b"b" * 535
    r.set(long_a, "1")
    r.set(long_b, "2")
    assert {r.randomkey() for _ in range(30)} <= {long_a, long_b}


# -- COPY ----------------------------------------------------------------------------------

def test_copy(r: redis.Redis) -> None:
    r.set("src", "v", px=100_000)
    assert r.copy("src", "dst") is True
    assert r.get("dst") == b"v" and r.get("src") == b"v"
    assert 99_000 < r.pttl("dst") <= 100_000  # the TTL is kept
    assert r.pexpiretime("dst") == r.pexpiretime("src")
    r.set("dst", "other")
    assert r.copy("src", "dst") is False  # exists, no REPLACE
    assert r.get("dst") == b"other"
    assert r.copy("src", "dst", replace=True) is True
    assert r.get("dst") == b"v"
    assert r.copy("missing", "dst2") is False
    assert r.exists("dst2") == 0
    # DB: same name in another database is fine.
    assert r.copy("src", "src", destination_db=3) is True
    r.select(3)
    assert r.get("src") == b"v" and r.pttl("src") > 0
    r.select(0)
    assert r.copy("src", "src", destination_db=3) is False
    assert r.execute_command("COPY", "src", "src", "REPLACE", "DB", "3") == 1
    # Errors, with Redis' texts.
    with pytest.raises(redis.ResponseError, match="^source and destination objects are the same"):
        r.copy("src", "src")
    with pytest.raises(redis.ResponseError, match="^source and destination objects are the same"):
        r.copy("src", "src", destination_db=0)
    with pytest.raises(redis.ResponseError, match="^DB index is out of range"):
        r.copy("src", "x", destination_db=16)
    with pytest.raises(redis.ResponseError, match="^DB index is out of range"):
        r.execute_command("COPY", "src", "x", "DB", "-1")
    with pytest.raises(redis.ResponseError, match="^value is not an integer"):
        r.execute_command("COPY", "src", "x", "DB", "one")
    with pytest.raises(redis.ResponseError, match="^value is out of range"):
        r.execute_command("COPY", "src", "x", "DB", "99999999999")
    with pytest.raises(redis.ResponseError, match="^syntax error"):
        r.execute_command("COPY", "src", "x", "DB")
    with pytest.raises(redis.ResponseError, match="^syntax error"):
        r.execute_command("COPY", "src", "x", "NOW")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("COPY", "src")
    assert r.exists("x") == 0


# -- MOVE ----------------------------------------------------------------------------------

def test_move(r: redis.Redis) -> None:
    r.set("k", "v", px=100_000)
    assert r.move("k", 5) is True
    assert r.exists("k") == 0
    r.select(5)
    assert r.get("k") == b"v" and 99_000 < r.pttl("k") <= 100_000
    r.select(0)
    assert r.move("k", 5) is False  # missing here
    r.set("k", "here")
    assert r.move("k", 5) is False  # present there: nothing changes
    assert r.get("k") == b"here"
    with pytest.raises(redis.ResponseError, match="^source and destination objects are the same"):
        r.move("k", 0)
    with pytest.raises(redis.ResponseError, match="^DB index is out of range"):
        r.move("k", 16)
    with pytest.raises(redis.ResponseError, match="^DB index is out of range"):
        r.move("k", -1)
    with pytest.raises(redis.ResponseError, match="^value is not an integer"):
        r.move("k", "x")  # type: ignore[arg-type]
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("MOVE", "k")
    assert r.get("k") == b"here"


# -- SWAPDB --------------------------------------------------------------------------------

def test_swapdb(server: ServerThread) -> None:
    a = server.client(single_connection_client=True)
    b = server.client(db=1, single_connection_client=True)
    a.set("in0", "zero")
    b.set("in1", "one", px=100_000)
    assert a.swapdb(0, 1) is True
    # Clients keep their index and see the other database's keys.
    assert a.keys() == [b"in1"] and a.pttl("in1") > 0
    assert b.keys() == [b"in0"]
    assert a.swapdb(1, 0) is True
    assert a.keys() == [b"in0"] and b.keys() == [b"in1"]
    assert a.swapdb(3, 3) is True  # a no-op, as in Redis
    assert a.swapdb(0, 7) is True
    assert a.dbsize() == 0
    a.select(7)
    assert a.keys() == [b"in0"]
    with pytest.raises(redis.ResponseError, match="^DB index is out of range"):
        a.swapdb(0, 16)
    with pytest.raises(redis.ResponseError, match="^DB index is out of range"):
        a.swapdb(-1, 0)
    with pytest.raises(redis.ResponseError, match="^invalid first DB index"):
        a.execute_command("SWAPDB", "x", "0")
    with pytest.raises(redis.ResponseError, match="^invalid second DB index"):
        a.execute_command("SWAPDB", "0", "1.5")
    with pytest.raises(redis.ResponseError, match="^invalid first DB index"):
        a.execute_command("SWAPDB", "9999999999", "0")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        a.execute_command("SWAPDB", "0")
    assert a.keys() == [b"in0"]


def test_swapdb_and_flush_inside_exec_are_one_transaction(server: ServerThread,
                                                          r: redis.Redis) -> None:
    r.set("old", "1")
    with r.pipeline(transaction=True) as p:
        p.set("before", "1")       # into db 0, which then becomes db 1
        p.swapdb(0, 1)
        p.set("after", "2")        # into the new db 0
        p.flushdb()                # empties the new db 0 ("after" goes too)
        p.set("last", "3")
        assert p.execute() == [True, True, True, True, True]
    assert r.keys() == [b"last"]
    r.select(1)
    assert sorted(r.keys()) == [b"before", b"old"]


def test_map_changes_are_undone_with_a_failed_command(tmp_path: Path) -> None:
    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        txn = ks.begin()
        txn.set(0, b"k", b"v")
        mark = txn.mark()
        txn.swap(0, 1)
        txn.flush(None)
        txn.undo(mark)
        txn.commit()
        assert ks.map == identity_map()
        # The first write of a fresh directory records the (version 2) identity map; the
        # undone swap and flush left no trace in it.
        assert db.get(MAP_KEY) == encode_map(identity_map())
        assert ks.begin().get(0, b"k") is not None


# -- WATCH ---------------------------------------------------------------------------------

def _exec_after(watcher: redis.Redis, keys: list[str], action: Callable[[], Any]) -> Any:
    """WATCH keys on ``watcher``, run ``action`` (another client), then MULTI/PING/EXEC."""
    assert watcher.execute_command("WATCH", *keys)
    action()
    watcher.execute_command("MULTI")
    watcher.execute_command("PING")
    return watcher.execute_command("EXEC")


def test_watch_sees_copy_move_swapdb_and_flush(server: ServerThread) -> None:
    other = server.client(single_connection_client=True)
    w0 = server.client(single_connection_client=True)
    w1 = server.client(db=1, single_connection_client=True)
    w2 = server.client(db=2, single_connection_client=True)
    other.set("src", "v")
    # COPY writes the destination; one that copies nothing touches nothing.
    assert _exec_after(w0, ["dst"], lambda: other.copy("src", "dst")) is None
    assert _exec_after(w0, ["dst"], lambda: other.copy("src", "dst")) == [b"PONG"]
    assert _exec_after(w1, ["src"], lambda: other.copy("src", "src", destination_db=1)) is None
    # MOVE writes both ends.
    assert _exec_after(w0, ["src"], lambda: other.move("src", 2)) is None
    assert _exec_after(w2, ["dst"], lambda: other.move("dst", 2)) is None
    assert _exec_after(w0, ["nothing"], lambda: other.move("nothing", 2)) == [b"PONG"]
    # SWAPDB invalidates watches on both databases, and only on them.
    assert _exec_after(w0, ["x"], lambda: other.swapdb(0, 1)) is None
    assert _exec_after(w1, ["x"], lambda: other.swapdb(0, 1)) is None
    assert _exec_after(w2, ["x"], lambda: other.swapdb(0, 1)) == [b"PONG"]
    assert _exec_after(w0, ["x"], lambda: other.swapdb(0, 0)) == [b"PONG"]
    # FLUSHDB touches the watched keys it deletes; a watched key that did not exist is not
    # changed by it and its watcher is spared, as in Redis 7.0 (TCL unit/multi "FLUSHDB
    # does not touch non affected keys"); another database: no effect.
    other.select(2)
    other.set("x", "1")
    assert _exec_after(w2, ["x"], lambda: other.flushdb()) is None
    assert _exec_after(w2, ["x"], lambda: other.flushdb()) == [b"PONG"]
    assert _exec_after(w0, ["x"], lambda: other.flushdb()) == [b"PONG"]
    assert _exec_after(w0, ["x"], lambda: other.flushall()) == [b"PONG"]
    other.select(0)
    other.set("x", "1")
    assert _exec_after(w0, ["x"], lambda: other.flushall()) is None
    # A key the flushing transaction itself wrote first is touched too.
    assert _exec_after(w0, ["y"], lambda: other.pipeline().set("y", 1).flushall().execute()
                       ) is None


# -- FLUSHDB through the map, and the purge ------------------------------------------------

def test_flushdb_remaps_at_once_and_purges_in_the_background(server: ServerThread,
                                                             r: redis.Redis) -> None:
    ks = server.server.keyspace  # type: ignore[union-attr]
    r.select(1)
    r.mset({b"k%05d" % i: b"v" for i in range(3 * PURGE_CHUNK + 7)})
    r.select(2)
    r.mset({b"keep%03d" % i: b"v" for i in range(50)})
    r.select(1)
    old = server.call(lambda: ks.map[1])
    assert r.flushdb() is True
    assert r.dbsize() == 0 and r.keys() == [] and r.get("k00001") is None
    new = server.call(lambda: ks.map[1])
    assert new != old
    _wait(lambda: _purged(server))
    assert _raw_keys(server, old) == []
    assert server.call(lambda: old in ks.purger.free)
    assert server.call(lambda: ks.purger.purged_keys) >= 3 * PURGE_CHUNK + 7
    r.select(2)
    assert r.dbsize() == 50
    # An empty database needs no new id: FLUSHDB writes nothing.
    r.select(9)
    before = server.call(lambda: (list(ks.map), db_writes(server)))
    assert r.flushdb() is True
    assert server.call(lambda: (list(ks.map), db_writes(server))) == before
    # FLUSHALL empties everything.
    r.select(1)
    r.set("again", "1")
    assert r.flushall() is True
    for d in range(16):
        r.select(d)
        assert r.dbsize() == 0
    _wait(lambda: _purged(server))
    mapped = server.call(lambda: set(ks.map))
    for phys in range(PHYSICAL_DATABASES):
        if phys not in mapped:
            assert _raw_keys(server, phys) == []


def db_writes(st: ServerThread) -> int:
    return int(st.server.db.stats()["writes"])  # type: ignore[union-attr]


def test_running_out_of_free_ids_purges_synchronously(tmp_path: Path) -> None:
    """Without the background purger, each flush of a non-empty database takes a free id;
    once none is left, the oldest queued id is purged inside the flush."""
    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        spare = PHYSICAL_DATABASES - 16
        assert len(ks.purger.free) == spare
        for i in range(spare + 20):
            txn = ks.begin()
            txn.set(0, b"k", b"%d" % i)
            txn.set(0, b"k2", b"x")
            txn.commit()
            txn = ks.begin()
            assert txn.get(0, b"k") == (b"%d" % i, 0)
            txn.flush(0)
            txn.commit()
            assert ks.begin().get(0, b"k") is None
            if i == spare - 1:
                assert not ks.purger.free  # every spare id is queued now
        assert len(ks.purger.free) + len(ks.purger.queue) == spare
        assert ks.purger.purged_keys >= 2 * 20
        # What is left queued is purged by steps.
        while ks.purger.step(PURGE_CHUNK):
            pass
        assert len(ks.purger.free) == spare
        assert [k for k, _ in db.range(b"", b"\xf0")] == []


def test_purge_steps_are_bounded(tmp_path: Path) -> None:
    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        txn = ks.begin()
        for i in range(2 * PURGE_CHUNK + 5):
            txn.set(4, b"k%05d" % i, b"v", txn.now + 100_000 if i % 2 else 0)
        txn.commit()
        old = ks.map[4]
        txn = ks.begin()
        txn.flush(4)
        txn.commit()
        assert list(ks.purger.queue) == [old]
        assert ks.purger.step(PURGE_CHUNK) is True
        assert ks.purger.purged_keys == PURGE_CHUNK  # one bounded batch per step
        assert ks.purger.step(PURGE_CHUNK) is True
        assert ks.purger.step(PURGE_CHUNK) is False
        assert ks.purger.purged_keys == 2 * PURGE_CHUNK + 5
        assert ks.physical_empty(old) and ks.purger.free[-1] == old


def test_restart_purges_unmapped_ids_left_by_a_crash(tmp_path: Path,
                                                     server_factory: Callable[..., ServerThread]
                                                     ) -> None:
    """A crash between FLUSHDB's map write and the end of its purge leaves keys under an
    unmapped id: the next start queues it again and purges it, and they never reappear."""
    path = tmp_path / "crashed"
    mapping = identity_map()
    mapping[0] = 20  # logical 0 was flushed (old id 0) and now lives in id 20
    with shaledb.open(path) as db, db.batch() as b:
        b.put(MAP_KEY, encode_map(mapping))
        for i in range(500):
            b.put(b"\x00flushed%03d" % i, encode_value(b"old", 0))
            b.put(b"\x64stray%03d" % i, encode_value(b"old", 0))
        b.put(b"\x14live", encode_value(b"new", 0))
        b.put(b"\x03three", encode_value(b"3", 0))
    st = server_factory(dir=str(path))
    r = st.client()
    assert r.keys() == [b"live"]
    r.select(3)
    assert r.keys() == [b"three"]
    _wait(lambda: _purged(st))
    assert _raw_keys(st, 0) == [] and _raw_keys(st, 100) == []
    ks = st.server.keyspace  # type: ignore[union-attr]
    assert st.call(lambda: {0, 100} <= set(ks.purger.free))


# -- the identity layout of directories written before the map -----------------------------

def test_directory_without_a_map_opens_with_the_identity_layout(
        tmp_path: Path, server_factory: Callable[..., ServerThread]) -> None:
    """Keys written the way the server wrote them before the database map (database byte =
    SELECT index, no map record) are served unchanged, and keep working after a swap."""
    path = tmp_path / "old"
    expire = int(time.time() * 1000) + 100_000
    with shaledb.open(path) as db:
        db.put(b"\x00plain", b"\x00hello")
        db.put(b"\x03ttl", b"\x80" + struct.pack(">Q", expire) + b"soon",
               ttl=expire / 1000 - time.time())
        db.put(b"\x0fedge", b"\x00last db")
    st = server_factory(dir=str(path))
    r = st.client(single_connection_client=True)
    assert r.get("plain") == b"hello"
    r.select(3)
    assert r.get("ttl") == b"soon" and r.pexpiretime("ttl") == expire
    r.select(15)
    assert r.get("edge") == b"last db"
    ks = st.server.keyspace  # type: ignore[union-attr]
    assert st.call(lambda: ks.map) == identity_map()
    # Upgraded at open (to server keyspace version 7 since streams): the identity map, now
    # written down (version 6 map), so an older server refuses the directory.
    assert st.call(lambda: st.server.db.get(MAP_KEY)) == (  # type: ignore[union-attr]
        b"\x06\x10" + bytes(range(16)))
    r.swapdb(0, 15)
    r.select(3)
    r.flushdb()
    st.stop()
    st2 = server_factory(dir=str(path))
    r2 = st2.client(single_connection_client=True)
    assert r2.get("edge") == b"last db"
    r2.select(15)
    assert r2.get("plain") == b"hello"
    r2.select(3)
    assert r2.dbsize() == 0


def test_map_record_encoding_and_damage(tmp_path: Path,
                                        server_factory: Callable[..., ServerThread]) -> None:
    assert encode_map(identity_map()) == b"\x06\x10" + bytes(range(16))
    assert decode_map(None) == identity_map()
    m = identity_map()
    m[0], m[5] = 200, 0
    assert decode_map(encode_map(m)) == m
    # Version 1 (server keyspace version 2) is still read, to upgrade it, and version 2
    # (server keyspace version 3, strings only) as it is.
    assert decode_map(b"\x01\x10" + bytes(range(16))) == identity_map()
    assert decode_map(b"\x02\x10" + bytes(range(16))) == identity_map()
    # Version 3 (server keyspace version 4, hashes and sets) as it is too.
    assert decode_map(b"\x03\x10" + bytes(range(16))) == identity_map()
    # Versions 4 (lists) and 5 (sorted sets) as they are too; 7 is unknown.
    assert decode_map(b"\x04\x10" + bytes(range(16))) == identity_map()
    assert decode_map(b"\x05\x10" + bytes(range(16))) == identity_map()
    with pytest.raises(IncompatibleFormatError, match="version 7"):
        decode_map(b"\x07\x10" + bytes(range(16)))
    for bad in (b"", b"\x01\x10" + bytes(range(15)), b"\x01\x10" + bytes(15) + b"\x01",
                b"\x01\x10" + bytes(range(15)) + b"\xf0", b"\x02\x10" + bytes(range(15)),
                b"\x02\x10" + bytes(15) + b"\x01", b"\x02\x10" + bytes(range(15)) + b"\xf0",
                b"\x03\x10" + bytes(range(15)), b"\x03\x10" + bytes(15) + b"\x01",
                b"\x03\x10" + bytes(range(15)) + b"\xf0", b"\x04\x10" + bytes(range(15)),
                b"\x04\x10" + bytes(15) + b"\x01", b"\x04\x10" + bytes(range(15)) + b"\xf0",
                b"\x06\x10" + bytes(range(15)), b"\x06\x10" + bytes(15) + b"\x01",
                b"\x06\x10" + bytes(range(15)) + b"\xf0"):
        with pytest.raises(CorruptionError):
            decode_map(bad)
    path = tmp_path / "damaged"
    with shaledb.open(path) as db:
        db.put(MAP_KEY, b"\x07")
    with pytest.raises(IncompatibleFormatError):
        server_factory(dir=str(path))


# -- crash atomicity ------------------------------------------------------------------------

def test_swapdb_and_flushdb_survive_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "db"
    port = free_port()
    proc = run_server_process(data, port)
    try:
        c0, c1, c2 = _client(port, 0), _client(port, 1), _client(port, 2)
        c0.mset({b"a%05d" % i: b"A" for i in range(4000)})
        c1.mset({b"b%05d" % i: b"B" for i in range(4000)})
        c2.mset({b"c%05d" % i: b"C" for i in range(4000)})
        assert c0.swapdb(0, 1) is True
        assert c2.flushdb() is True
        os.kill(proc.pid, signal.SIGKILL)  # right after the replies
        proc.wait(10)
        for cycle in range(3):
            proc = run_server_process(data, port)
            c0, c1, c2 = _client(port, 0), _client(port, 1), _client(port, 2)
            assert c0.dbsize() == 4000 and c0.get("b00000") == b"B"
            assert c1.dbsize() == 4000 + cycle and c1.get("a00000") == b"A"
            assert c2.dbsize() == 0
            # Again a big flush, killed at once: nothing flushed comes back.
            c2.mset({b"c%05d" % i: b"C" for i in range(4000)})
            c1.set(f"cycle{cycle}", "1")
            assert c2.flushdb() is True
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        proc = run_server_process(data, port)
        assert _client(port, 2).dbsize() == 0
        assert _client(port, 1).dbsize() == 4003
        # Let the restarted server finish purging, then stop it and look at the raw data.
        deadline = time.monotonic() + 30
        while True:
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            with shaledb.open(data) as db:
                mapping = decode_map(db.get(MAP_KEY))
                stray = {k[0] for k, _ in db.range() if k[0] not in mapping and k[0] != 0xFF}
            if not stray or time.monotonic() > deadline:
                break
            proc = run_server_process(data, port)
        assert stray == set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- active expiry --------------------------------------------------------------------------

@pytest.mark.timing
def test_active_expiry_deletes_keys_nobody_reads(server_factory: Callable[..., ServerThread]
                                                 ) -> None:
    st = server_factory(hz=50)
    ks = st.server.keyspace  # type: ignore[union-attr]
    r = st.client(single_connection_client=True)
    with r.pipeline(transaction=False) as p:
        for i in range(300):
            p.set(b"short%03d" % i, b"v", px=50)
        for i in range(20):
            p.set(b"forever%02d" % i, b"v")
        for i in range(10):
            p.set(b"long%02d" % i, b"v", ex=1000)
        p.execute()
    r.select(4)
    r.mset({b"four%d" % i: b"v" for i in range(5)})
    phys0 = st.call(lambda: ks.map[0])
    expired_before = st.call(lambda: ks.expired_keys)
    time.sleep(0.1)
    # Nobody reads the keys; the sweeper finds and deletes them.
    _wait(lambda: st.call(lambda: ks.expired_keys) - expired_before >= 300)
    # Deleted, not just hidden: even the view that ignores expiry no longer has them.
    raw = _raw_keys(st, phys0)
    assert len(raw) == 30 and not any(k[1:].startswith(b"short") for k in raw)
    passes = st.call(lambda: ks.sweeper.passes)
    _wait(lambda: st.call(lambda: ks.sweeper.passes) >= passes + 2)
    assert st.call(ks.key_counts) == {0: (30, 10), 4: (5, 0)}
    last = st.call(ks.last_sweep_ms)
    assert abs(last - time.time() * 1000) < 10_000
    assert r.dbsize() == 5


def test_sweeper_slice_budget_and_resave(tmp_path: Path) -> None:
    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        sweeper = ks.sweeper
        assert ks.key_counts() == {} and ks.last_sweep_ms() == 0
        txn = ks.begin()
        for i in range(1000):
            txn.set(1, b"k%04d" % i, b"v")
        txn.set(1, b"zdies", b"v", txn.now + 30)
        txn.commit()
        assert sweeper.step(100, 10.0) == 100  # the slice limit
        assert sweeper.step(10**6, 0.0) == 32  # the time budget (checked every 32 entries)
        time.sleep(0.05)
        # The expired key is SET again before the sweeper reaches it: it stays.
        txn = ks.begin()
        txn.set(1, b"zdies", b"again")
        txn.commit()
        while sweeper.passes == 0:
            sweeper.step(100, 10.0)
        assert ks.expired_keys == 0
        assert ks.begin().get(1, b"zdies") == (b"again", 0)
        assert ks.key_counts() == {1: (1001, 0)}
        assert ks.last_sweep_ms() > 0
        # And one that stays expired is deleted on the next pass.
        txn = ks.begin()
        txn.set(1, b"zdies", b"v", txn.now + 20)
        txn.commit()
        time.sleep(0.05)
        passes = sweeper.passes
        while sweeper.passes == passes:
            sweeper.step(100, 10.0)
        assert ks.expired_keys == 1
        assert ks.key_counts() == {1: (1000, 0)}
        assert b"\x01zdies" not in [k for k, _ in ks.raw_range(b"\x01", b"\x02")]
        # A SET buffered (not yet committed) while the sweeper deletes the expired key is
        # committed after the delete, so it wins.
        txn = ks.begin()
        txn.set(1, b"zdies", b"v", txn.now + 20)
        txn.commit()
        time.sleep(0.05)
        pending = ks.begin()
        pending.set(1, b"zdies", b"reborn")
        passes = sweeper.passes
        while sweeper.passes == passes:
            sweeper.step(100, 10.0)
        assert ks.expired_keys == 2
        pending.commit()
        assert ks.begin().get(1, b"zdies") == (b"reborn", 0)


def test_expiry_settings() -> None:
    assert tick_budget(10, 1) == (KEYS_PER_TICK, 0.025)
    assert tick_budget(100, 10) == (10 * KEYS_PER_TICK, pytest.approx(0.0043))
    cfg = ServerConfig(hz=500, active_expire_effort=10)
    assert cfg.hz == 500 and cfg.active_expire_effort == 10
    for bad in ({"hz": 0}, {"hz": 501}, {"hz": "10"}, {"hz": True},
                {"active_expire_effort": 0}, {"active_expire_effort": 11},
                {"active_expire_effort": 2.0}):
        with pytest.raises(InvalidArgument, match=next(iter(bad))):
            ServerConfig(**bad)


def test_expiry_settings_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "shaledb.toml"
    path.write_text("[server]\nhz = 25\nactive-expire-effort = 3\n")
    cfg = ServerConfig.load(str(path))
    assert (cfg.hz, cfg.active_expire_effort) == (25, 3)


def _full_pass(sweeper: Any) -> None:
    passes = sweeper.passes
    while sweeper.passes == passes:
        sweeper.step(100, 10.0)


def test_sweeper_goes_idle_without_expiring_keys(tmp_path: Path) -> None:
    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        sweeper = ks.sweeper
        assert sweeper.idle()  # starts idle
        txn = ks.begin()
        for i in range(300):
            txn.set(0, b"k%03d" % i, b"v")
        txn.commit()
        _full_pass(sweeper)
        assert sweeper.idle() and ks.key_counts() == {0: (300, 0)}
        # A key written with an expiry wakes it at once, even mid-pass.
        sweeper.step(50, 10.0)
        txn = ks.begin()
        txn.set(0, b"k000", b"v", txn.now + 20)
        txn.commit()
        assert not sweeper.idle()
        _full_pass(sweeper)  # started before that write: proves nothing, stays awake
        assert not sweeper.idle()
        time.sleep(0.05)
        _full_pass(sweeper)  # meets the expiring key (deletes it): still awake
        assert ks.expired_keys == 1 and not sweeper.idle()
        _full_pass(sweeper)  # no expiring key left and none written: idle again
        assert sweeper.idle() and ks.key_counts() == {0: (299, 0)}
        # An expiring key already on disk (a restart) wakes it as soon as a tick meets it.
        txn = ks.begin()
        txn.set(0, b"k001", b"v", txn.now + 60_000)
        txn.commit()
    with shaledb.open(tmp_path / "db") as db:
        sweeper = Keyspace(db).sweeper
        assert sweeper.idle()
        sweeper.step(10, 10.0)
        assert not sweeper.idle()


def test_active_expiry_survives_a_tick_that_raises(server_factory: Callable[..., ServerThread]
                                                   ) -> None:
    """An unexpected exception in a sweeper tick ended the asyncio task silently (nobody
    awaits it): from then on keys nobody reads never expired. (Suspected in a CI run where
    test_active_expiry_deletes_keys_nobody_reads waited 20 s for keys the sweeper never
    deleted.) Now the tick is logged as a bug and the sweeper goes on."""
    st = server_factory(hz=50)
    ks = st.server.keyspace  # type: ignore[union-attr]
    real_step, calls = ks.sweeper.step, []

    def flaky_step(max_keys: int, budget: float) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in a tick")
        return real_step(max_keys, budget)

    st.call(lambda: setattr(ks.sweeper, "step", flaky_step))
    r = st.client()
    expired_before = st.call(lambda: ks.expired_keys)
    r.set(b"short", b"v", px=20)
    _wait(lambda: st.call(lambda: ks.expired_keys) - expired_before >= 1, timeout=10.0)
    assert len(calls) >= 2
