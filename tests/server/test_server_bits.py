"""Bitmaps, BITFIELD, LCS and HyperLogLog over the network (issue 13 section 1): Redis 7's
replies and errors, per-chunk work on large strings, the limits, and Redis' own HLL bytes
(checked against a real redis-server when one is installed)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import pure_only
from shaledb.server.commands import bits
from shaledb.server.keyspace.keyspace import KeyspaceTxn

from ._server_support import ServerThread, keyevents, real_redis


def test_setbit_getbit_bitcount_bitpos_reply_as_redis(r: redis.Redis) -> None:
    assert r.setbit("b", 7, 1) == 0 and r.get("b") == b"\x01"
    assert r.setbit("b", 7, 1) == 1 and r.setbit("b", 0, 1) == 0
    assert r.getbit("b", 0) == 1 and r.getbit("b", 1) == 0 and r.getbit("b", 1000) == 0
    assert r.getbit("missing", 3) == 0
    r.set("s", "foobar")
    assert r.bitcount("s") == 26 and r.bitcount("s", 0, 0) == 4 and r.bitcount("s", 1, 1) == 6
    assert r.execute_command("BITCOUNT", "s", 5, 30, "BIT") == 17
    assert r.execute_command("BITCOUNT", "s", -2, -1) == 7 and r.bitcount("missing") == 0
    r.set("p", b"\xff\xf0\x00")
    assert r.bitpos("p", 0) == 12 and r.bitpos("p", 1, 2) == -1
    assert r.bitpos("p", 0, 0, 0) == -1  # an explicit end: no implied zero padding
    r.set("ones", b"\xff\xff")
    assert r.bitpos("ones", 0) == 16 and r.bitpos("missing", 0) == 0
    assert r.execute_command("BITPOS", "p", 1, 7, 15, "BIT") == 7
    with pytest.raises(redis.ResponseError, match="bit offset is not an integer"):
        r.setbit("b", -1, 1)
    with pytest.raises(redis.ResponseError, match="bit is not an integer or out of range"):
        r.execute_command("SETBIT", "b", 1, 2)
    with pytest.raises(redis.ResponseError, match="The bit argument must be 1 or 0"):
        r.execute_command("BITPOS", "p", 2)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("BITCOUNT", "s", 0)
    r.hset("h", "f", "v")
    with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
        r.setbit("h", 1, 1)


def test_bitop_and_or_xor_not(r: redis.Redis) -> None:
    r.set("a", b"\x0f\xf0")
    r.set("b", b"\xff")
    assert r.bitop("AND", "d", "a", "b") == 2 and r.get("d") == b"\x0f\x00"
    assert r.bitop("OR", "d", "a", "b", "missing") == 2 and r.get("d") == b"\xff\xf0"
    assert r.bitop("XOR", "d", "a", "b") == 2 and r.get("d") == b"\xf0\xf0"
    assert r.bitop("NOT", "d", "a") == 2 and r.get("d") == b"\xf0\x0f"
    assert r.bitop("AND", "d", "missing") == 0 and r.exists("d") == 0
    with pytest.raises(redis.ResponseError, match="BITOP NOT must be called with a single"):
        r.bitop("NOT", "d", "a", "b")


def test_bitfield_types_overflow_and_ro(r: redis.Redis) -> None:
    assert r.execute_command("BITFIELD", "f", "SET", "u8", 0, 255, "GET", "u8", 0) == [0, 255]
    assert r.execute_command("BITFIELD", "f", "INCRBY", "u8", 0, 10) == [9]  # wraps
    assert r.execute_command("BITFIELD", "f", "OVERFLOW", "SAT", "INCRBY", "u8", 0, 1000,
                             "OVERFLOW", "FAIL", "INCRBY", "u8", 0, 1) == [255, None]
    assert r.execute_command("BITFIELD", "f", "SET", "i8", "#1", -128,
                             "INCRBY", "i8", "#1", -1) == [0, 127]
    assert r.execute_command("BITFIELD", "g", "OVERFLOW", "FAIL", "SET", "u2", 100, 9) == [None]
    assert r.strlen("g") == 13  # padded to the farthest write first, as Redis
    assert r.execute_command("BITFIELD_RO", "f", "GET", "i64", 0) == [
        int.from_bytes(b"\xff\x7f" + bytes(6), "big", signed=True)]
    with pytest.raises(redis.ResponseError, match="BITFIELD_RO only supports the GET"):
        r.execute_command("BITFIELD_RO", "f", "SET", "u8", 0, 1)
    with pytest.raises(redis.ResponseError, match="Invalid bitfield type"):
        r.execute_command("BITFIELD", "f", "GET", "u64", 0)
    with pytest.raises(redis.ResponseError, match="Invalid OVERFLOW type"):
        r.execute_command("BITFIELD", "f", "OVERFLOW", "X")


def test_bit_offsets_past_the_string_limit_are_refused(server_factory: Any) -> None:
    st = server_factory(proto_max_bulk_len=1 << 20)
    c = st.client()
    for off in (1 << 32, 8 << 20):  # Redis' 512 MiB limit; this server's 1 MiB one
        with pytest.raises(redis.ResponseError, match="bit offset is not an integer"):
            c.setbit("k", off, 1)
        with pytest.raises(redis.ResponseError, match="bit offset is not an integer"):
            c.execute_command("BITFIELD", "k", "SET", "u8", off, 1)
    assert c.exists("k") == 0
    assert c.setbit("k", (8 << 20) - 1, 1) == 0 and c.strlen("k") == 1 << 20


@pure_only
def test_setbit_on_a_chunked_string_works_on_one_chunk(
        server: ServerThread, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SETBIT or GETBIT deep inside a 2 MiB string reads and rewrites one 64 KiB chunk,
    and BITCOUNT walks it a chunk at a time (documented in commands/bits.py)."""
    r.setrange("big", (2 << 20) - 1, b"\x00")
    fetched: list[int] = []
    written: list[int] = []
    fetch, put = KeyspaceTxn._fetch_chunks, KeyspaceTxn._put_chunk

    def counting_fetch(self: KeyspaceTxn, ref: Any, first: int, last: int) -> list[bytes]:
        fetched.append(last - first + 1)
        return fetch(self, ref, first, last)

    def counting_put(self: KeyspaceTxn, cid: int, index: int, data: bytes) -> None:
        written.append(index)
        put(self, cid, index, data)

    monkeypatch.setattr(KeyspaceTxn, "_fetch_chunks", counting_fetch)
    monkeypatch.setattr(KeyspaceTxn, "_put_chunk", counting_put)
    offset = (1 << 20) * 8 + 3
    assert r.setbit("big", offset, 1) == 0
    assert sum(fetched) <= 2 and written == [16]
    fetched.clear()
    assert r.getbit("big", offset) == 1 and sum(fetched) == 1
    fetched.clear()
    assert r.bitcount("big") == 1 and max(fetched) == 1  # one chunk at a time
    assert r.bitpos("big", 1) == offset
    assert r.execute_command("BITFIELD", "big", "INCRBY", "u4", offset - 3, 1) == [2]
    assert r.strlen("big") == 2 << 20


def test_lcs_replies_and_its_bound(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    r.set("a", "ohmytext")
    r.set("b", "mynewtext")
    assert r.execute_command("LCS", "a", "b") == b"mytext"
    assert r.execute_command("LCS", "a", "b", "LEN") == 6
    assert r.execute_command("LCS", "a", "b", "IDX", "MINMATCHLEN", 4, "WITHMATCHLEN") == [
        b"matches", [[[4, 7], [5, 8], 4]], b"len", 6]
    assert r.execute_command("LCS", "a", "missing") == b""
    with pytest.raises(redis.ResponseError, match="If you want both the length and indexes"):
        r.execute_command("LCS", "a", "b", "LEN", "IDX")
    r.sadd("set", "x")
    with pytest.raises(redis.ResponseError, match="must contain string values"):
        r.execute_command("LCS", "a", "set")
    # Beyond the bound, Redis' refusal (here the bound is made small to test it cheaply).
    monkeypatch.setattr(bits, "LCS_MAX_CELLS", 100)
    r.set("c", "x" * 10)
    with pytest.raises(redis.ResponseError, match="Insufficient memory, transient memory"):
        r.execute_command("LCS", "c", "c")
    assert r.execute_command("LCS", "a", "a", "LEN") == 8


def test_lcs_bit_vectors_agree_with_the_plain_table() -> None:
    rnd = random.Random(5)
    for _ in range(200):
        a = bytes(rnd.choice(b"ACGT") for _ in range(rnd.randrange(30)))
        b = bytes(rnd.choice(b"ACGT") for _ in range(rnd.randrange(30)))
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = (table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1]
                               else max(table[i - 1][j], table[i][j - 1]))
        rows = bits.lcs_rows(a, b)
        full = (1 << len(b)) - 1
        for i in range(len(a) + 1):
            for j in range(len(b) + 1):
                assert ((~rows[i]) & full & ((1 << j) - 1)).bit_count() == table[i][j]
        text, _ = bits.lcs_walk(a, b, rows)
        assert len(text) == table[-1][-1]


def test_hyperloglog_commands(r: redis.Redis) -> None:
    assert r.pfadd("h") == 1 and r.pfcount("h") == 0 and r.pfadd("h") == 0
    assert r.get("h") == b"HYLL\x01\x00\x00\x00" + bytes(8) + b"\x7f\xff"
    assert r.pfadd("h", "a", "b", "c") == 1 and r.pfadd("h", "a") == 0
    assert r.pfcount("h") == 3 and r.getrange("h", 15, 15) == b"\x00"  # count cached
    assert r.pfadd("h", "d") == 1 and r.getrange("h", 15, 15) == b"\x80"  # cache stale
    r.pfadd("big", *range(5000))
    assert r.getrange("big", 4, 4) == b"\x00" and r.strlen("big") == 16 + 12288  # dense
    assert abs(r.pfcount("big") - 5000) < 100
    assert r.pfmerge("m", "h", "big") and abs(r.pfcount("m") - 5004) < 100
    assert r.pfcount("h", "big") == r.pfcount("m")
    r.set("s", "not an hll")
    with pytest.raises(redis.ResponseError, match="^WRONGTYPE Key is not a valid HyperLogLog"):
        r.pfadd("s", "x")
    r.set("bad", b"HYLL\x01\x00\x00\x00" + bytes(7) + b"\x80" + b"\x7f\xfe")
    with pytest.raises(redis.ResponseError, match="^INVALIDOBJ Corrupted HLL"):
        r.pfcount("bad")


def test_hyperloglog_bytes_match_a_real_redis(r: redis.Redis, tmp_path: Path) -> None:
    """The same PFADDs give the same bytes as Redis 7, and a value copied either way counts
    the same on the other server."""
    rnd = random.Random(7)
    with real_redis(tmp_path) as real:
        for n in (0, 3, 200, 2000, 20000):
            elements = [f"e{rnd.random()}" for _ in range(n)]
            for c in (r, real):
                c.delete("h")
                c.pfadd("h")
                for i in range(0, n, 1000):
                    c.pfadd("h", *elements[i:i + 1000])
            assert r.pfcount("h") == real.pfcount("h")
            ours, theirs = r.get("h"), real.get("h")
            assert ours == theirs, (ours, theirs)
            r.set("x", theirs)
            real.set("x", ours)
            assert r.pfcount("x") == real.pfcount("x") == real.pfcount("h")
        real.delete("a", "b")
        real.pfadd("a", *range(100))
        real.pfadd("b", *range(50, 9000))
        for key in ("a", "b"):
            r.set(key, real.get(key))
        real.pfmerge("m", "a", "b")
        r.pfmerge("m", "a", "b")
        assert r.pfcount("m") == real.pfcount("m") and r.get("m") == real.get("m")


def test_bit_hll_sort_and_restore_raise_the_keyspace_events_redis_does(server_factory,
                                                                        tmp_path) -> None:
    # These commands landed beside keyspace notifications (branch pubsub) without calling
    # its hook: a subscriber heard nothing of SETBIT, BITOP, PFADD, SORT STORE or RESTORE.
    def run(r: redis.Redis) -> None:
        r.setbit("b", 7, 1)
        r.setbit("b", 7, 1)  # unchanged: no event (Redis 7.0)
        r.bitop("OR", "d", "b")
        r.bitop("AND", "d", "nothing")  # empty result: the destination is deleted
        r.execute_command("BITFIELD", "b", "GET", "u8", "0")  # no write: no event
        r.execute_command("BITFIELD", "b", "SET", "u8", "0", "3")
        r.pfadd("h", "x")
        r.pfadd("h", "x")  # no register changed: no event
        r.pfmerge("h2", "h")
        r.rpush("l", "2", "1")
        r.sort("l", store="s")
        r.sort("missing", store="s")  # empty: the destination is deleted
        payload = r.dump("l")
        r.restore("l2", 0, payload)
        r.restore("l2", 0, payload, replace=True)

    st = server_factory()
    ours = keyevents(st.client(), run)
    with real_redis(tmp_path) as ref:
        theirs = keyevents(ref, run)
    assert ours == theirs, (ours, theirs)
    assert ("sortstore", "s") in ours and ("restore", "l2") in ours
