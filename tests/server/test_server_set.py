"""Sets over the network (issue 13 section 1): every set command against a real server with
redis-py, RESP3 set replies, the algebra (SINTER/SUNION/SDIFF, their STORE and CARD
variants) on sets of any size without holding them in memory, SPOP/SRANDMEMBER, SMOVE,
SSCAN, and the O(1) removal of a whole set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from ._server_support import RawClient, ServerThread, wait_until


def _wait(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    wait_until(cond, timeout, what, 0.02)


def test_set_commands_reply_as_redis(r: redis.Redis) -> None:
    assert r.sadd("s", "a", "b", "b", "c") == 3
    assert r.sadd("s", "a", "d") == 1
    assert r.smembers("s") == {b"a", b"b", b"c", b"d"} and r.smembers("no") == set()
    assert r.scard("s") == 4 and r.scard("no") == 0
    assert r.sismember("s", "a") == 1 and r.sismember("s", "z") == 0
    assert r.smismember("s", ["a", "z", "d"]) == [1, 0, 1]
    assert r.smismember("no", ["a"]) == [0]
    assert r.srem("s", "a", "z", "a") == 1 and r.srem("no", "a") == 0
    assert r.srandmember("s") in (b"b", b"c", b"d") and r.srandmember("no") is None
    assert sorted(r.srandmember("s", 10)) == [b"b", b"c", b"d"]
    assert len(r.srandmember("s", -10)) == 10 and r.srandmember("no", 5) == []
    popped = r.spop("s")
    assert popped in (b"b", b"c", b"d") and r.scard("s") == 2
    assert r.spop("no") is None and r.spop("no", 3) == []
    assert sorted(r.spop("s", 5)) == sorted({b"b", b"c", b"d"} - {popped})
    assert r.exists("s") == 0  # popping the last members removes the key
    with pytest.raises(redis.ResponseError, match="value is out of range, must be positive"):
        r.spop("s", -1)
    r.sadd("src", "m", "n")
    r.sadd("dst", "x")
    assert r.smove("src", "dst", "m") is True and r.smove("src", "dst", "zz") is False
    assert r.smembers("src") == {b"n"} and r.smembers("dst") == {b"m", b"x"}
    assert r.smove("src", "src", "n") is True and r.smembers("src") == {b"n"}
    assert r.smove("src", "new", "n") is True and r.exists("src") == 0
    assert r.smembers("new") == {b"n"}
    r.set("str", "x")
    assert r.smove("missing", "str", "n") is False  # Redis: 0 before the destination's type
    with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
        r.smove("new", "str", "n")
    assert r.smembers("new") == {b"n"}


def test_set_algebra_and_store(r: redis.Redis) -> None:
    r.sadd("a", *range(0, 100))
    r.sadd("b", *range(50, 150))
    r.sadd("c", *range(0, 200, 2))
    ints = lambda s: {int(x) for x in s}  # noqa: E731
    assert ints(r.sinter("a", "b")) == set(range(50, 100))
    assert ints(r.sinter("a", "b", "c")) == set(range(50, 100, 2))
    assert r.sinter("a", "missing") == set()
    assert ints(r.sunion("a", "b", "missing")) == set(range(150))
    assert ints(r.sdiff("a", "b")) == set(range(50))
    assert ints(r.sdiff("a", "b", "c")) == set(range(1, 50, 2))
    assert r.sdiff("missing", "a") == set()
    assert r.sintercard(2, ["a", "b"]) == 50 and r.sintercard(2, ["a", "b"], limit=7) == 7
    assert r.sintercard(3, ["a", "b", "missing"]) == 0
    with pytest.raises(redis.ResponseError, match="numkeys should be greater than 0"):
        r.execute_command("SINTERCARD", 0, "a")
    with pytest.raises(redis.ResponseError, match="can't be greater than number of args"):
        r.execute_command("SINTERCARD", 3, "a", "b")
    with pytest.raises(redis.ResponseError, match="LIMIT can't be negative"):
        r.execute_command("SINTERCARD", 1, "a", "LIMIT", -1)
    r.set("str", "x")
    assert r.sinterstore("str", ["a", "b"]) == 50 and r.type("str") == b"set"  # overwritten
    assert r.sunionstore("u", ["a", "b"]) == 150 and r.scard("u") == 150
    assert r.sdiffstore("a", ["a", "b"]) == 50 and ints(r.smembers("a")) == set(range(50))
    assert r.sinterstore("u", ["a", "missing"]) == 0 and r.exists("u") == 0
    with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
        r.sunion("a", "str2") if r.hset("str2", "f", "v") else None


def test_resp3_set_replies(server: ServerThread) -> None:
    raw = RawClient(server.port)
    raw("HELLO", "3")
    raw("SADD", "s", "a", "b")
    for cmd in (("SMEMBERS", "s"), ("SUNION", "s"), ("SPOP", "s", "1")):
        raw.send(*cmd)
        head = raw.sock.recv(4)
        assert head[:1] == b"~", (cmd, head)
        raw.sock.recv(1000)
    raw.close()


def test_set_algebra_streams_large_sets_and_spop_of_all_is_o1(server: ServerThread) -> None:
    r = server.client()
    n = 30_000
    pipe = r.pipeline(transaction=False)
    for i in range(0, n, 1000):
        pipe.sadd("big", *[f"m{j:06d}" for j in range(i, i + 1000)])
        pipe.sadd("odd", *[f"m{j:06d}" for j in range(i + 1, i + 1000, 2)])
    pipe.execute()
    assert r.scard("big") == n and r.sintercard(2, ["big", "odd"]) == n // 2
    assert len(r.sdiff("big", "odd")) == n // 2
    # One pipeline, served in one event-loop turn: the purger (which starts deleting the
    # members right after) cannot write in between.
    pipe = r.pipeline(transaction=False)
    pipe.info("shaledb")
    pipe.spop("big", n)
    pipe.info("shaledb")
    before, popped, after = pipe.execute()
    assert len(popped) == n
    assert after["wal_bytes_written"] - before["wal_bytes_written"] < 1024
    assert r.exists("big") == 0
    _wait(lambda: r.info("shaledb")["member_garbage_pending"] == 0, what="purger")


def test_sscan(r: redis.Redis) -> None:
    r.sadd("s", *[f"m{i}" for i in range(500)])
    seen: list[bytes] = []
    cursor = 0
    while True:
        cursor, items = r.sscan("s", cursor, count=50)
        seen += items
        if cursor == 0:
            break
    assert len(seen) == len(set(seen)) == 500
    assert r.sscan("s", 0, match="m1?", count=1000) == (0, [f"m1{i}".encode() for i in range(10)])
    assert r.sscan("none", 0) == (0, [])


def test_smove_to_a_set_holding_the_member_does_not_touch_it(server: ServerThread) -> None:
    """Redis' 'SMOVE only notify dstset when the addition is successful': a WATCH on the
    destination survives a SMOVE that adds nothing to it."""
    r = server.client()
    other = server.client()
    r.sadd("src", "a", "b")
    r.sadd("dst", "a")
    with r.pipeline() as p:
        p.watch("dst")
        p.multi()
        p.sadd("dst", "c")
        assert other.smove("src", "dst", "a") is True
        assert p.execute() == [1]
    assert r.smembers("dst") == {b"a", b"c"} and r.smembers("src") == {b"b"}
