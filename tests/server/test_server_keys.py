"""Key commands, expiry, SCAN/KEYS, logical databases and FLUSH*, over redis-py."""

from __future__ import annotations

import time

import pytest
import redis


def test_del_unlink_exists_touch_type(r: redis.Redis) -> None:
    r.mset({"a": "1", "b": "2", "c": "3"})
    assert r.exists("a", "a", "zz") == 2
    assert r.touch("a", "b", "zz") == 2
    assert r.type("a") == b"string"
    assert r.type("zz") == b"none"
    assert r.delete("a", "zz", "a") == 1
    assert r.unlink("b", "c") == 2
    assert r.exists("a", "b", "c") == 0


def test_keys_patterns(r: redis.Redis) -> None:
    r.mset({"user:1": "a", "user:2": "b", "user:10": "c", "item:1": "d", "h[x]": "e",
            "hallo": "f", "hello": "g", "hxllo": "h"})
    assert sorted(r.keys("user:*")) == [b"user:1", b"user:10", b"user:2"]
    assert sorted(r.keys("user:?")) == [b"user:1", b"user:2"]
    assert sorted(r.keys("h[ae]llo")) == [b"hallo", b"hello"]
    assert sorted(r.keys("h[^e]llo")) == [b"hallo", b"hxllo"]
    assert sorted(r.keys("h[a-b]llo")) == [b"hallo"]
    assert r.keys("h\\[x\\]") == [b"h[x]"]
    assert len(r.keys("*")) == 8
    assert r.keys("nomatch*") == []


def test_scan_visits_every_key_once(r: redis.Redis) -> None:
    keys = {f"k{i:04d}".encode() for i in range(250)}
    r.mset({k: b"v" for k in keys})
    seen: list[bytes] = []
    cursor = 0
    rounds = 0
    while True:
        cursor, batch = r.scan(cursor, count=7)
        seen.extend(batch)
        rounds += 1
        if cursor == 0:
            break
    assert sorted(seen) == sorted(keys)
    assert rounds >= 250 // 7
    assert set(r.scan_iter(match="k00*")) == {k for k in keys if k.startswith(b"k00")}
    assert list(r.scan_iter(_type="hash")) == []
    assert len(set(r.scan_iter(_type="string"))) == 250


def test_scan_errors(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.execute_command("SCAN", "abc")
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.execute_command("SCAN", "987654321")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SCAN", "0", "COUNT", "0")


def test_rename_renamenx(r: redis.Redis) -> None:
    r.set("a", "1", ex=100)
    assert r.rename("a", "b") is True
    assert r.get("a") is None and r.get("b") == b"1"
    assert 99 <= r.ttl("b") <= 100
    with pytest.raises(redis.ResponseError, match="no such key"):
        r.rename("a", "c")
    r.set("c", "3")
    assert r.renamenx("b", "c") is False
    assert r.renamenx("b", "d") is True
    assert r.get("d") == b"1"
    assert r.rename("d", "d") is True


def test_expire_family_and_options(r: redis.Redis) -> None:
    r.set("k", "v")
    assert r.ttl("k") == -1 and r.pttl("k") == -1
    assert r.ttl("missing") == -2 and r.pttl("missing") == -2
    assert r.expiretime("missing") == -2 and r.expiretime("k") == -1
    assert r.expire("missing", 10) is False
    assert r.expire("k", 100, xx=True) is False   # no TTL yet
    assert r.expire("k", 100, nx=True) is True
    assert r.expire("k", 200, nx=True) is False
    assert r.expire("k", 50, gt=True) is False
    assert r.expire("k", 500, gt=True) is True
    assert r.expire("k", 600, lt=True) is False
    assert r.expire("k", 300, lt=True) is True
    assert 299 <= r.ttl("k") <= 300
    assert r.pexpire("k", 123_456) is True
    assert 123_000 < r.pttl("k") <= 123_456
    at = int(time.time()) + 1000
    assert r.expireat("k", at) is True
    assert r.expiretime("k") == at
    pat = int(time.time() * 1000) + 777_777
    assert r.pexpireat("k", pat) is True
    assert r.pexpiretime("k") == pat
    assert r.persist("k") is True
    assert r.persist("k") is False
    assert r.ttl("k") == -1
    r.set("p", "v")
    assert r.expire("p", 100, lt=True) is True  # no TTL counts as infinite
    r.set("q", "v")
    assert r.expire("q", 100, gt=True) is False
    with pytest.raises(redis.ResponseError, match="NX and XX, GT or LT"):
        r.execute_command("EXPIRE", "k", "10", "NX", "GT")
    with pytest.raises(redis.ResponseError, match="GT and LT"):
        r.execute_command("EXPIRE", "k", "10", "GT", "LT")
    with pytest.raises(redis.ResponseError, match="Unsupported option"):
        r.execute_command("EXPIRE", "k", "10", "YY")
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'expire'"):
        r.execute_command("EXPIRE", "k", str(2**62))
    assert r.expire("k", -1) is True  # a past time deletes
    assert r.exists("k") == 0


def test_expired_keys_disappear_from_every_read(r: redis.Redis) -> None:
    at = int(time.time() * 1000) + 150
    r.set("e1", "v", pxat=at)
    r.set("stay", "v")
    assert r.pexpiretime("e1") == at  # kept to the millisecond
    while time.time() * 1000 < at + 1:  # just past it: hidden from then on, not rounded up
        time.sleep(0.001)
    assert r.get("e1") is None
    assert r.exists("e1") == 0 and r.mget("e1", "stay") == [None, b"v"]
    assert r.pttl("e1") == -2 and r.strlen("e1") == 0
    assert r.keys("*") == [b"stay"]
    assert r.dbsize() == 1
    assert list(r.scan_iter()) == [b"stay"]
    assert r.execute_command("KRANGE", "-", "+") == [b"stay", b"v"]


def test_select_isolates_databases(server, r: redis.Redis) -> None:
    r.set("k", "db0")
    r1 = server.client(db=1)
    assert r1.get("k") is None
    r1.set("k", "db1")
    r15 = server.client(db=15)
    r15.set("other", "x")
    assert r.get("k") == b"db0"
    assert r1.get("k") == b"db1"
    assert r.dbsize() == 1 and r1.dbsize() == 1 and r15.dbsize() == 1
    assert r1.keys("*") == [b"k"]
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", "16")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.execute_command("SELECT", "x")
    assert r1.flushdb() is True
    assert r1.dbsize() == 0 and r.dbsize() == 1 and r15.dbsize() == 1
    assert r.flushall() is True
    assert r.dbsize() == 0 and r15.dbsize() == 0
    for c in (r1, r15):
        c.close()


def test_flushdb_many_keys(r: redis.Redis) -> None:
    """More keys than one flush batch."""
    pipe = r.pipeline(transaction=False)
    for i in range(0, 25_000, 1000):
        pipe.mset({f"k{j}": "v" for j in range(i, i + 1000)})
    pipe.execute()
    assert r.dbsize() == 25_000
    r.execute_command("FLUSHDB", "SYNC")
    assert r.dbsize() == 0
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("FLUSHDB", "LATER")


def test_data_survives_restart(server_factory, tmp_path) -> None:
    st = server_factory(dir=str(tmp_path / "d"))
    c = st.client()
    c.set("k", "v")
    c.set("t", "v", px=600_000)
    c.execute_command("SELECT", 3)
    c.set("k3", "x")
    c.close()
    c0 = st.client()
    expiry = c0.pexpiretime("t")
    c0.close()
    st.stop()
    st2 = server_factory(dir=str(tmp_path / "d"))
    c2 = st2.client()
    assert c2.get("k") == b"v"
    assert c2.pexpiretime("t") == expiry
    assert c2.get("k3") is None
    c2.execute_command("SELECT", 3)
    assert c2.get("k3") == b"x"
    c2.close()
