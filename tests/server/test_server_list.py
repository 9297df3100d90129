"""Lists over the network (issue 13 section 1): every list command against a real server
with redis-py, the encoding's bytes, the O(1) removal of a whole list, replies charged to
the output limit, the rewrite bound, and the blocking commands (BLPOP BRPOP BLMOVE
BRPOPLPUSH BLMPOP) with threads: first blocked first served, timeouts, MULTI, disconnects,
DEL / type change / SWAPDB, and waking only at the commit of a push."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import shaledb

from ._server_support import RawClient, ServerThread, wait_until

KiB = 1024


def _wait(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    wait_until(cond, timeout, what, 0.01)


def _blocked(r: redis.Redis) -> int:
    return int(r.info("clients")["blocked_clients"])


def _members_on_disk(st: ServerThread) -> int:
    def count() -> int:
        db = st.server.db  # type: ignore[union-attr]
        return sum(1 for _ in db.range(b"\xf2", b"\xf3"))
    return int(st.call(count))


class _Call:
    """Run a (blocking) redis-py call in a thread; ``result()`` joins it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done_at = 0.0

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                self.error = exc
            self.done_at = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 10.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the blocked call never returned"
        if self.error is not None:
            raise self.error
        return self.value


def test_list_commands_reply_as_redis(r: redis.Redis) -> None:
    assert r.rpush("l", "a", "b", "c") == 3 and r.lpush("l", "y", "z") == 5
    assert r.lrange("l", 0, -1) == [b"z", b"y", b"a", b"b", b"c"]
    assert r.lrange("l", -2, 100) == [b"b", b"c"] and r.lrange("l", 3, 1) == []
    assert r.lrange("l", 9, 10) == [] and r.lrange("none", 0, -1) == []
    assert r.llen("l") == 5 and r.llen("none") == 0
    assert r.lindex("l", 0) == b"z" and r.lindex("l", -1) == b"c"
    assert r.lindex("l", 5) is None and r.lindex("none", 0) is None
    assert r.lpushx("none", "x") == 0 and r.rpushx("none", "x") == 0 and not r.exists("none")
    assert r.lpushx("l", "w") == 6 and r.rpushx("l", "d") == 7
    assert r.lset("l", 1, "Z") is True and r.lindex("l", 1) == b"Z"
    with pytest.raises(redis.ResponseError, match="index out of range"):
        r.lset("l", 7, "x")
    with pytest.raises(redis.ResponseError, match="no such key"):
        r.lset("none", 0, "x")
    # LINSERT moves the shorter side: before the head, after the tail, in the middle.
    assert r.linsert("l", "before", "a", "A") == 8
    assert r.linsert("l", "after", "b", "B") == 9
    assert r.linsert("l", "before", "w", "v") == 10 and r.linsert("l", "after", "d", "e") == 11
    assert r.lrange("l", 0, -1) == [b"v", b"w", b"Z", b"y", b"A", b"a", b"b", b"B", b"c",
                                    b"d", b"e"]
    assert r.linsert("l", "before", "nope", "x") == -1 and r.linsert("none", "after", "a",
                                                                      "x") == 0
    r.delete("q")
    r.rpush("q", "a", "x", "a", "y", "a", "z", "a")
    assert r.lrem("q", 2, "a") == 2 and r.lrange("q", 0, -1) == [b"x", b"y", b"a", b"z", b"a"]
    assert r.lrem("q", -1, "a") == 1 and r.lrange("q", 0, -1) == [b"x", b"y", b"a", b"z"]
    assert r.lrem("q", 0, "a") == 1 and r.lrange("q", 0, -1) == [b"x", b"y", b"z"]
    assert r.lrem("q", 0, "nope") == 0 and r.lrem("none", 0, "a") == 0
    r.rpush("p", "a", "b", "c", "a", "b", "c", "a")
    assert r.lpos("p", "a") == 0 and r.lpos("p", "a", rank=2) == 3
    assert r.lpos("p", "a", rank=-1) == 6 and r.lpos("p", "c", count=0) == [2, 5]
    assert r.lpos("p", "a", count=2, rank=-1) == [6, 3] and r.lpos("p", "x") is None
    assert r.lpos("p", "c", maxlen=2) is None and r.lpos("none", "a", count=1) == []
    with pytest.raises(redis.ResponseError, match="RANK can't be zero"):
        r.lpos("p", "a", rank=0)
    assert r.ltrim("p", 1, -2) is True and r.lrange("p", 0, -1) == [b"b", b"c", b"a", b"b", b"c"]
    assert r.ltrim("p", 3, 3) is True and r.lrange("p", 0, -1) == [b"b"]  # keeps fewer: copy
    assert r.ltrim("p", 5, 10) is True and not r.exists("p")
    r.rpush("m", "1", "2", "3", "4", "5")
    assert r.lpop("m") == b"1" and r.rpop("m") == b"5"
    assert r.lpop("m", 2) == [b"2", b"3"] and r.rpop("m", 0) == [] and r.lpop("m", 9) == [b"4"]
    assert not r.exists("m") and r.lpop("m") is None and r.lpop("m", 2) is None
    with pytest.raises(redis.ResponseError, match="must be positive"):
        r.lpop("m", -1)
    r.rpush("s", "a", "b", "c")
    assert r.lmove("s", "d", "LEFT", "RIGHT") == b"a" and r.rpoplpush("s", "d") == b"c"
    assert r.lrange("d", 0, -1) == [b"c", b"a"] and r.lmove("s", "s", "RIGHT", "LEFT") == b"b"
    assert r.lmove("none", "d") is None
    assert r.lmpop(2, "none", "d", direction="RIGHT", count=5) == [b"d", [b"a", b"c"]]
    assert r.lmpop(1, "d", direction="LEFT") is None
    assert r.type("s") == b"list" and r.object("encoding", "s") == b"quicklist"
    r.set("str", "x")
    for call in (lambda: r.lpush("str", "a"), lambda: r.lrange("str", 0, 1),
                 lambda: r.llen("str"), lambda: r.lmove("s", "str"),
                 lambda: r.lmpop(2, "none", "str", direction="LEFT")):
        with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
            call()
    assert r.lrange("s", 0, -1) == [b"b"]  # the failed LMOVE moved nothing
    assert r.lmove("none", "str") is None  # no source: the destination is not looked at
    with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
        r.sadd("s", "x")
    r.copy("s", "s2")
    r.rpush("s2", "c")
    assert r.lrange("s", 0, -1) == [b"b"] and r.lrange("s2", 0, -1) == [b"b", b"c"]


def test_list_records_are_the_documented_bytes(tmp_path: Path) -> None:
    """docs/format.md's example, byte for byte: a header (tag 0x04, id, size, head) and
    element records keyed by the biased 64-bit index."""
    from shaledb.server.keyspace.keyspace import Keyspace

    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        txn = ks.begin()
        coll = txn.new_list()
        txn.list_write(0, b"l", None, coll._replace(size=1), [(coll.head, b"a")])
        txn.commit()
        txn = ks.begin()
        e = txn.lookup(0, b"l")
        assert e is not None and e.coll is not None
        txn.list_write(0, b"l", e, e.coll._replace(head=e.coll.head - 1, size=2),
                       [(e.coll.head - 1, b"b")])  # LPUSH l b
        txn.commit()
        assert db.get(b"\x00l") == bytes.fromhex(
            "04 0000000000000001 0000000000000002 7FFFFFFFFFFFFFFF")
        assert db.get(bytes.fromhex("F2 0000000000000001 8000000000000000")) == b"a"
        assert db.get(bytes.fromhex("F2 0000000000000001 7FFFFFFFFFFFFFFF")) == b"b"
        assert db.get(b"\xffdbmap") == b"\x06\x10" + bytes(range(16))
        # The index range is a limit: past either end of 64 bits the write is refused.
        txn = ks.begin()
        e = txn.lookup(0, b"l")
        assert e is not None and e.coll is not None
        from shaledb.server.errors import CommandError
        with pytest.raises(CommandError, match="64-bit range"):
            txn.list_write(0, b"l", e, e.coll._replace(head=-1, size=3), [(-1, b"x")])
        with pytest.raises(CommandError, match="64-bit range"):
            txn.list_write(0, b"l", e, e.coll._replace(size=2**64), [(2**64, b"x")])
        assert not txn.dirty


def test_a_version_4_directory_is_served_and_upgraded_by_its_first_write(
        tmp_path: Path, server_factory: Callable[..., ServerThread]) -> None:
    """Server keyspace version 4 (hashes and sets, map record 0x03) has the bytes of version
    5 minus lists: served as it is; the first write records the current map version (0x05
    since sorted sets), so a version 4 server (which would leak a dropped list's elements)
    refuses it from then on."""
    from shaledb.server.keyspace.dbmap import MAP_KEY, count_key, encode_counts

    path = tmp_path / "v4"
    with shaledb.open(path) as db, db.batch() as b:
        b.put(MAP_KEY, b"\x03\x10" + bytes(range(16)))
        b.put(b"\x00plain", b"\x00hello")
        b.put(count_key(0), encode_counts(1, 0))
    st = server_factory(dir=str(path))
    r = st.client()
    assert r.get("plain") == b"hello" and r.dbsize() == 1
    assert st.call(lambda: st.server.db.get(MAP_KEY))[0] == 3  # type: ignore[union-attr]
    r.rpush("l", "a")
    assert st.call(lambda: st.server.db.get(MAP_KEY)) == (  # type: ignore[union-attr]
        b"\x06\x10" + bytes(range(16)))


def test_del_of_a_large_list_is_one_write_and_its_elements_are_reclaimed(
        server: ServerThread) -> None:
    r = server.client()
    n = 20_000
    pipe = r.pipeline(transaction=False)
    for i in range(0, n, 1000):
        pipe.rpush("big", *[b"v%d" % j for j in range(i, i + 1000)])
    pipe.execute()
    assert r.llen("big") == n and _members_on_disk(server) == n
    assert r.lindex("big", 12_345) == b"v12345" and r.lrange("big", 19_998, -1) == [
        b"v19998", b"v19999"]
    pipe = r.pipeline(transaction=False)
    pipe.info("shaledb")
    pipe.delete("big")
    pipe.info("shaledb")
    before, deleted, after = pipe.execute()
    assert deleted == 1
    written = after["wal_bytes_written"] - before["wal_bytes_written"]
    assert written < 1024, f"DEL of a {n}-element list wrote {written} bytes of WAL"
    _wait(lambda: _members_on_disk(server) == 0, what="the purger reclaiming the elements")
    # A queue: pops leave no element behind, and LTRIM deletes what it cuts.
    r.rpush("q", *range(100))
    for _ in range(60):
        r.lpop("q")
    r.ltrim("q", 0, 9)
    assert r.lrange("q", 0, -1) == [b"%d" % i for i in range(60, 70)]
    _wait(lambda: _members_on_disk(server) == 10, what="LTRIM's deletions")


def test_lrange_is_charged_to_the_output_limit_as_it_is_built(
        server_factory: Callable[..., ServerThread]) -> None:
    st = server_factory(client_output_buffer_limit=256 * KiB)
    r = st.client()
    r.rpush("big", *[b"v" * (20 * KiB)] * 40)  # 800 KiB of elements
    raw = RawClient(st.port)
    raw.send("LRANGE", "big", "0", "-1")
    with pytest.raises(ConnectionError):
        raw.read()
    raw.close()
    assert int(st.call(
        lambda: st.server.stats["client_output_buffer_limit_disconnections"])) == 1
    assert r.llen("big") == 40 and len(r.lrange("big", 0, 5)) == 6


def test_a_rewrite_larger_than_the_bound_is_refused_and_changes_nothing(
        r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from shaledb.server.commands import lists

    monkeypatch.setattr(lists, "LIST_REWRITE_MAX", 5)
    r.rpush("l", *range(20))
    with pytest.raises(redis.ResponseError, match="more than the 5 one command may"):
        r.linsert("l", "before", "10", "x")  # 10 elements on either side
    with pytest.raises(redis.ResponseError, match="more than the 5"):
        r.lrem("l", 0, "9")  # 9 or 10 elements move, whichever side
    with pytest.raises(redis.ResponseError, match="more than the 5"):
        r.ltrim("l", 4, 15)  # cuts 8, keeps 12
    assert r.lrange("l", 0, -1) == [b"%d" % i for i in range(20)]
    assert r.linsert("l", "before", "2", "x") == 21  # 2 move: within the bound
    assert r.lrem("l", -1, "17") == 1  # 2 move
    assert r.ltrim("l", 1, 17) is True  # cuts 3
    assert r.lrange("l", 0, -1) == [b"1", b"x", *[b"%d" % i for i in range(2, 17)]]


# -- blocking -------------------------------------------------------------------------------

def test_blocked_clients_are_served_first_blocked_first_served(server: ServerThread) -> None:
    r = server.client()
    calls = []
    for i in range(3):
        c = server.client()
        calls.append(_Call(lambda c=c: c.blpop(["a", "b"], 10)))
        _wait(lambda i=i: _blocked(r) == i + 1, what=f"client {i} blocked")
    r.rpush("b", "1", "2")  # one push, two elements: the first two blocked get them
    assert calls[0].result() == (b"b", b"1") and calls[1].result() == (b"b", b"2")
    assert calls[2].thread.is_alive() and _blocked(r) == 1
    r.lpush("a", "3")
    assert calls[2].result() == (b"a", b"3")
    assert _blocked(r) == 0 and not r.exists("a") and not r.exists("b")
    # BRPOP, BLMPOP, BLMOVE and BRPOPLPUSH wake the same way.
    c1, c2, c3, c4 = (server.client() for _ in range(4))
    w1 = _Call(lambda: c1.brpop(["x"], 10))
    w2 = _Call(lambda: c2.blmpop(10, 1, "x", direction="LEFT", count=2))
    w3 = _Call(lambda: c3.blmove("y", "dst", 10, "LEFT", "RIGHT"))
    w4 = _Call(lambda: c4.brpoplpush("y", "dst", 10))
    _wait(lambda: _blocked(r) == 4)
    r.rpush("x", "1", "2", "3")
    r.rpush("y", "p", "q")
    assert w1.result() == (b"x", b"3") and w2.result() == [b"x", [b"1", b"2"]]
    assert w3.result() == b"p" and w4.result() == b"q"
    assert r.lrange("dst", 0, -1) == [b"q", b"p"]


def test_blocking_commands_time_out_and_answer_nil(server: ServerThread) -> None:
    r = server.client()
    t = time.monotonic()
    assert r.blpop(["none"], 0.2) is None
    assert 0.15 < time.monotonic() - t < 5
    assert r.brpoplpush("none", "d", 0.05) is None
    assert r.blmpop(0.05, 2, "n1", "n2", direction="RIGHT") is None
    assert _blocked(r) == 0
    with pytest.raises(redis.ResponseError, match="timeout is negative"):
        r.blpop(["none"], -1)
    with pytest.raises(redis.ResponseError, match="timeout is not a float"):
        r.execute_command("BLPOP", "none", "soon")
    with pytest.raises(redis.ResponseError, match="timeout is out of range"):
        r.execute_command("BLPOP", "none", "1e300")
    # CLIENT UNBLOCK answers as a timeout, or with an error.
    c = server.client()
    cid = c.client_id()
    w = _Call(lambda: c.blpop(["none"], 0))
    _wait(lambda: _blocked(r) == 1)
    assert r.client_unblock(cid) == 1 and w.result() is None
    w = _Call(lambda: c.blpop(["none"], 0))
    _wait(lambda: _blocked(r) == 1)
    assert r.client_unblock(cid, error=True) == 1
    with pytest.raises(redis.ResponseError, match="UNBLOCKED"):
        w.result()
    assert r.client_unblock(cid) == 0


def test_blocking_commands_never_block_inside_multi(r: redis.Redis) -> None:
    p = r.pipeline(transaction=True)
    p.blpop(["none"], 0)
    p.brpoplpush("none", "d", 0)
    p.blmpop(0, 1, "none", direction="LEFT")
    p.rpush("l", "a")
    p.blpop(["l"], 0)
    assert p.execute() == [None, None, None, 1, (b"l", b"a")]


def test_a_push_wakes_only_at_its_commit(server: ServerThread) -> None:
    """A push inside MULTI wakes the blocked client at EXEC, with the transaction's final
    list (Redis' 'MULTI/EXEC is isolated from the point of view of BLPOP')."""
    r = server.client()
    c = server.client()
    w = _Call(lambda: c.blpop(["l"], 10))
    _wait(lambda: _blocked(r) == 1)
    p = r.pipeline(transaction=True)
    p.lpush("l", "a")
    p.lpush("l", "b")
    p.lpush("l", "c")
    p.execute()
    assert w.result() == (b"l", b"c") and r.lrange("l", 0, -1) == [b"b", b"a"]


def test_del_type_change_and_flush_do_not_wake_swapdb_does(server: ServerThread) -> None:
    r = server.client()
    c = server.client()
    w = _Call(lambda: c.blpop(["k"], 10))
    _wait(lambda: _blocked(r) == 1)
    p = r.pipeline(transaction=True)
    p.lpush("k", "a")
    p.delete("k")
    p.set("k", "string")
    p.execute()
    r.flushdb()
    time.sleep(0.1)
    assert w.thread.is_alive() and _blocked(r) == 1
    r.set("k", "string")  # another type: the client stays blocked (Redis 7.0)
    time.sleep(0.1)
    assert w.thread.is_alive()
    r.delete("k")
    r.select(1)
    r.rpush("k", "from db 1")
    r.swapdb(0, 1)
    assert w.result() == (b"k", b"from db 1")
    # BRPOPLPUSH onto a key of another type: the error is the reply, nothing moves.
    r.select(0)
    r.set("target", "x")
    w = _Call(lambda: c.brpoplpush("src", "target", 10))
    _wait(lambda: _blocked(r) == 1)
    r.rpush("src", "foo")
    with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
        w.result()
    assert r.lrange("src", 0, -1) == [b"foo"]


def test_a_blocked_client_that_disconnects_leaves_the_queue(server: ServerThread) -> None:
    """A blocked connection keeps reading, so its disconnect is seen at once: it leaves the
    wait queue and a later push is not popped for nobody (before, reading was paused while
    blocked, the close went unseen, INFO counted it blocked and the push was lost)."""
    r = server.client()
    raw = RawClient(server.port)
    raw.send("BLPOP", "k", "0")
    _wait(lambda: _blocked(r) == 1)
    raw.close()
    _wait(lambda: _blocked(r) == 0, timeout=5, what="the disconnect being seen")
    r.rpush("k", "kept")
    assert r.lrange("k", 0, -1) == [b"kept"]
