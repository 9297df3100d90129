"""Keys across types over the network (issue 13 section 1): DUMP/RESTORE in Redis' RDB
value format (checked both ways against a real redis-server 7 when installed), SORT and
SORT_RO, OBJECT, and TYPE/RENAME/COPY/MOVE for every type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from shaledb.server.commands import dump as dump_module
from shaledb.server.commands import sort as sort_module
from shaledb.server.keyspace import rdb

from ._server_support import real_redis


def _fill(c: redis.Redis) -> None:
    c.set("s-short", "hello")
    c.set("s-int", "12345")
    c.set("s-neg", "-7")
    c.set("s-big-int", "9999999999")
    c.set("s-long", "abc" * 1000)  # LZF-compressed in Redis' DUMP
    c.set("s-chunked", "xyz" * 100_000)  # a chunked string here
    c.rpush("l-small", "a", "b", "1", "-300", "70000", "x" * 100)
    c.rpush("l-big", *[str(i) * (i % 7) for i in range(3000)])
    c.sadd("set-ints", 1, 2, 3, -5)  # an intset in Redis
    c.sadd("set-strs", "a", "b", "c")
    c.sadd("set-big", *range(1000))
    c.hset("h-small", mapping={"a": "1", "b": "hello", "c": "-20000"})  # a listpack
    c.hset("h-big", mapping={f"f{i}": "v" * i for i in range(600)})


def _content(c: redis.Redis, key: str) -> Any:
    kind = c.type(key)
    if kind == b"string":
        return kind, c.get(key)
    if kind == b"list":
        return kind, c.lrange(key, 0, -1)
    if kind == b"set":
        return kind, sorted(c.smembers(key))
    return kind, sorted(c.hgetall(key).items())


_KEYS = ["s-short", "s-int", "s-neg", "s-big-int", "s-long", "s-chunked", "l-small", "l-big",
         "set-ints", "set-strs", "set-big", "h-small", "h-big"]


def test_dump_restore_round_trips_with_a_real_redis(r: redis.Redis, tmp_path: Path) -> None:
    """Every type dumped by Redis 7 restores here with the same content, and every type
    dumped here restores in Redis 7."""
    with real_redis(tmp_path) as real:
        _fill(real)
        _fill(r)
        for key in _KEYS:
            theirs, ours = real.dump(key), r.dump(key)
            assert theirs is not None and ours is not None
            assert r.restore("from-redis:" + key, 0, theirs) == b"OK"
            assert _content(r, "from-redis:" + key) == _content(real, key), key
            assert real.restore("from-shaledb:" + key, 0, ours) == b"OK"
            assert _content(real, "from-shaledb:" + key) == _content(r, key), key
        # TTLs travel as RESTORE arguments, both ways.
        r.restore("ttl", 5000, real.dump("h-small"))
        assert 4000 < r.pttl("ttl") <= 5000


def test_dump_payload_bytes_and_checksum(r: redis.Redis) -> None:
    assert rdb.crc64(b"123456789") == 0xE9C6D914C4B8D9CA  # Redis' crc64 test vector
    r.set("k", "hi")
    payload = r.dump("k")
    body = b"\x00\x02hi" + b"\x0a\x00"
    assert payload == body + rdb.crc64(body).to_bytes(8, "little")
    r.rpush("l", "a")
    assert r.dump("l")[:4] == b"\x01\x01\x01a"  # the plain list type
    assert r.dump("missing") is None


def test_restore_options_and_errors_are_redis(r: redis.Redis) -> None:
    r.set("src", "v")
    payload = r.dump("src")
    with pytest.raises(redis.ResponseError, match="^BUSYKEY Target key name already exists"):
        r.restore("src", 0, payload)
    with pytest.raises(redis.ResponseError, match="DUMP payload version or checksum are wrong"):
        r.restore("x", 0, payload[:-1] + bytes((payload[-1] ^ 1,)))
    newer = b"\x00\x01v" + (11).to_bytes(2, "little")
    with pytest.raises(redis.ResponseError, match="DUMP payload version or checksum are wrong"):
        r.restore("x", 0, newer + rdb.crc64(newer).to_bytes(8, "little"))
    bad = b"\x63\x01v" + (10).to_bytes(2, "little")  # no such type
    with pytest.raises(redis.ResponseError, match="Bad data format"):
        r.restore("x", 0, bad + rdb.crc64(bad).to_bytes(8, "little"))
    zset = b"\x05\x01\x01a" + bytes(8) + (10).to_bytes(2, "little")
    # Sorted sets restore now (branch sortdump); a module value still cannot.
    assert r.restore("zx", 0, zset + rdb.crc64(zset).to_bytes(8, "little")) == b"OK"
    assert r.zrange("zx", 0, -1, withscores=True) == [(b"a", 0.0)]
    module = b"\x07\x01" + (10).to_bytes(2, "little")
    with pytest.raises(redis.ResponseError, match="module value"):
        r.restore("x", 0, module + rdb.crc64(module).to_bytes(8, "little"))
    with pytest.raises(redis.ResponseError, match="Invalid TTL value"):
        r.restore("x", -1, payload)
    with pytest.raises(redis.ResponseError, match="Invalid FREQ value"):
        r.execute_command("RESTORE", "x", 0, payload, "FREQ", 256)
    with pytest.raises(redis.ResponseError, match="Invalid IDLETIME value"):
        r.execute_command("RESTORE", "x", 0, payload, "IDLETIME", -1)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("RESTORE", "x", 0, payload, "IDLETIME", 1, "FREQ", 1)
    assert r.exists("x") == 0
    r.sadd("set", "m")
    assert r.restore("set", 0, payload, replace=True) == b"OK" and r.get("set") == b"v"
    assert r.restore("gone", 1, payload, absttl=True) == b"OK" and r.exists("gone") == 0
    assert r.execute_command("RESTORE", "idle", 0, payload, "IDLETIME", 10) == b"OK"
    assert r.object("idletime", "idle") == 0 and r.object("refcount", "idle") == 1
    with pytest.raises(redis.ResponseError, match="An LFU maxmemory policy is not selected"):
        r.object("freq", "idle")


def test_dump_and_restore_payloads_are_bounded(
        r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checksum is computed on the event loop: payloads over PAYLOAD_MAX are refused
    before any checksum work (made small here to test it cheaply)."""
    monkeypatch.setattr(dump_module, "PAYLOAD_MAX", 1000)
    r.set("fits", "x" * 900)
    payload = r.dump("fits")
    r.set("big", "x" * 1001)
    with pytest.raises(redis.ResponseError, match="payload would be larger than 1000 bytes"):
        r.dump("big")
    r.rpush("list", *["y" * 100] * 11)
    with pytest.raises(redis.ResponseError, match="payload would be larger than 1000 bytes"):
        r.dump("list")
    with pytest.raises(redis.ResponseError, match="payload is larger than 1000 bytes"):
        r.restore("new", 0, payload + b"z" * 200)
    assert r.restore("new", 0, payload) == b"OK" and r.strlen("new") == 900


def test_sort_and_sort_ro(r: redis.Redis) -> None:
    r.rpush("l", 3, 1, 2, 10, "1.5", -4)
    assert r.sort("l") == [b"-4", b"1", b"1.5", b"2", b"3", b"10"]
    assert r.sort("l", desc=True, start=1, num=2) == [b"3", b"2"]
    assert r.sort("l", alpha=True) == [b"-4", b"1", b"1.5", b"10", b"2", b"3"]
    for i, w in ((3, 1), (1, 3), (2, 2), (10, 0)):
        r.set(f"w_{i}", w)
        r.hset(f"h_{i}", "name", f"n{i}")
    # Missing BY values count as 0; ties by the element's bytes, as Redis.
    assert r.sort("l", by="w_*") == [b"-4", b"1.5", b"10", b"3", b"2", b"1"]
    assert r.sort("l", by="nosort") == [b"3", b"1", b"2", b"10", b"1.5", b"-4"]
    assert r.sort("l", by="w_*", get=["#", "h_*->name"], start=2, num=2) == [
        b"10", b"n10", b"3", b"n3"]
    assert r.execute_command("SORT_RO", "l", "BY", "nosort", "LIMIT", 1, 2) == [b"1", b"2"]
    assert r.sort("l", get="h_*->name", store="dst") == 6
    assert r.lrange("dst", 0, -1) == [b"", b"n1", b"", b"n2", b"n3", b"n10"]
    r.sadd("s", "b", "a", "c")
    assert r.sort("s", alpha=True, desc=True) == [b"c", b"b", b"a"]
    assert r.sort("missing") == [] and r.sort("missing", store="dst") == 0
    assert r.exists("dst") == 0
    with pytest.raises(redis.ResponseError, match="One or more scores can't be converted"):
        r.sort("s")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SORT_RO", "l", "STORE", "x")
    r.set("str", "x")
    r.hset("hash", "f", "v")
    for key in ("str", "hash"):
        with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
            r.sort(key)
    # The STORE destination is a key (ACL checks it; COMMAND GETKEYS shows it).
    assert r.command_getkeys("SORT", "abc", "STORE", "bad", "GET", "store", "STORE",
                             "def") == ["abc", "def"]
    assert r.command_getkeys("SORT_RO", "abc") == ["abc"]
    with pytest.raises(redis.ResponseError, match="Invalid command specified"):
        r.command_getkeys("NOSUCH", "abc")


def test_sort_by_and_get_need_access_to_all_keys(server: Any, r: redis.Redis) -> None:
    r.rpush("l", 2, 1)
    r.acl_setuser("some", enabled=True, passwords=["+pw"], keys=["l*"], commands=["+@all"])
    c = server.client(username="some", password="pw")
    assert c.sort("l") == [b"1", b"2"] and c.sort("l", by="nosort") == [b"2", b"1"]
    with pytest.raises(redis.ResponseError, match="BY option of SORT denied due to insuff"):
        c.sort("l", by="w_*")
    with pytest.raises(redis.ResponseError, match="GET option of SORT denied due to insuff"):
        c.sort("l", get="#")
    assert r.sort("l", by="w_*", get="#") == [b"1", b"2"]
    c.close()


def test_sort_is_bounded(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sort_module, "SORT_MAX_ELEMENTS", 100)
    r.rpush("l", *range(101))
    with pytest.raises(redis.ResponseError, match="SORT would hold more than 100 elements"):
        r.sort("l")
    # No sorting reads only the LIMIT range, whatever the list's size.
    assert r.sort("l", by="nosort", start=99, num=5) == [b"99", b"100"]
    monkeypatch.setattr(sort_module, "SORT_MAX_BYTES", 50)
    r.rpush("m", *["x" * 10] * 6)
    with pytest.raises(redis.ResponseError, match="more than 50 bytes"):
        r.sort("m", alpha=True)


def test_type_rename_copy_move_on_every_type(r: redis.Redis) -> None:
    r.set("str", "v")
    r.rpush("list", "a", "b")
    r.sadd("set", "m")
    r.hset("hash", "f", "v")
    r.pfadd("hll", "x")
    r.setbit("bits", 9, 1)
    for key, kind in (("str", b"string"), ("list", b"list"), ("set", b"set"),
                      ("hash", b"hash"), ("hll", b"string"), ("bits", b"string")):
        assert r.type(key) == kind
        assert r.copy(key, key + "-copy") is True and r.type(key + "-copy") == kind
        assert r.rename(key + "-copy", key + "-renamed") is True
        assert r.move(key + "-renamed", 1) is True
        r.execute_command("SELECT", 1)
        assert r.type(key + "-renamed") == kind
        r.execute_command("SELECT", 0)
    assert r.pfcount("hll") == 1 and r.getbit("bits", 9) == 1
    assert r.object("encoding", "list") == b"quicklist"


def _lzf_run_of(size: int) -> bytes:
    """LZF for ``size`` bytes of b"x": one literal, then back-references of distance 1."""
    comp = bytearray(b"\x00x")
    produced = 1
    while produced < size:
        run = min(264, size - produced)
        if run < 3:
            comp += bytes([run - 1]) + b"x" * run
        elif run - 2 >= 7:
            comp += bytes([7 << 5, run - 2 - 7, 0])
        else:
            comp += bytes([(run - 2) << 5, 0])
        produced += run
    return bytes(comp)


def _lzf_list_payload(n: int, size: int) -> bytes:
    from shaledb.server.keyspace.rdb import crc64

    def length(v: int) -> bytes:
        return b"\x80" + v.to_bytes(4, "big")

    c = _lzf_run_of(size)
    item = b"\xc3" + length(len(c)) + length(size) + c
    body = b"\x01" + length(n) + item * n + (10).to_bytes(2, "little")
    return body + crc64(body).to_bytes(8, "little")


def test_restore_bounds_what_a_payload_expands_to_in_total(server_factory) -> None:
    # Review: each LZF string was bounded by proto-max-bulk-len, the payload's total was not:
    # a 1.1 MB payload restored a list of 3 x 33 MB strings (a 32 MB one could name 2.8 GB),
    # decoded by a byte-at-a-time Python loop. Now the total is bounded by proto-max-bulk-len.
    st = server_factory(proto_max_bulk_len=1 << 20)
    r = st.client()
    ok = _lzf_list_payload(3, 300_000)  # 900 KB in all: within the 1 MiB
    assert r.restore("fits", 0, ok) == b"OK"
    assert r.llen("fits") == 3 and r.lindex("fits", 2) == b"x" * 300_000
    bomb = _lzf_list_payload(3, 600_000)  # each within the limit, 1.8 MB in all
    assert len(bomb) < 25_000
    with pytest.raises(redis.ResponseError, match="expands past proto-max-bulk-len"):
        r.restore("bomb", 0, bomb)
    assert r.exists("bomb") == 0
