"""String commands over a real socket with redis-py, checked against Redis' documented
replies."""

from __future__ import annotations

import threading
import time

import pytest
import redis


def test_get_set_basic(r: redis.Redis) -> None:
    assert r.get("missing") is None
    assert r.set("k", "v") is True
    assert r.get("k") == b"v"
    assert r.set(b"bin\x00\xff", b"\x00\x01\r\n") is True
    assert r.get(b"bin\x00\xff") == b"\x00\x01\r\n"
    assert r.set("empty", "") is True
    assert r.get("empty") == b""


def test_set_nx_xx_get(r: redis.Redis) -> None:
    assert r.set("k", "1", nx=True) is True
    assert r.set("k", "2", nx=True) is None
    assert r.get("k") == b"1"
    assert r.set("other", "x", xx=True) is None
    assert r.get("other") is None
    assert r.set("k", "3", xx=True) is True
    assert r.set("k", "4", get=True) == b"3"
    assert r.set("new", "1", get=True) is None
    assert r.set("k", "5", nx=True, get=True) == b"4"  # NX failed: old value, no write
    assert r.get("k") == b"4"
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "k", "v", "NX", "XX")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "k", "v", "EX", "10", "PX", "100")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "k", "v", "BOGUS")


def test_set_expiry_options(r: redis.Redis) -> None:
    r.set("ex", "v", ex=100)
    assert 99 <= r.ttl("ex") <= 100
    r.set("px", "v", px=100_000)
    assert 99_000 < r.pttl("px") <= 100_000
    at = int(time.time()) + 500
    r.set("exat", "v", exat=at)
    assert r.expiretime("exat") == at
    pat = int(time.time() * 1000) + 500_123
    r.set("pxat", "v", pxat=pat)
    assert r.pexpiretime("pxat") == pat  # millisecond-exact
    r.set("pxat", "w", keepttl=True)
    assert r.pexpiretime("pxat") == pat
    r.set("pxat", "w")
    assert r.ttl("pxat") == -1
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
        r.set("k", "v", ex=0)
    with pytest.raises(redis.ResponseError, match="invalid expire time"):
        r.set("k", "v", px=-5)
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.execute_command("SET", "k", "v", "EX", "1.5")
    r.set("gone", "v", pxat=int(time.time() * 1000) - 10)
    assert r.get("gone") is None


def test_expiry_has_millisecond_precision(r: redis.Redis) -> None:
    r.set("k", "v", px=150)
    assert r.get("k") == b"v"
    time.sleep(0.25)
    assert r.get("k") is None
    assert r.exists("k") == 0


def test_setnx_setex_psetex(r: redis.Redis) -> None:
    assert r.setnx("k", "1") is True
    assert r.setnx("k", "2") is False
    assert r.get("k") == b"1"
    assert r.execute_command("SETEX", "e", 100, "v") is True
    assert 99 <= r.ttl("e") <= 100
    assert r.psetex("p", 100_000, "v") is True
    assert 99_000 < r.pttl("p") <= 100_000
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'setex'"):
        r.execute_command("SETEX", "e", 0, "v")


def test_mget_mset_msetnx(r: redis.Redis) -> None:
    assert r.mset({"a": "1", "b": "2"}) is True
    assert r.mget("a", "b", "c") == [b"1", b"2", None]
    assert r.msetnx({"c": "3", "a": "x"}) is False
    assert r.get("c") is None and r.get("a") == b"1"
    assert r.msetnx({"c": "3", "d": "4"}) is True
    assert r.mget("c", "d") == [b"3", b"4"]
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset'"):
        r.execute_command("MSET", "a", "1", "b")


def test_getset_getdel_getex(r: redis.Redis) -> None:
    r.set("k", "1", ex=100)
    assert r.getset("k", "2") == b"1"
    assert r.ttl("k") == -1
    assert r.getset("new", "x") is None
    assert r.getdel("k") == b"2"
    assert r.getdel("k") is None
    r.set("g", "v")
    assert r.getex("g", ex=100) == b"v"
    assert 99 <= r.ttl("g") <= 100
    assert r.getex("g", persist=True) == b"v"
    assert r.ttl("g") == -1
    assert r.getex("nothing", ex=10) is None
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("GETEX", "g", "EX", "10", "PERSIST")


def test_append_strlen_getrange_setrange(r: redis.Redis) -> None:
    assert r.append("s", "Hello") == 5
    assert r.append("s", " World") == 11
    assert r.strlen("s") == 11
    assert r.strlen("none") == 0
    assert r.getrange("s", 0, 3) == b"Hell"
    assert r.getrange("s", -3, -1) == b"rld"
    assert r.getrange("s", 0, -1) == b"Hello World"
    assert r.getrange("s", 10, 100) == b"d"
    assert r.getrange("s", 5, 2) == b""
    assert r.getrange("s", -1, -5) == b""
    assert r.getrange("none", 0, 10) == b""
    assert r.setrange("s", 6, "Redis") == 11
    assert r.get("s") == b"Hello Redis"
    assert r.setrange("pad", 3, "x") == 4
    assert r.get("pad") == b"\x00\x00\x00x"
    assert r.setrange("nope", 5, "") == 0
    assert r.exists("nope") == 0
    with pytest.raises(redis.ResponseError, match="offset is out of range"):
        r.setrange("s", -1, "x")


def test_append_keeps_ttl(r: redis.Redis) -> None:
    r.set("k", "a", ex=100)
    r.append("k", "b")
    assert 99 <= r.ttl("k") <= 100


def test_incr_family(r: redis.Redis) -> None:
    assert r.incr("n") == 1
    assert r.incrby("n", 10) == 11
    assert r.decr("n") == 10
    assert r.decrby("n", 20) == -10
    assert r.get("n") == b"-10"
    r.set("max", str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match="increment or decrement would overflow"):
        r.incr("max")
    for bad in ("abc", "1.5", " 1", "01", "+1", "-0", ""):
        r.set("bad", bad)
        with pytest.raises(redis.ResponseError, match="value is not an integer"):
            r.incr("bad")
    with pytest.raises(redis.ResponseError, match="value is not an integer"):
        r.incrby("n", "x")
    with pytest.raises(redis.ResponseError, match="decrement would overflow"):
        r.decrby("n", -(2**63))
    r.set("t", "5", ex=100)
    r.incr("t")
    assert 99 <= r.ttl("t") <= 100


def test_incrbyfloat(r: redis.Redis) -> None:
    r.set("f", "10.50")
    assert r.incrbyfloat("f", 0.1) == pytest.approx(10.6)
    assert r.get("f") == b"10.6"
    r.set("g", "5.0e3")
    assert r.incrbyfloat("g", "2.0e2") == 5200
    assert r.get("g") == b"5200"
    assert r.incrbyfloat("new", 3) == 3
    assert r.get("new") == b"3"
    r.set("s", "abc")
    with pytest.raises(redis.ResponseError, match="value is not a valid float"):
        r.incrbyfloat("s", 1)
    with pytest.raises(redis.ResponseError, match="NaN or Infinity"):
        r.incrbyfloat("f", "inf")


def test_wrong_arity_and_value_limits(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
        r.execute_command("GET")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
        r.execute_command("GET", "a", "b")
    with pytest.raises(redis.ResponseError, match="exceeds the maximum"):
        r.set(b"k" * 70_000, "v")


def test_concurrent_incr_loses_no_update(server, r: redis.Redis) -> None:
    """INCR is atomic across clients: N threads x M increments give exactly N*M."""
    threads, per_thread = 4, 300

    def work() -> None:
        c = server.client()
        for _ in range(per_thread):  # one round trip per INCR: maximal interleaving
            c.incr("counter")
        c.close()

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert r.get("counter") == str(threads * per_thread).encode()


def test_concurrent_append_and_setrange_are_atomic(server, r: redis.Redis) -> None:
    def work(tag: bytes) -> None:
        c = server.client()
        for _ in range(200):
            c.append("log", tag)
        c.close()

    ts = [threading.Thread(target=work, args=(t,)) for t in (b"a", b"b", b"c")]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    value = r.get("log")
    assert value is not None and len(value) == 600
    assert sorted(value.count(t) for t in (b"a", b"b", b"c")) == [200, 200, 200]

    # SETRANGE reads the value, patches it and writes it back: three clients patching
    # their own thirds of one key lose no byte to another's stale copy.
    def patch(n: int) -> None:
        c = server.client()
        for i in range(200):
            c.setrange("grid", n * 200 + i, b"abc"[n:n + 1])
        c.close()

    ts = [threading.Thread(target=patch, args=(n,)) for n in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert r.get("grid") == b"a" * 200 + b"b" * 200 + b"c" * 200
