"""Hashes over the network (issue 13 section 1): every hash command against a real server
with redis-py, WRONGTYPE, the key commands on hashes, MULTI/EXEC/WATCH, the O(1) DEL with
its fields reclaimed in the background, the reply charged to the output limit as it is built,
the field length limit, HSCAN cursors, ACL categories and key patterns, and the upgrade of a
server keyspace version 3 directory."""

from __future__ import annotations

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
    wait_until(cond, timeout, what, 0.02)


def _members_on_disk(st: ServerThread) -> int:
    """Member records in the engine (live hashes' and sets' plus garbage not purged yet)."""
    def count() -> int:
        db = st.server.db  # type: ignore[union-attr]
        return sum(1 for _ in db.range(b"\xf2", b"\xf3"))
    return int(st.call(count))


def test_hash_commands_reply_as_redis(r: redis.Redis) -> None:
    assert r.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hset("h", "a", "10") == 0  # an update is not an addition
    assert r.hset("h", items=["c", "3", "a", "11"]) == 1
    assert r.hget("h", "a") == b"11" and r.hget("h", "zz") is None and r.hget("no", "a") is None
    assert r.hmget("h", ["a", "zz", "c"]) == [b"11", None, b"3"]
    assert r.hmget("no", ["a", "b"]) == [None, None]
    assert r.hgetall("h") == {b"a": b"11", b"b": b"2", b"c": b"3"}
    assert r.hgetall("no") == {}
    assert r.hkeys("h") == [b"a", b"b", b"c"] and r.hvals("h") == [b"11", b"2", b"3"]
    assert r.hlen("h") == 3 and r.hlen("no") == 0
    assert r.hexists("h", "b") is True and r.hexists("h", "zz") is False
    assert r.hstrlen("h", "a") == 2 and r.hstrlen("h", "zz") == 0
    assert r.hsetnx("h", "a", "x") == 0 and r.hsetnx("h", "d", "4") == 1
    assert r.execute_command("HMSET", "h", "e", "5") is True
    assert r.hincrby("h", "a", 5) == 16 and r.hincrby("h", "new", -3) == -3
    assert r.hincrbyfloat("h", "f", 1.5) == 1.5 and r.hincrbyfloat("h", "f", "0.25") == 1.75
    assert r.hget("h", "f") == b"1.75"
    with pytest.raises(redis.ResponseError, match="^hash value is not an integer$"):
        r.hincrby("h", "f", 1)
    with pytest.raises(redis.ResponseError, match="^hash value is not a float$"):
        r.hset("h", "s", "abc") and r.hincrbyfloat("h", "s", 1)
    r.hset("h", "big", str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match="increment or decrement would overflow"):
        r.hincrby("h", "big", 1)
    with pytest.raises(redis.ResponseError, match="value is NaN or Infinity"):
        r.hincrbyfloat("h", "f", "inf")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'hset'"):
        r.execute_command("HSET", "h", "a")
    assert r.hdel("h", "a", "a", "zz") == 1
    assert r.hdel("no", "a") == 0
    n = r.hlen("h")
    assert r.hdel("h", *r.hkeys("h")) == n
    assert r.exists("h") == 0  # the key goes with its last field, as in Redis
    # Empty field names and values are fields like any other.
    assert r.hset("e", "", "") == 1 and r.hgetall("e") == {b"": b""}


def test_hgetall_is_a_map_in_resp3_and_hrandfield_replies(server: ServerThread) -> None:
    raw = RawClient(server.port)
    assert raw("HELLO", "3")
    raw("HSET", "h", "a", "1", "b", "2")
    raw.send("HGETALL", "h")
    # RawClient parses a map too; check the RESP3 type byte on the wire instead.
    raw.sock.settimeout(5)
    data = b""
    while not data.endswith(b"2\r\n"):
        data += raw.sock.recv(100)
    assert data.startswith(b"%2\r\n")
    raw.close()
    r = server.client()
    r.hset("h", mapping={f"f{i}": str(i) for i in range(10)})
    assert r.hrandfield("h") in r.hkeys("h")
    assert r.hrandfield("no") is None and r.hrandfield("no", 3) == []
    got = r.hrandfield("h", 5)
    assert len(got) == len(set(got)) == 5
    assert sorted(r.hrandfield("h", 100)) == sorted(r.hkeys("h"))  # at most all of them
    rep = r.hrandfield("h", -30)
    assert len(rep) == 30 and set(rep) <= set(r.hkeys("h"))
    pairs = r.hrandfield("h", 3, withvalues=True)
    assert len(pairs) == 6 and all(r.hget("h", pairs[i]) == pairs[i + 1] for i in (0, 2, 4))
    with pytest.raises(redis.ResponseError, match="value is out of range"):
        r.hrandfield("h", -(2**63))
    with pytest.raises(redis.ResponseError, match="value is out of range"):
        r.hrandfield("h", -(2**62) - 1, withvalues=True)


def test_wrongtype_everywhere_and_mget_gives_nil(r: redis.Redis) -> None:
    r.set("s", "v")
    r.hset("h", "f", "v")
    r.sadd("set", "m")
    wrong = "^WRONGTYPE Operation against a key holding the wrong kind of value$"
    for call in (lambda: r.get("h"), lambda: r.append("h", "x"), lambda: r.incr("h"),
                 lambda: r.strlen("h"), lambda: r.getrange("h", 0, 1), lambda: r.getdel("h"),
                 lambda: r.set("h", "x", get=True), lambda: r.hget("s", "f"),
                 lambda: r.hset("s", "f", "v"), lambda: r.hgetall("set"), lambda: r.hlen("s"),
                 lambda: r.hscan("s", 0), lambda: r.sadd("h", "m"), lambda: r.smembers("h"),
                 lambda: r.scard("s"), lambda: r.sinter("set", "h"),
                 lambda: r.smove("set", "h", "m"), lambda: r.hincrby("set", "f", 1)):
        with pytest.raises(redis.ResponseError, match=wrong):
            call()
    assert r.mget("s", "h", "set", "none") == [b"v", None, None, None]  # as Redis
    # A failed command wrote nothing: the values are unchanged.
    assert r.get("s") == b"v" and r.hgetall("h") == {b"f": b"v"} and r.smembers("set") == {b"m"}
    # SET (without GET) replaces a hash, as in Redis.
    assert r.set("h", "now a string") is True and r.type("h") == b"string"


def test_key_commands_work_on_hashes(server: ServerThread) -> None:
    r = server.client()
    r.hset("h", mapping={"a": "1", "b": "2"})
    r.set("str", "x")
    r.sadd("set", "m")
    assert r.type("h") == b"hash" and r.type("set") == b"set" and r.type("str") == b"string"
    assert r.type("none") == b"none"
    assert r.exists("h", "set", "str", "none") == 3
    assert r.object("encoding", "h") == b"hashtable" and r.object("encoding", "set") == b"hashtable"
    assert r.object("encoding", "str") == b"embstr"
    assert r.dbsize() == 3 and r.info("keyspace")["db0"]["keys"] == 3
    assert sorted(r.keys("*")) == [b"h", b"set", b"str"]
    assert r.scan(0, _type="hash") == (0, [b"h"]) and r.scan(0, _type="set") == (0, [b"set"])
    assert r.scan(0, _type="string") == (0, [b"str"])
    assert r.randomkey() in (b"h", b"set", b"str")
    # Expiry on a hash: TTL, PERSIST, and an expired hash is gone (and counted out).
    assert r.expire("h", 100) is True and 99 <= r.ttl("h") <= 100
    assert r.persist("h") is True and r.ttl("h") == -1
    assert r.pexpire("h", 50) is True
    time.sleep(0.1)
    assert r.exists("h") == 0 and r.hgetall("h") == {} and r.hset("h", "z", "1") == 1
    assert r.hgetall("h") == {b"z": b"1"}  # a new hash: none of the expired one's fields
    # RENAME and MOVE keep the fields (the header moves); COPY copies them.
    r.hset("h", mapping={"a": "1", "b": "2"})
    assert r.rename("h", "h2") is True and r.hgetall("h2") == {b"z": b"1", b"a": b"1", b"b": b"2"}
    assert r.copy("h2", "h3") is True
    r.hset("h3", "a", "changed")
    assert r.hget("h2", "a") == b"1" and r.hget("h3", "a") == b"changed"
    assert r.move("h3", 1) is True
    r1 = server.client(db=1)
    assert r1.hget("h3", "a") == b"changed" and r1.dbsize() == 1
    assert r.renamenx("h2", "str") is False
    r.rename("h2", "str")  # RENAME over a string: the string goes, the hash stays
    assert r.type("str") == b"hash"
    assert r.copy("set", "str", replace=True) is True and r.smembers("str") == {b"m"}
    # SWAPDB and FLUSHDB.
    r.swapdb(0, 1)
    assert r.hget("h3", "a") == b"changed" and r1.type("str") == b"set"
    r.flushdb()
    assert r.dbsize() == 0 and r1.dbsize() == 2
    assert r.delete("nothing") == 0 and r1.unlink("str", "set") == 2 and r1.dbsize() == 0


def test_del_of_a_large_hash_is_one_write_and_its_fields_are_reclaimed(
        server: ServerThread) -> None:
    r = server.client()
    n = 20_000
    pipe = r.pipeline(transaction=False)
    for i in range(0, n, 1000):
        pipe.hset("big", mapping={b"f%06d" % j: b"v" for j in range(i, i + 1000)})
    pipe.execute()
    assert r.hlen("big") == n and _members_on_disk(server) == n
    # One pipeline, served in one event-loop turn: the purger (which starts deleting the
    # fields right after) cannot write in between.
    pipe = r.pipeline(transaction=False)
    pipe.info("shaledb")
    pipe.delete("big")
    pipe.info("shaledb")
    info_before, deleted, info_after = pipe.execute()
    assert deleted == 1
    written = info_after["wal_bytes_written"] - info_before["wal_bytes_written"]
    assert written < 1024, f"DEL of a {n}-field hash wrote {written} bytes of WAL"
    assert r.exists("big") == 0 and r.dbsize() == 0
    _wait(lambda: _members_on_disk(server) == 0, what="the purger reclaiming the fields")
    # The garbage record goes with the step after the last member (20,000 is a multiple
    # of the step's 2,000: that step could not know it was the last).
    _wait(lambda: r.info("shaledb")["member_garbage_pending"] == 0, what="the record")
    assert r.info("shaledb")["purged_members"] == n
    # Overwriting with SET and expiring do the same.
    r.hset("o", mapping={f"f{i}": "v" for i in range(3000)})
    r.hset("x", mapping={f"f{i}": "v" for i in range(3000)})
    r.set("o", "string now")
    r.pexpire("x", 1)
    _wait(lambda: _members_on_disk(server) == 0, what="overwritten and expired fields")
    assert r.get("o") == b"string now" and r.dbsize() == 1
    # And FLUSHDB: the purge of the flushed id drops the headers and leaves garbage records.
    r.hset("f", mapping={f"f{i}": "v" for i in range(3000)})
    r.sadd("g", *range(3000))
    r.flushdb()
    assert r.dbsize() == 0
    _wait(lambda: _members_on_disk(server) == 0, what="flushed fields")
    _wait(lambda: r.info("shaledb")["member_garbage_pending"] == 0, what="no garbage left")


def test_multi_exec_and_watch_see_hash_changes(server: ServerThread) -> None:
    r = server.client()
    other = server.client()
    r.hset("h", "a", "1")
    with r.pipeline() as p:
        p.watch("h")
        other.hset("h", "b", "2")  # a change to another field still fails the EXEC
        p.multi()
        p.hset("h", "a", "2")
        with pytest.raises(redis.WatchError):
            p.execute()
    assert r.hget("h", "a") == b"1"
    with r.pipeline() as p:
        p.watch("h")
        p.multi()
        p.hset("h", "a", "3")
        p.hdel("h", "b")
        p.hincrby("h", "n", 5)
        assert p.execute() == [0, 1, 5]
    assert r.hgetall("h") == {b"a": b"3", b"n": b"5"}
    # A command that fails inside EXEC takes back only its own writes.
    with r.pipeline() as p:
        p.hset("h", "c", "x")
        p.hincrby("h", "a", 1)
        p.hincrby("h", "c", 1)  # not an integer: fails
        p.sadd("h", "m")  # WRONGTYPE
        res = p.execute(raise_on_error=False)
    assert res[:2] == [1, 4] and all(isinstance(x, redis.ResponseError) for x in res[2:])
    assert r.hgetall("h") == {b"a": b"4", b"n": b"5", b"c": b"x"}
    # Created, read and deleted in one EXEC: nothing of it reaches the disk.
    with r.pipeline() as p:
        p.hset("tmp", mapping={"a": "1", "b": "2"})
        p.hgetall("tmp")
        p.delete("tmp")
        assert p.execute() == [2, {b"a": b"1", b"b": b"2"}, 1]
    assert _members_on_disk(server) == 3


def test_hgetall_is_charged_to_the_output_limit_as_it_is_built(
        server_factory: Callable[..., ServerThread]) -> None:
    st = server_factory(client_output_buffer_limit=256 * KiB)
    r = st.client()
    for i in range(40):
        r.hset("big", f"f{i}", b"v" * (20 * KiB))  # 800 KiB of values
    raw = RawClient(st.port)
    raw.send("HGETALL", "big")
    with pytest.raises(ConnectionError):
        raw.read()
    raw.close()
    assert int(st.call(lambda: st.server.stats["client_output_buffer_limit_disconnections"])) == 1
    assert r.hlen("big") == 40  # everyone else is served as before
    assert len(r.hkeys("big")) == 40  # a reply under the limit is fine


def test_field_length_limit(r: redis.Redis) -> None:
    from shaledb.server.keyspace.values import MAX_MEMBER

    ok = b"f" * MAX_MEMBER
    assert r.hset("h", ok, "v") == 1 and r.hget("h", ok) == b"v"
    with pytest.raises(redis.ResponseError, match=f"exceeds the maximum of {MAX_MEMBER}"):
        r.hset("h", ok + b"x", "v")
    with pytest.raises(redis.ResponseError, match=f"exceeds the maximum of {MAX_MEMBER}"):
        r.sadd("s", ok + b"x")
    assert r.hget("h", ok + b"x") is None and r.hexists("h", ok + b"x") is False
    assert r.hdel("h", ok + b"x") == 0 and r.hlen("h") == 1


def test_hscan_walks_every_field_once_with_bounded_calls(r: redis.Redis) -> None:
    r.hset("h", mapping={f"f{i:04d}": str(i) for i in range(1000)})
    seen: dict[bytes, bytes] = {}
    cursor, calls = 0, 0
    while True:
        cursor, items = r.hscan("h", cursor, count=37)
        assert len(items) <= 37
        for k, v in items.items():
            assert k not in seen
            seen[k] = v
        calls += 1
        if cursor == 0:
            break
    assert len(seen) == 1000 and calls >= 27 and seen[b"f0007"] == b"7"
    assert r.hscan("h", 0, match="f000*", count=1000) == (
        0, {f"f000{i}".encode(): str(i).encode() for i in range(10)})
    assert r.hscan("none", 0) == (0, {})
    cursor, _ = r.hscan("h", 0, count=10)
    r.hset("h2", "a", "1")
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.hscan("h2", cursor)  # a cursor of another key
    scan_cursor, _ = r.scan(0, count=1)
    r.set("more", "x")
    scan_cursor, _ = r.scan(0, count=1)
    assert scan_cursor != 0
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.hscan("h", scan_cursor)  # a SCAN cursor is not an HSCAN one
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.scan(cursor)


def test_acl_categories_and_key_patterns_of_hash_and_set_commands(
        server: ServerThread) -> None:
    admin = server.client()
    raw = RawClient(server.port)

    def info(name: str) -> tuple[set[bytes], set[bytes]]:
        entry = raw("COMMAND", "INFO", name)[0]
        return set(entry[2]), set(entry[6])

    # As Redis 7's COMMAND INFO says.
    assert info("hset") == ({b"write", b"denyoom", b"fast"}, {b"@write", b"@hash", b"@fast"})
    assert info("hgetall") == ({b"readonly"}, {b"@read", b"@hash", b"@slow"})
    assert info("hdel") == ({b"write", b"fast"}, {b"@write", b"@hash", b"@fast"})
    assert info("smembers") == ({b"readonly"}, {b"@read", b"@set", b"@slow"})
    assert info("sadd") == ({b"write", b"denyoom", b"fast"}, {b"@write", b"@set", b"@fast"})
    assert info("sunionstore") == ({b"write", b"denyoom"}, {b"@write", b"@set", b"@slow"})
    assert info("sintercard")[0] == {b"readonly", b"movablekeys"}
    raw.close()
    admin.acl_setuser("hashes", enabled=True, passwords=["+pw"], keys=["h*"],
                      commands=["+@hash", "+@set"])
    u = server.client(username="hashes", password="pw")
    assert u.hset("h1", "a", "1") == 1
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.hset("other", "a", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.sintercard(2, ["h1", "other"])  # the keys SINTERCARD names are checked
    assert u.sintercard(1, ["h1x"]) == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.get("h1")  # not in @hash or @set
    admin.acl_setuser("readonly", enabled=True, passwords=["+pw"], keys=["*"],
                      commands=["+@read"])
    ro = server.client(username="readonly", password="pw")
    assert ro.hget("h1", "a") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        ro.hset("h1", "a", "2")


def test_hashes_and_sets_survive_a_restart(server_factory: Callable[..., ServerThread],
                                           tmp_path: Path) -> None:
    path = tmp_path / "db"
    st = server_factory(dir=str(path))
    r = st.client()
    r.hset("h", mapping={"a": "1", "b": "2"})
    r.sadd("s", "x", "y")
    r.hset("gone", "a", "1")
    r.delete("gone")
    r.expire("s", 1000)
    st.stop()
    st2 = server_factory(dir=str(path))
    r2 = st2.client()
    assert r2.hgetall("h") == {b"a": b"1", b"b": b"2"} and r2.smembers("s") == {b"x", b"y"}
    assert r2.dbsize() == 2 and r2.info("keyspace")["db0"]["expires"] == 1
    assert r2.hset("h", "c", "3") == 1  # new ids never reuse one in use
    r2.sadd("t", "z")
    assert r2.smembers("s") == {b"x", b"y"} and r2.hlen("h") == 3


def test_a_version_3_directory_is_read_and_upgraded_by_its_first_write(
        server_factory: Callable[..., ServerThread], tmp_path: Path) -> None:
    """Server keyspace version 3 (strings only) has the same bytes minus hashes and sets:
    it is served as it is, and the first write records map version 3, so a server of
    version 3 refuses the directory once it may hold a hash."""
    from shaledb.server.keyspace.dbmap import MAP_KEY, count_key, encode_counts

    path = tmp_path / "v3"
    with shaledb.open(path) as db, db.batch() as b:
        b.put(MAP_KEY, b"\x02\x10" + bytes(range(16)))
        b.put(b"\x00plain", b"\x00hello")
        b.put(count_key(0), encode_counts(1, 0))
    st = server_factory(dir=str(path))
    r = st.client()
    assert r.get("plain") == b"hello" and r.dbsize() == 1
    assert st.call(lambda: st.server.db.get(MAP_KEY))[0] == 2  # type: ignore[union-attr]
    r.hset("h", "a", "1")
    assert st.call(lambda: st.server.db.get(MAP_KEY)) == (  # type: ignore[union-attr]
        b"\x06\x10" + bytes(range(16)))
    st.stop()
    with shaledb.open(path) as db:
        assert db.get(MAP_KEY) == b"\x06\x10" + bytes(range(16))


def test_member_garbage_is_deleted_in_bounded_steps_that_resume_after_a_crash(
        tmp_path: Path) -> None:
    """A dropped hash leaves one garbage record; each purge step deletes a bounded number of
    its members and, in the same batch, records the last one deleted, so a restart resumes
    there (and never walks the tombstones of the members already deleted)."""
    from shaledb.server.keyspace.keyspace import Keyspace
    from shaledb.server.keyspace.values import (
        TAG_HASH,
        member_garbage_key,
        member_key,
        member_prefix,
    )

    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        txn = ks.begin()
        txn.put_members(0, b"h", None, TAG_HASH, [(b"f%d" % i, b"v") for i in range(7)])
        txn.commit()
        e = ks.begin().get_coll(0, b"h", TAG_HASH)
        assert e is not None and e.coll is not None and e.coll.size == 7
        cid = e.coll.id
        txn = ks.begin()
        txn.delete(0, b"h")
        txn.commit()
        assert db.get(member_garbage_key(cid)) == b""  # nothing deleted yet
        assert ks.purger.collect_members(3) is True   # f0, f1, f2 go
        assert db.get(member_garbage_key(cid)) == b"\x01f2"
        assert [db.get(member_key(cid, b"f%d" % i)) is not None for i in range(7)] == \
            [False] * 3 + [True] * 4
        ks2 = Keyspace(db)                            # a restart resumes from the record
        assert ks2.member_garbage_pending and ks2.garbage_pending
        assert ks2.purger.collect_members(10) is False
        assert db.get(member_garbage_key(cid)) is None
        assert next(db.range(member_prefix(0), b"\xf4"), None) is None
        assert ks2.purger.purged_members == 4
        # The next id is past every id in use, found again at open.
        assert ks2.new_chunk_id() > cid


def test_hash_and_set_records_are_the_documented_bytes(tmp_path: Path) -> None:
    """docs/format.md's example, byte for byte."""
    from shaledb.server.keyspace.keyspace import Keyspace
    from shaledb.server.keyspace.values import TAG_HASH, TAG_SET

    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        txn = ks.begin()
        txn.put_members(0, b"h", None, TAG_HASH, [(b"name", b"ada")])
        txn.put_members(0, b"s", None, TAG_SET, [(b"x", b"")])
        txn.commit()
        assert db.get(b"\x00h") == bytes.fromhex("02 0000000000000001 0000000000000001")
        assert db.get(bytes.fromhex("F2 0000000000000001 6E616D65")) == b"ada"
        assert db.get(b"\x00s") == bytes.fromhex("03 0000000000000002 0000000000000001")
        assert db.get(bytes.fromhex("F2 0000000000000002 78")) == b""
        assert db.get(b"\xffdbmap") == b"\x06\x10" + bytes(range(16))
        txn = ks.begin()
        e = txn.get_coll(0, b"h", TAG_HASH)
        assert e is not None
        txn.set_entry(0, b"h", e, 2**41)  # an expiry (in 2039): bit 7 and 8 bytes of ms
        txn.delete(0, b"s")
        txn.commit()
        assert db.get(b"\x00h") == bytes.fromhex(
            "82 0000020000000000 0000000000000001 0000000000000001")
        assert db.get(bytes.fromhex("F3 0000000000000002")) == b""


def test_the_per_collection_hints_are_bounded(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The deletion counts and end bounds the keyspace keeps per collection (for random
    draws and walks past tombstones) hold at most MEMBER_DELETES_MAX collections, oldest
    forgotten first; a forgotten hint only costs speed."""
    from shaledb.server.keyspace import keyspace as ksmod
    from shaledb.server.keyspace.values import TAG_SET

    monkeypatch.setattr(ksmod, "MEMBER_DELETES_MAX", 3)
    with shaledb.open(tmp_path / "db") as db:
        ks = ksmod.Keyspace(db)
        for i in range(6):
            key = b"s%d" % i
            txn = ks.begin()
            txn.put_members(0, key, None, TAG_SET, [(b"a", b""), (b"b", b""), (b"c", b"")])
            txn.commit()
            txn = ks.begin()
            e = txn.get_coll(0, key, TAG_SET)
            assert e is not None and e.coll is not None
            assert [m for m, _ in txn.members(e.coll)] == [b"a", b"b", b"c"]  # learns bounds
            txn.remove_members(0, key, e, [b"a"])
            txn.commit()
            assert len(ks.member_deletes) <= 3 and len(ks.member_bounds) <= 3
        assert len(ks.member_deletes) == 3 and len(ks.member_bounds) == 3
        txn = ks.begin()
        for i in range(6):
            e = txn.get_coll(0, b"s%d" % i, TAG_SET)
            assert e is not None and e.coll is not None
            assert [m for m, _ in txn.members(e.coll)] == [b"b", b"c"]
            assert [m for m, _ in txn.members(e.coll, reverse=True)] == [b"c", b"b"]
