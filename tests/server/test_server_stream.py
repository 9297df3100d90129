"""Streams over the network (issue 13 section 1): the stream commands against a real server
with redis-py, their replies compared with a real redis-server 7 where the clock does not
enter, the encoding's bytes (docs/format.md "Streams"), the O(1) drop of a stream with its
groups and the purger reclaiming both ranges, WRONGTYPE and the key commands across types,
the version 5 -> 7 map upgrade, the trim bound, replies charged to the output limit, and
XREAD / XREADGROUP BLOCK (woken at the commit only, timeouts, MULTI, disconnects)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import shaledb

from ._server_support import (
    RawClient,
    ServerThread,
    keyevents,
    real_redis,
    wait_until,
)

KiB = 1024


def _blocked(r: redis.Redis) -> int:
    return int(r.info("clients")["blocked_clients"])


def _records(st: ServerThread, lo: bytes, hi: bytes) -> int:
    def count() -> int:
        db = st.server.db  # type: ignore[union-attr]
        return sum(1 for _ in db.range(lo, hi))
    return int(st.call(count))


class _Call:
    """Run a (blocking) redis-py call in a thread; ``result()`` joins it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 10.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the blocked call never returned"
        if self.error is not None:
            raise self.error
        return self.value


# -- replies compared with Redis 7 ---------------------------------------------------------------

@pytest.fixture
def redis7(tmp_path: Path) -> Iterator[redis.Redis]:
    """A real redis-server on loopback (skips when it is not installed)."""
    with real_redis(tmp_path) as client:
        yield client


#: Commands whose replies do not depend on the clock (explicit ids; idle times left out).
SCRIPT = """
XADD s 1-1 a 1
XADD s 1-1 a 1
XADD s 0-0 a 1
XADD s 1-* b 2
XADD s 5 c 3
XADD s 5-* d 4
XADD s 3-0 x y
XADD s abc a 1
XADD s * a
XADD s 18446744073709551616-0 a 1
XLEN s
XLEN nokey
XRANGE s - +
XRANGE s - + COUNT 0
XRANGE nokey - + COUNT 0
XRANGE s - + COUNT 2
XRANGE s (1-1 +
XRANGE s - (5-1
XRANGE s 1 1
XRANGE s 5 +
XREVRANGE s + -
XREVRANGE s + - COUNT 1
XREVRANGE s (5-1 -
XRANGE s (- +
XRANGE s - (0-0
XRANGE s - + FOO 1
XRANGE nokey - +
XADD s2 NOMKSTREAM * a 1
EXISTS s2
XADD s MAXLEN = 2 LIMIT 5 9-0 a 1
XADD s MAXLEN 2 MINID 1 9-0 a 1
XADD s MAXLEN -1 9-0 a 1
XADD s MAXLEN 3 9-0 a 1
XRANGE s - +
XADD e 0-* a 1
XDEL s 9-0 1-1 100-0
XDEL s bad
XDEL nokey bad
XTRIM s MAXLEN 0
XLEN s
EXISTS s
XTRIM nokey MAXLEN 0
XTRIM s
XTRIM s LIMIT 10
TYPE s
SET str x
XADD str * a 1
XRANGE str - +
XREAD STREAMS str 0
XREAD STREAMS s e 0 0
XREAD COUNT 1 STREAMS e 0
XREAD STREAMS e $
XREAD STREAMS e
XREAD STREAMS e >
XREAD BLOCK x STREAMS e 0
XREAD BLOCK -1 STREAMS e 0
XSETID e 0-5
XSETID e 10-0 ENTRIESADDED 0
XSETID e 10-0 ENTRIESADDED 5 MAXDELETEDID 3-0
XSETID nokey 1-1
XINFO STREAM e
XINFO STREAM nokey
OBJECT ENCODING e
XGROUP CREATE g1 g $
XGROUP CREATE g1 g $ MKSTREAM
XGROUP CREATE g1 g $ MKSTREAM
XGROUP CREATE g1 g2 0 ENTRIESREAD 0
XGROUP CREATE g1 g3 0 ENTRIESREAD -2
XGROUP CREATE g1 g4 0 FOO
XGROUP FOO g1 g
XGROUP CREATE g1
XGROUP CREATE str g $
XADD g1 1-0 a 1
XADD g1 2-0 b 2
XADD g1 3-0 c 3
XINFO GROUPS g1
XREADGROUP GROUP g c1 COUNT 1 STREAMS g1 >
XREADGROUP GROUP g c1 STREAMS g1 >
XREADGROUP GROUP g c1 STREAMS g1 >
XREADGROUP GROUP g c1 STREAMS g1 0
XREADGROUP GROUP g c2 STREAMS g1 0
XREADGROUP GROUP nog c2 STREAMS g1 >
XREADGROUP GROUP g c2 STREAMS nokey >
XREADGROUP GROUP g c2 STREAMS g1 $
XREADGROUP STREAMS g1 >
XINFO GROUPS g1
XPENDING g1 g
XPENDING g1 g IDLE 100000 - + 10
XPENDING g1 g - +
XPENDING g1 nog
XACK g1 g 1-0 1-0 9-9
XACK g1 g bad
XACK g1 nog 1-0
XACK nokey g 1-0
XPENDING g1 g
XCLAIM g1 g c2 0 2-0 JUSTID
XCLAIM g1 g c2 0 2-0 RETRYCOUNT 5 JUSTID
XCLAIM g1 g c2 0 3-0
XCLAIM g1 g c2 0 9-0 FORCE
XCLAIM g1 g c2 0 1-0 FORCE JUSTID
XCLAIM g1 g c2 0 2-0 FOO
XCLAIM g1 g c2 abc 2-0
XCLAIM g1 nog c2 0 2-0
XDEL g1 2-0
XCLAIM g1 g c3 0 2-0 JUSTID
XPENDING g1 g
XAUTOCLAIM g1 g c4 0 0 COUNT 1
XAUTOCLAIM g1 g c4 0 0
XAUTOCLAIM g1 g c4 0 0 JUSTID
XAUTOCLAIM g1 g c4 0 0 COUNT 0
XAUTOCLAIM g1 nog c4 0 0
XINFO CONSUMERS g1 nog
XGROUP CREATECONSUMER g1 g c9
XGROUP CREATECONSUMER g1 g c9
XGROUP CREATECONSUMER g1 nog c9
XGROUP DELCONSUMER g1 g c4
XGROUP DELCONSUMER g1 g c4
XPENDING g1 g
XINFO GROUPS g1
XGROUP SETID g1 g 0
XGROUP SETID g1 g $ ENTRIESREAD 3
XGROUP SETID g1 nog 0
XINFO GROUPS g1
XGROUP DESTROY g1 g
XGROUP DESTROY g1 g
XGROUP DESTROY nokey g
XINFO GROUPS g1
XADD t 1-0 a 1
XADD t 2-0 a 1
XADD t 3-0 a 1
XGROUP CREATE t g 0
XREADGROUP GROUP g c NOACK STREAMS t >
XPENDING t g
XINFO GROUPS t
XDEL t 2-0
XINFO STREAM t
XINFO GROUPS t
XGROUP CREATE t g5 0
XREADGROUP GROUP g5 c COUNT 1 STREAMS t >
XINFO GROUPS t
XREADGROUP GROUP g5 c STREAMS t >
XINFO GROUPS t
XINFO HELP
XGROUP HELP
LPUSH t x
HSET t f v
GET t
"""


def _reply(client: redis.Redis, args: list[str]) -> Any:
    try:
        return client.execute_command(*args)
    except redis.ResponseError as exc:
        return ("error", str(exc))


def test_stream_replies_match_redis_7(r: redis.Redis, redis7: redis.Redis) -> None:
    for client in (r, redis7):  # the raw replies, not redis-py's reading of them
        client.response_callbacks.clear()  # type: ignore[attr-defined]
    diffs = []
    for line in SCRIPT.strip().splitlines():
        args = line.split()
        ours, theirs = _reply(r, args), _reply(redis7, args)
        if ours != theirs:
            diffs.append((line, ours, theirs))
    assert diffs == []


def test_trimming_by_whole_nodes_matches_redis_7(r: redis.Redis,
                                                 redis7: redis.Redis) -> None:
    """Approximate trimming (~) removes whole nodes of stream-node-max-entries, with the
    default LIMIT of 100 nodes, exactly as Redis' radix tree does after appends and exact
    trims."""
    def both(*args: Any) -> Any:
        ours, theirs = _reply(r, list(args)), _reply(redis7, list(args))
        assert ours == theirs, args
        return ours

    for node in (100, 10, 1, 2):
        both("CONFIG", "SET", "stream-node-max-entries", str(node))
        both("DEL", "m")
        for j in range(1, 203):
            both("XADD", "m", "MAXLEN", "~", "55", f"{j}-0", "f", "v")
        both("XLEN", "m")
        both("XTRIM", "m", "MAXLEN", "=", "40")
        both("XTRIM", "m", "MAXLEN", "~", "21", "LIMIT", "7")
        both("XTRIM", "m", "MINID", "~", "190")
        both("XTRIM", "m", "MAXLEN", "~", "0")
        both("XLEN", "m")
        both("XRANGE", "m", "-", "+", "COUNT", "3")
    both("CONFIG", "SET", "stream-node-max-entries", "100")


# -- the encoding ------------------------------------------------------------------------------

def test_stream_records_are_the_documented_bytes(server: ServerThread) -> None:
    """docs/format.md's example, byte for byte."""
    r = server.client()
    assert r.xadd("s", {"f": "v"}, id="5-1") == b"5-1"
    db = server.server.db  # type: ignore[union-attr]

    def get(k: bytes) -> bytes | None:
        return server.call(lambda: db.get(k))  # type: ignore[no-any-return]

    assert get(b"\x00s") == bytes.fromhex(
        "06 0000000000000001 0000000000000001"
        " 0000000000000005 0000000000000001 0000000000000001"
        " 0000000000000000 0000000000000000 0000000000000000")
    assert get(bytes.fromhex("F2 0000000000000001 0000000000000005 0000000000000001")) == (
        bytes.fromhex("00000002 00000001 66 00000001 76"))
    assert get(bytes.fromhex("F5 0000000000000001 00")) == b""
    assert r.xgroup_create("s", "g", id="0") is True
    assert r.xreadgroup("g", "alice", {"s": ">"}) == [[b"s", [(b"5-1", {b"f": b"v"})]]]
    # The group: number 0, last id 5-1, entries read 1; the header's next group is 1.
    assert get(bytes.fromhex("F5 0000000000000001 01") + b"g") == bytes.fromhex(
        "0000000000000000 0000000000000005 0000000000000001 0000000000000001")
    assert get(b"\x00s")[-8:] == (1).to_bytes(8, "big")  # type: ignore[index]
    pel = get(bytes.fromhex("F5 0000000000000001 02 0000000000000000"
                            " 0000000000000005 0000000000000001"))
    assert pel is not None and pel[8:] == bytes.fromhex("0000000000000001") + b"alice"
    consumer = get(bytes.fromhex("F5 0000000000000001 03 0000000000000000") + b"alice")
    assert consumer is not None and len(consumer) == 16
    assert get(b"\xffdbmap") == b"\x06\x10" + bytes(range(16))


@pytest.mark.parametrize("old", [4, 5])
def test_a_version_5_or_6_directory_is_served_and_upgraded_by_its_first_write(
        tmp_path: Path, server_factory: Callable[..., ServerThread], old: int) -> None:
    """Map records 0x04 (version 5: lists) and 0x05 (version 6: sorted sets) have the
    bytes of version 7 minus streams: served as they are; the first write records 0x06, so
    an older server (whose purger would leak a dropped stream's group records) refuses the
    directory from then on."""
    from shaledb.server.keyspace.dbmap import MAP_KEY, count_key, encode_counts

    path = tmp_path / "old"
    with shaledb.open(path) as db, db.batch() as b:
        b.put(MAP_KEY, bytes((old, 0x10)) + bytes(range(16)))
        b.put(b"\x00plain", b"\x00hello")
        b.put(count_key(0), encode_counts(1, 0))
    st = server_factory(dir=str(path))
    r = st.client()
    assert r.get("plain") == b"hello" and r.dbsize() == 1
    assert st.call(lambda: st.server.db.get(MAP_KEY))[0] == old  # type: ignore[union-attr]
    r.xadd("s", {"a": "1"}, id="1-1")
    assert st.call(lambda: st.server.db.get(MAP_KEY)) == (  # type: ignore[union-attr]
        b"\x06\x10" + bytes(range(16)))
    assert r.xlen("s") == 1 and r.dbsize() == 2


def test_del_of_a_stream_with_groups_is_one_write_and_both_ranges_are_reclaimed(
        server: ServerThread) -> None:
    r = server.client()
    n = 5_000
    pipe = r.pipeline(transaction=False)
    for i in range(1, n + 1):
        pipe.xadd("big", {"i": i}, id=f"{i}-0")
    pipe.execute()
    r.xgroup_create("big", "g", id="0")
    r.xgroup_create("big", "h", id="0")
    r.xreadgroup("g", "c1", {"big": ">"}, count=3_000)
    assert r.xlen("big") == n and _records(server, b"\xf2", b"\xf3") == n
    assert _records(server, b"\xf5", b"\xf6") == 1 + 2 + 3_000 + 1  # anchor, groups, PEL, c1
    pipe = r.pipeline(transaction=False)
    pipe.info("shaledb")
    pipe.delete("big")
    pipe.info("shaledb")
    before, deleted, after = pipe.execute()
    assert deleted == 1
    written = after["wal_bytes_written"] - before["wal_bytes_written"]
    assert written < 1024, f"DEL of a {n}-entry stream wrote {written} bytes of WAL"
    wait_until(lambda: _records(server, b"\xf2", b"\xf6") == 0, 30,
               "the purger reclaiming the entries and the group records")
    # An empty stream (XADD MAXLEN 0, XGROUP CREATE MKSTREAM) is a stream, as in Redis.
    assert r.xadd("e", {"a": "1"}, maxlen=0) and r.xlen("e") == 0 and r.type("e") == b"stream"
    r.xgroup_create("e2", "g", mkstream=True)
    assert r.exists("e2") == 1 and r.xinfo_groups("e2")[0]["name"] == b"g"


def test_an_empty_stream_keeps_its_id_across_a_restart(
        tmp_path: Path, server_factory: Callable[..., ServerThread]) -> None:
    """An empty stream has no entry record; its anchor in the group range keeps its
    collection id from being handed out again after a restart (a new collection with the
    same id would share its records)."""
    st = server_factory(dir=str(tmp_path / "d"))
    r = st.client()
    r.xgroup_create("empty", "g", mkstream=True)
    st.stop()
    st = server_factory(dir=str(tmp_path / "d"))
    r = st.client()
    r.xadd("other", {"a": "1"}, id="1-0")
    r.xgroup_create("other", "x", id="0")
    assert [g["name"] for g in r.xinfo_groups("empty")] == [b"g"]
    assert [g["name"] for g in r.xinfo_groups("other")] == [b"x"]
    r.xreadgroup("x", "c", {"other": ">"})
    assert r.xpending("empty", "g")["pending"] == 0
    assert r.xpending("other", "x")["pending"] == 1


# -- types and keys ------------------------------------------------------------------------------

def test_wrongtype_and_the_key_commands(r: redis.Redis) -> None:
    r.xadd("s", {"a": "1"}, id="1-0")
    r.xgroup_create("s", "g", id="0")
    r.xreadgroup("g", "c", {"s": ">"})
    r.set("str", "x")
    r.rpush("l", "x")
    assert r.type("s") == b"stream"
    for call in (lambda: r.xadd("str", {"a": 1}), lambda: r.xlen("l"),
                 lambda: r.xrange("str"), lambda: r.xread({"l": 0}),
                 lambda: r.xgroup_create("str", "g"), lambda: r.xinfo_stream("l"),
                 lambda: r.xack("str", "g", "1-0"), lambda: r.get("s"),
                 lambda: r.lpush("s", "x"), lambda: r.hset("s", "f", "v"),
                 lambda: r.sadd("s", "x"), lambda: r.append("s", "x")):
        with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
            call()
    r.copy("s", "s2")
    r.xadd("s2", {"b": "2"}, id="2-0")
    assert r.xlen("s") == 1 and r.xlen("s2") == 2
    assert r.xpending("s2", "g")["pending"] == 1  # COPY copies the groups and their PEL
    r.xack("s2", "g", "1-0")
    assert r.xpending("s", "g")["pending"] == 1 and r.xpending("s2", "g")["pending"] == 0
    r.rename("s", "s3")
    assert r.exists("s") == 0 and r.xinfo_groups("s3")[0]["pending"] == 1
    assert r.expire("s3", 100) and 0 < r.ttl("s3") <= 100
    assert r.xadd("s3", {"c": "3"}, id="3-0") and 0 < r.ttl("s3") <= 100
    r.persist("s3")
    assert r.move("s3", 1)
    r.select(1)  # type: ignore[attr-defined]
    assert r.xlen("s3") == 2 and r.xpending("s3", "g")["pending"] == 1
    r.swapdb(0, 1)
    r.select(0)  # type: ignore[attr-defined]
    assert r.xlen("s3") == 2
    r.flushdb()
    assert r.exists("s3") == 0
    r.set("s2", "now a string")  # overwriting a stream
    assert r.get("s2") == b"now a string"
    r.xadd("x", {"a": "1"}, id="1-0")
    assert r.object("encoding", "x") == b"stream"


def test_groups_survive_a_restart(tmp_path: Path,
                                  server_factory: Callable[..., ServerThread]) -> None:
    st = server_factory(dir=str(tmp_path / "d"))
    r = st.client()
    for i in range(1, 6):
        r.xadd("s", {"i": i}, id=f"{i}-0")
    r.xgroup_create("s", "g", id="0")
    r.xreadgroup("g", "alice", {"s": ">"}, count=3)
    r.xack("s", "g", "2-0")
    r.xdel("s", "4-0")
    st.stop()
    st = server_factory(dir=str(tmp_path / "d"))
    r = st.client()
    assert r.xlen("s") == 4
    info = r.xinfo_stream("s")
    assert info["last-generated-id"] == b"5-0" and info["entries-added"] == 5
    assert info["max-deleted-entry-id"] == b"4-0"
    assert [p["message_id"] for p in r.xpending_range("s", "g", "-", "+", 10)] == [
        b"1-0", b"3-0"]
    assert r.xreadgroup("g", "bob", {"s": ">"}) == [[b"s", [(b"5-0", {b"i": b"5"})]]]
    # Redis 7.0.15 answers 1 here too: entries-read counts 4 (the XDEL is not seen).
    assert r.xinfo_groups("s")[0]["entries-read"] == 4 and r.xinfo_groups("s")[0]["lag"] == 1


# -- bounds ----------------------------------------------------------------------------------------

def test_a_trim_past_the_delete_bound_fails_and_changes_nothing(
        server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    from shaledb.server.commands import streams

    monkeypatch.setattr(streams, "STREAM_DELETE_MAX", 50)
    r = server.client()
    pipe = r.pipeline(transaction=False)
    for i in range(1, 121):
        pipe.xadd("s", {"i": i}, id=f"{i}-0")
    pipe.execute()
    with pytest.raises(redis.ResponseError, match="more than the 50 one command may"):
        r.xtrim("s", maxlen=10, approximate=False)
    with pytest.raises(redis.ResponseError, match="more than the 50 one command may"):
        r.xadd("s", {"i": 121}, id="121-0", maxlen=10, approximate=False)
    assert r.xlen("s") == 120 and r.xinfo_stream("s")["last-generated-id"] == b"120-0"
    assert r.xtrim("s", maxlen=80, approximate=False) == 40 and r.xlen("s") == 80
    assert r.xtrim("s", maxlen=0, approximate=True, limit=50) == 0  # LIMIT: whole nodes


def test_xrange_and_xread_are_charged_to_the_output_limit_as_they_are_built(
        server_factory: Callable[..., ServerThread]) -> None:
    st = server_factory(client_output_buffer_limit=256 * KiB)
    r = st.client()
    for i in range(40):
        r.xadd("big", {"v": b"x" * (20 * KiB)}, id=f"{i + 1}-0")  # 800 KiB of entries
    r.xgroup_create("big", "g", id="0")
    for request in (("XRANGE", "big", "-", "+"), ("XREAD", "STREAMS", "big", "0"),
                    ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "big", ">")):
        raw = RawClient(st.port)
        raw.send(*request)
        with pytest.raises(ConnectionError):
            raw.read()
        raw.close()
    raw = RawClient(st.port)
    raw.send("XINFO", "STREAM", "big", "FULL", "COUNT", "0")
    with pytest.raises(ConnectionError):
        raw.read()
    raw.close()
    assert int(st.call(
        lambda: st.server.stats["client_output_buffer_limit_disconnections"])) == 4
    assert r.xlen("big") == 40 and len(r.xrange("big", count=5)) == 5


# -- blocking ----------------------------------------------------------------------------------

def test_xread_block_is_woken_by_a_committed_xadd(server: ServerThread) -> None:
    r = server.client()
    r.xadd("s", {"a": "1"}, id="1-0")
    waiter = server.client()
    call = _Call(lambda: waiter.xread({"s": "$"}, block=0))
    wait_until(lambda: _blocked(r) == 1, 10, "the XREAD to block")
    # Inside MULTI the write wakes no one until EXEC commits it.
    pipe = r.pipeline(transaction=True)
    pipe.xadd("s", {"b": "2"}, id="2-0")
    pipe.xadd("s", {"c": "3"}, id="3-0")
    pipe.execute()
    assert call.result() == [[b"s", [(b"2-0", {b"b": b"2"}), (b"3-0", {b"c": b"3"})]]]
    # A timeout answers nil; BLOCK inside MULTI answers at once.
    t0 = time.monotonic()
    assert waiter.xread({"s": "$"}, block=200) == []
    assert time.monotonic() - t0 >= 0.15
    pipe = r.pipeline(transaction=True)
    pipe.xread({"s": "$"}, block=0)
    assert pipe.execute() == [[]]
    # A blocked client that disconnects leaves no waiter behind.
    gone = server.client()
    conn = gone.connection_pool.get_connection("XREAD")
    conn.send_command("XREAD", "BLOCK", "0", "STREAMS", "s", "$")
    wait_until(lambda: _blocked(r) == 1, 10, "the second XREAD to block")
    conn.disconnect()
    wait_until(lambda: _blocked(r) == 0, 10, "the disconnected waiter to go")
    # DEL wakes no XREAD waiter; the next XADD does.
    call = _Call(lambda: waiter.xread({"s": "3-0"}, block=0))
    wait_until(lambda: _blocked(r) == 1, 10, "the third XREAD to block")
    r.delete("s")
    time.sleep(0.1)
    assert _blocked(r) == 1
    r.xadd("s", {"d": "4"}, id="4-0")
    assert call.result() == [[b"s", [(b"4-0", {b"d": b"4"})]]]


def test_xreadgroup_block_delivers_to_one_consumer_and_fails_when_the_stream_goes(
        server: ServerThread) -> None:
    r = server.client()
    r.xgroup_create("s", "g", id="$", mkstream=True)
    a, b = server.client(), server.client()
    first = _Call(lambda: a.xreadgroup("g", "alice", {"s": ">"}, block=0, count=1))
    wait_until(lambda: _blocked(r) == 1, 10, "alice to block")
    second = _Call(lambda: b.xreadgroup("g", "bob", {"s": ">"}, block=0, count=1))
    wait_until(lambda: _blocked(r) == 2, 10, "bob to block")
    r.xadd("s", {"job": "1"}, id="1-0")
    assert first.result() == [[b"s", [(b"1-0", {b"job": b"1"})]]]
    time.sleep(0.1)
    assert _blocked(r) == 1  # first blocked, first served; bob waits for the next one
    r.xadd("s", {"job": "2"}, id="2-0")
    assert second.result() == [[b"s", [(b"2-0", {b"job": b"2"})]]]
    pending = {p["message_id"]: p["consumer"]
               for p in r.xpending_range("s", "g", "-", "+", 10)}
    assert pending == {b"1-0": b"alice", b"2-0": b"bob"}
    gone = _Call(lambda: a.xreadgroup("g", "alice", {"s": ">"}, block=0))
    wait_until(lambda: _blocked(r) == 1, 10, "alice to block again")
    r.delete("s")
    with pytest.raises(redis.ResponseError, match="UNBLOCKED the stream key no longer exists"):
        gone.result()


def test_an_error_a_woken_client_gets_is_counted_in_errorstats(server: ServerThread) -> None:
    """XGROUP DESTROY answers a blocked XREADGROUP -NOGROUP; like every error reply it is
    counted in INFO errorstats (Redis' TCL stream-cgroups checks it)."""
    r = server.client()
    r.xgroup_create("s", "g", id="$", mkstream=True)
    waiter = server.client()
    call = _Call(lambda: waiter.xreadgroup("g", "c", {"s": ">"}, block=0))
    wait_until(lambda: _blocked(r) == 1, 10, "the XREADGROUP to block")
    r.xgroup_destroy("s", "g")
    with pytest.raises(redis.ResponseError, match="NOGROUP the consumer group this client was"):
        call.result()
    assert r.info("errorstats").get("errorstat_NOGROUP") == {"count": 1}
    stats = r.info("commandstats")["cmdstat_xreadgroup"]
    assert stats["calls"] == 1 and stats["failed_calls"] == 1


def test_acl_key_patterns_cover_the_keys_after_streams(server: ServerThread) -> None:
    """XREAD and XREADGROUP name their keys after STREAMS: the ACL checks those."""
    r = server.client()
    r.xadd("a1", {"f": "v"}, id="1-0")
    r.xadd("b1", {"f": "v"}, id="1-0")
    r.xgroup_create("b1", "g", id="0")
    r.acl_setuser("u", enabled=True, passwords=["+p"], keys=["a*"], commands=["+@all"])
    u = server.client(username="u", password="p")
    assert u.xread({"a1": 0}) == [[b"a1", [(b"1-0", {b"f": b"v"})]]]
    for call in (lambda: u.xread({"a1": 0, "b1": 0}), lambda: u.xread({"b1": 0}),
                 lambda: u.xreadgroup("g", "c", {"b1": ">"}),
                 lambda: u.xgroup_create("b1", "h"), lambda: u.xinfo_stream("b1")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert r.xpending("b1", "g")["pending"] == 0


def test_watch_sees_stream_changes_and_multi_runs_group_reads(r: redis.Redis,
                                                              server: ServerThread) -> None:
    r.xadd("s", {"f": "v"}, id="1-0")
    r.xgroup_create("s", "g", id="0")
    other = server.client()
    for change in (lambda: other.xadd("s", {"f": "w"}, id="3-0"),
                   lambda: other.xdel("s", "3-0"),
                   lambda: other.xadd("s", {"f": "w"}, id="4-0")):
        with r.pipeline() as pipe:
            pipe.watch("s")
            change()
            pipe.multi()
            pipe.xlen("s")
            with pytest.raises(redis.WatchError):
                pipe.execute()
    with r.pipeline() as pipe:  # XREADGROUP inside MULTI delivers and writes the PEL
        pipe.xreadgroup("g", "c", {"s": ">"})
        pipe.xpending("s", "g")
        got, pending = pipe.execute()
    assert got == [[b"s", [(b"1-0", {b"f": b"v"}), (b"4-0", {b"f": b"w"})]]]
    assert pending["pending"] == 2
    assert other.xack("s", "g", "9-0") == 0  # nothing acknowledged: nothing written


def test_a_job_result_round_trip_as_rq_2_makes_it(server: ServerThread) -> None:
    """RQ 2.x keeps job results in a stream (rq is not a dependency here, so its calls are
    made directly, as rq.results.Result makes them): a worker XADDs a result with a short
    MAXLEN and a TTL in one MULTI, the enqueuer waits with XREAD BLOCK from 0 and reads
    the latest with XREVRANGE + - COUNT 1."""
    r = server.client()
    key = "rq:results:job-1"
    waiter = server.client()
    call = _Call(lambda: waiter.xread({key: 0}, count=1, block=5_000))
    wait_until(lambda: _blocked(r) == 1, 10, "the enqueuer's XREAD to block")
    for attempt in range(12):
        with r.pipeline() as pipe:
            pipe.xadd(key, {"type": 1 if attempt < 11 else 2, "return_value": b"x" * 10,
                            "created_at": "2026-12-02T00:00:00"}, maxlen=10)
            pipe.expire(key, 500)
            pipe.execute()
    got = call.result()
    assert got[0][0] == key.encode() and got[0][1][0][1][b"type"] == b"1"
    latest = r.xrevrange(key, "+", "-", count=1)
    assert latest[0][1][b"type"] == b"2"
    assert 10 <= r.xlen(key) <= 12 and 0 < r.ttl(key) <= 500


def test_stream_commands_raise_the_keyspace_events_redis_does(server_factory,
                                                             redis7) -> None:
    # Streams landed beside keyspace notifications (branch pubsub) without calling its hook:
    # a subscriber heard nothing of XADD, XGROUP or XDEL (Redis' TCL unit/pubsub "stream
    # events test" failed).
    def run(r: redis.Redis) -> None:
        r.xgroup_create("s", "g", "$", mkstream=True)
        r.xgroup_createconsumer("s", "g", "bob")
        r.xadd("s", {"f": "v"}, id="1-1")
        r.xadd("s", {"f": "v"}, id="2-1", maxlen=1, approximate=False)  # trims too
        r.xreadgroup("g", "alice", {"s": ">"})  # creates alice
        r.xclaim("s", "g", "mike", 0, ["2-1"])  # creates mike
        r.xgroup_setid("s", "g", "0")
        r.xgroup_delconsumer("s", "g", "alice")
        r.xgroup_destroy("s", "g")
        r.xtrim("s", maxlen=5)  # nothing to trim: no event
        r.xdel("s", "2-1")
        r.xdel("s", "9-9")  # nothing deleted: no event
        r.execute_command("XSETID", "s", "5-0")

    st = server_factory()
    ours = keyevents(st.client(), run)
    theirs = keyevents(redis7, run)
    assert ours == theirs, (ours, theirs)
    assert ("xgroup-createconsumer", "s") in ours and ("xtrim", "s") in ours
