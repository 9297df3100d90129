"""Keys across types for sorted sets and streams (issue 13 section 1): SORT / SORT_RO of a
sorted set, DUMP/RESTORE of sorted sets and streams in Redis' RDB format (checked both ways
against a real redis-server 7 when installed), OBJECT ENCODING of both. Every test talks to
a server over a socket."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from shaledb.server.commands import dump as dump_module

from ._server_support import real_redis

_SORTS = [
    [],
    ["ALPHA"],
    ["DESC"],
    ["ALPHA", "DESC", "LIMIT", "1", "2"],
    ["BY", "nosort"],
    ["BY", "nosort", "DESC"],
    ["BY", "nosort", "LIMIT", "1", "2"],
    ["BY", "nosort", "DESC", "LIMIT", "1", "2"],
    ["BY", "nosort", "LIMIT", "0", "10"],
    ["BY", "nosort", "LIMIT", "9", "2"],
    ["BY", "nosort", "DESC", "LIMIT", "-5", "3"],
    ["BY", "w_*", "GET", "#", "GET", "w_*"],
    ["BY", "nosort", "GET", "w_*", "DESC"],
]


def _fill_sortable(c: redis.Redis) -> None:
    c.zadd("z", {"7": 3, "10": 1, "2": 2, "30": 10, "5": -1})
    c.rpush("l", "7", "10", "2", "30", "5")
    for i, m in enumerate(["7", "10", "2", "30", "5"]):
        c.set(f"w_{m}", 100 - i)


def test_sort_of_a_sorted_set_and_of_a_list_without_sorting_is_redis(
        r: redis.Redis, tmp_path: Path) -> None:
    """SORT sorts a sorted set's members as a set's; with BY and no ``*`` it gives them in
    score order (DESC: from the highest), reading only the LIMIT range, and a list in its
    order reversed by DESC: the same replies as a real Redis 7, SORT_RO and STORE too."""
    with real_redis(tmp_path) as real:
        _fill_sortable(real)
        _fill_sortable(r)
        for key in ("z", "l"):
            for args in _SORTS:
                want = real.execute_command("SORT", key, *args)
                assert r.execute_command("SORT", key, *args) == want, (key, args)
                assert r.execute_command("SORT_RO", key, *args) == want, (key, args)
                n = real.execute_command("SORT", key, *args, "STORE", "dst")
                assert r.execute_command("SORT", key, *args, "STORE", "dst") == n
                assert r.lrange("dst", 0, -1) == real.lrange("dst", 0, -1), (key, args)
    r.xadd("st", {"a": "1"})
    try:
        r.sort("st")
        raise AssertionError("SORT of a stream must fail")
    except redis.ResponseError as exc:
        assert str(exc).startswith("WRONGTYPE")


# -- DUMP / RESTORE of sorted sets and streams -------------------------------------------------

def _fill_zsets_and_streams(c: redis.Redis) -> None:
    c.zadd("z-small", {"a": 1, "b": 2.5, "c": -3, "12": 7, "long" * 5: 1e300})  # a listpack
    c.zadd("z-big", {f"m{i}": i * 0.5 - 40 for i in range(300)})  # a skiplist: ZSET_2
    c.zadd("z-inf", {"x": float("inf"), "y": float("-inf"), "z": 0, "w": -0.0})
    c.xadd("st", {"a": "1", "b": "two"}, id="1-1")
    c.xadd("st", {"a": "3", "b": "four"}, id="1-2")
    c.xadd("st", {"other": "x", "17": "-5"}, id="5-0")
    for i in range(250):  # several nodes, fields the master's and not
        c.xadd("st", {"f": str(i), "g": "v" * (i % 50)} if i % 7 else {"h": "-" + str(i)},
               id=f"{10 + i}-{i % 3}")
    c.xdel("st", "1-2", "20-1")
    c.xgroup_create("st", "g1", id="0")
    c.xgroup_create("st", "g2", id="$")
    c.xgroup_create("st", "g3", id="12-0")
    c.xreadgroup("g1", "alice", {"st": ">"}, count=3)
    c.xreadgroup("g1", "bob", {"st": ">"}, count=2)
    c.xreadgroup("g3", "dave", {"st": ">"}, count=1)
    c.xack("st", "g1", "1-1")
    c.xgroup_createconsumer("st", "g2", "carol")
    c.xadd("st-empty", {"a": "b"}, id="3-3")
    c.xdel("st-empty", "3-3")  # an empty stream keeps its last id
    c.xadd("st-small", {"k": "v"}, id="0-1")


def _zs_content(c: redis.Redis, key: str) -> object:
    kind = c.type(key)
    if kind == b"zset":
        return kind, c.zrange(key, 0, -1, withscores=True)
    info = c.xinfo_stream(key, full=True)
    info.pop("radix-tree-nodes")  # Redis' rax internals
    info.pop("radix-tree-keys")
    for g in info["groups"]:  # delivery and seen times are those of the server that read
        for p in g["pending"]:
            p[2] = 0
        for cons in g["consumers"]:
            cons.pop(b"seen-time")
            cons.pop(b"active-time", None)
            for p in cons[b"pending"]:
                p[1] = 0
    return kind, c.xrange(key), info


_ZS_KEYS = ["z-small", "z-big", "z-inf", "st", "st-empty", "st-small"]


def test_dump_restore_of_sorted_sets_and_streams_round_trip_with_a_real_redis(
        r: redis.Redis, tmp_path: Path) -> None:
    """Sorted sets (Redis 7.0 dumps a listpack or ZSET_2; this server writes ZSET_2) and
    streams (STREAM_LISTPACKS_2 with groups, PELs and consumers) dumped by Redis 7 restore
    here with the same content, and dumped here restore in Redis 7, delivery counts and
    times and entries read included."""
    with real_redis(tmp_path) as real:
        _fill_zsets_and_streams(real)
        _fill_zsets_and_streams(r)
        for key in _ZS_KEYS:
            theirs, ours = real.dump(key), r.dump(key)
            assert theirs is not None and ours is not None
            assert r.restore("from-redis:" + key, 0, theirs) == b"OK"
            assert _zs_content(r, "from-redis:" + key) == _zs_content(real, key), key
            assert real.restore("from-shaledb:" + key, 0, ours) == b"OK"
            assert _zs_content(real, "from-shaledb:" + key) == _zs_content(r, key), key
            # Delivery times and counts travel too (the test blanked them above).
            if key == "st":
                for c, k in ((r, "from-redis:st"), (real, "from-shaledb:st")):
                    src = real if c is r else r
                    got = c.xpending_range(k, "g1", "-", "+", 10)
                    want = src.xpending_range("st", "g1", "-", "+", 10)
                    assert [(p["message_id"], p["consumer"], p["times_delivered"])
                            for p in got] == \
                        [(p["message_id"], p["consumer"], p["times_delivered"]) for p in want]
                    assert all(abs(a["time_since_delivered"] - b["time_since_delivered"])
                               < 2000 for a, b in zip(got, want, strict=True))
        # A big sorted set is written as Redis writes a skiplist: the same bytes.
        assert r.dump("z-big") == real.dump("z-big")
        # The restored stream works on: ids go on from its last id, groups read on.
        for c in (r, real):
            try:
                c.xadd("from-redis:st" if c is r else "from-shaledb:st", {"x": "y"}, id="259-0")
                raise AssertionError("an id at the restored last id was taken")
            except redis.ResponseError as exc:
                assert "equal or smaller" in str(exc)
        assert r.xadd("from-redis:st", {"x": "y"}, id="300-0") == b"300-0"
        assert r.xreadgroup("g2", "carol", {"from-redis:st": ">"})[0][1][0][1] == \
            {b"x": b"y"}
        r.restore("ttl", 5000, real.dump("st"))
        assert 4000 < r.pttl("ttl") <= 5000


def _sealed(body: bytes) -> bytes:
    from shaledb.server.keyspace import rdb
    return rdb.seal(body)


def test_restore_reads_every_sorted_set_encoding_and_refuses_damage(
        r: redis.Redis, tmp_path: Path) -> None:
    """ZSET (scores as text; 254 and 255 for +-inf), a ziplist (Redis 6) and a listpack
    (Redis 7) of members and scores; the same payloads restore alike in a real Redis.
    A NaN score or a repeated member is refused as Redis refuses them."""
    old = b"\x03\x03\x01a\x031.5\x01b\xfe\x01c\xff"
    # in score order, as Redis keeps (and trusts) it; scores as text and as an integer
    zl_entries = b"\x00\x01b" + b"\x03\x04-2.5" + b"\x06\x01a" + b"\x03\xf2"
    zl = ((10 + len(zl_entries) + 1).to_bytes(4, "little") + (10 + 12).to_bytes(4, "little")
          + (4).to_bytes(2, "little") + zl_entries + b"\xff")
    ziplist = b"\x0c" + bytes((len(zl),)) + zl
    want = {"old": [(b"c", float("-inf")), (b"a", 1.5), (b"b", float("inf"))],
            "ziplist": [(b"b", -2.5), (b"a", 1.0)]}
    with real_redis(tmp_path) as real:
        for c in (r, real):
            for name, body in (("old", old), ("ziplist", ziplist)):
                assert c.restore(name, 0, _sealed(body)) == b"OK", name
                assert c.zrange(name, 0, -1, withscores=True) == want[name], (c, name)
    nan = b"\x03\x01\x01a\xfd"
    dup = b"\x05\x02\x01a" + b"\x00" * 8 + b"\x01a" + b"\x00" * 8
    for body in (nan, dup):
        try:
            r.restore("bad", 0, _sealed(body))
            raise AssertionError("a damaged sorted set was restored")
        except redis.ResponseError as exc:
            assert str(exc) == "Bad data format"
    assert r.exists("bad") == 0


def test_restore_of_a_sorted_set_and_a_stream_raises_the_restore_event(
        server_factory) -> None:
    st = server_factory()
    r = st.client()
    r.zadd("z", {"a": 1})
    r.xadd("s", {"a": "1"}, id="1-1")
    zp, sp = r.dump("z"), r.dump("s")
    r.config_set("notify-keyspace-events", "KEA")
    p = r.pubsub()
    p.psubscribe("__keyevent@0__:*")
    assert p.get_message(timeout=5)["type"] == "psubscribe"
    r.restore("z2", 0, zp)
    r.restore("s2", 0, sp)
    r.restore("s2", 0, sp, replace=True)
    got = []
    while (m := p.get_message(timeout=1)) is not None:
        got.append((m["channel"].split(b":", 1)[1], m["data"]))
    p.close()
    assert got == [(b"restore", b"z2"), (b"restore", b"s2"), (b"restore", b"s2")]


# -- OBJECT ENCODING ---------------------------------------------------------------------------

def test_object_encoding_of_sorted_sets_and_streams_is_redis(
        r: redis.Redis, tmp_path: Path) -> None:
    """``listpack`` up to zset-max-listpack-entries members of at most
    zset-max-listpack-value bytes, ``skiplist`` beyond (as a real Redis 7 names them when
    the set is built at that size; a set that grew past the bounds and shrank is a
    skiplist in Redis, which this answer does not know), ``stream`` for a stream."""
    def build(c: redis.Redis) -> list[bytes]:
        c.zadd("small", {f"m{i}": i for i in range(128)})
        c.zadd("many", {f"m{i}": i for i in range(129)})
        c.zadd("wide", {"a": 1, "x" * 65: 2})
        c.zadd("edge", {"x" * 64: 2})
        c.xadd("st", {"a": "1"})
        got = [c.object("encoding", k) for k in ("small", "many", "wide", "edge", "st")]
        c.config_set("zset-max-listpack-entries", 3)
        c.zadd("tuned", {"a": 1, "b": 2, "c": 3, "d": 4})
        c.zadd("tuned-3", {"a": 1, "b": 2, "c": 3})
        got += [c.object("encoding", "tuned"), c.object("encoding", "tuned-3")]
        c.config_set("zset-max-listpack-value", 2)
        c.zadd("tuned-value", {"abc": 1})
        got.append(c.object("encoding", "tuned-value"))
        c.config_set("zset-max-listpack-entries", 128)
        c.config_set("zset-max-listpack-value", 64)
        return got

    with real_redis(tmp_path) as real:
        want = build(real)
    assert want == [b"listpack", b"skiplist", b"skiplist", b"listpack", b"stream",
                    b"skiplist", b"listpack", b"skiplist"]
    got = build(r)
    assert got == want, got


def test_object_encoding_reads_a_bounded_number_of_members(r: redis.Redis) -> None:
    """With zset-max-listpack-entries above ENCODING_WALK_MAX, a set larger than that is
    named ``skiplist`` without reading its members."""
    from shaledb.server.commands.keys import ENCODING_WALK_MAX

    r.config_set("zset-max-listpack-entries", ENCODING_WALK_MAX * 4)
    r.zadd("at", {f"m{i}": i for i in range(ENCODING_WALK_MAX)})
    r.zadd("over", {f"m{i}": i for i in range(ENCODING_WALK_MAX + 1)})
    assert r.object("encoding", "at") == b"listpack"
    assert r.object("encoding", "over") == b"skiplist"


#: A stream DUMPed by Redis 5 (STREAM_LISTPACKS, RDB 9; the vector of Redis' own
#: tests/unit/type/stream-cgroups.tcl) after XADD x 1-0..6-0 data a..f, XDEL x 3-0, XGROUP
#: CREATE x g1 0 and g2 0, XREADGROUP GROUP g1 c11 COUNT 4, XTRIM x MAXLEN = 2.
_LEGACY_STREAM = bytes.fromhex(
    "0f011000000000000000010000000000000000c3404a405716570000002300020104010101846461"
    "746105000103010020010381610204200a0001400a0062600a0002400a0063600a4022018164200a"
    "4039200a0065600a0005400a0066200a00ff02060002026731050004000000000000000100000000"
    "000000003ef783437a01000001000000000000000200000000000000003ef783437a010000010000"
    "00000000000400000000000000003ef783437a01000001000000000000000500000000000000003e"
    "f783437a0100000101036331313ef783437a01000004000000000000000100000000000000000000"
    "00000000000200000000000000000000000000000004000000000000000000000000000000050000"
    "0000000000000267320000000009003d52ef6867521dfa")


def test_restore_of_a_redis_5_stream_estimates_entries_read_as_redis(
        r: redis.Redis, tmp_path: Path) -> None:
    """A payload from before the entries-read counter gets the counts Redis 7.0 estimates
    (entries added = length; a group at the first entry has read 1, before it 0)."""
    def state(c: redis.Redis) -> object:
        c.restore("x", 0, _LEGACY_STREAM)
        info = c.xinfo_stream("x", full=True)
        return (info["max-deleted-entry-id"], info["entries-added"],
                [(g["name"], g["entries-read"], g["lag"], g["pel-count"])
                 for g in info["groups"]], c.xrange("x"))

    ours = state(r)
    assert ours[:3] == (b"0-0", 2, [(b"g1", 1, 1, 4), (b"g2", 0, 2, 0)])
    with real_redis(tmp_path) as real:
        assert state(real) == ours


def test_dump_of_sorted_sets_and_streams_keeps_the_payload_bound(
        r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """DUMP of a sorted set or a stream is refused once its payload would pass PAYLOAD_MAX
    (made small here): counted as it is built, a stream's open node and a group's PEL
    included, before any checksum."""
    monkeypatch.setattr(dump_module, "PAYLOAD_MAX", 1000)
    too_big = "payload would be larger than 1000 bytes"
    r.zadd("z-fits", {"m" * 80 + str(i): i for i in range(10)})
    assert r.restore("z-copy", 0, r.dump("z-fits")) == b"OK"
    r.zadd("z-big", {"m" * 100 + str(i): i for i in range(10)})
    with pytest.raises(redis.ResponseError, match=too_big):
        r.dump("z-big")
    r.xadd("s-one", {"f": "v" * 1001}, id="1-1")  # one entry: the node is still open
    with pytest.raises(redis.ResponseError, match=too_big):
        r.dump("s-one")
    r.xadd("s-pel", {"f": "v"}, id="1-1")
    for i in range(2, 40):
        r.xadd("s-pel", {"f": "v"}, id=f"{i}-1")
    assert len(r.dump("s-pel")) < 1000
    r.xgroup_create("s-pel", "g", id="0")
    r.xreadgroup("g", "c", {"s-pel": ">"})  # 39 pending entries: 39 x 42 bytes
    with pytest.raises(redis.ResponseError, match=too_big):
        r.dump("s-pel")
