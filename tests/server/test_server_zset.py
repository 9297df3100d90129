"""Sorted sets over the network (issue 13 section 1): every sorted set command against a
real server with redis-py, replies compared with a real redis-server 7 on loopback (RESP2
and RESP3), the encoding's bytes (header, member records, score index), the O(1) removal
of a whole set with its score index reclaimed by the purger, the version 5 -> 6 upgrade,
replies charged to the output limit, the key commands on sorted sets, and the blocking
BZPOPMIN / BZPOPMAX / BZMPOP: first blocked first served, timeouts, MULTI, disconnects,
waking only at the commit of a write."""

from __future__ import annotations

import math
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import shaledb

from ._server_support import HOST, RawClient, ServerThread, free_port, keyevents, wait_until

KiB = 1024


def _wait(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    wait_until(cond, timeout, what, 0.01)


def _blocked(r: redis.Redis) -> int:
    return int(r.info("clients")["blocked_clients"])


def _records_on_disk(st: ServerThread, prefix: int) -> int:
    def count() -> int:
        db = st.server.db  # type: ignore[union-attr]
        return sum(1 for _ in db.range(bytes((prefix,)), bytes((prefix + 1,))))
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


# Commands whose replies must equal a real redis-server 7's (random and scan orders are
# left out: they are not part of Redis' contract).
_SCRIPT = r"""
zadd z 1 a 2 b 3 c -1 d 1.5 e
zadd z 1.1 x
zscore z x
zrange z 0 -1 withscores
zrange z 0 -1 withscores rev
zrange z 1 3
zrange z -2 -1
zrange z (1 3 byscore withscores
zrange z 3 (1 byscore rev withscores
zrange z -inf +inf byscore limit 1 2
zrangebyscore z -inf +inf withscores limit 2 -1
zrangebyscore z -inf +inf limit -1 2
zrevrangebyscore z +inf -inf
zrange z - + bylex
zrank z c
zrevrank z c
zrank z nope
zrank z d
zrank z x
zrevrank z d
zcount z 1 2
zcount z (1 2
zcount z 5 1
zadd z nx 5 a
zadd z xx ch 5 a
zadd z gt ch 4 a
zadd z lt ch 4 a
zadd z incr 1 a
zadd z nx incr 1 a
zadd z xx nx 1 a
zadd z gt lt 1 a
zadd z gt nx 1 a
zadd z incr 1 a 2 b
zadd z 1 a 2
zadd z nan a
zadd z abc a
zadd z
zincrby z 2.5 b
zincrby z +inf b
zincrby z -inf b
zincrby z nan b
zmscore z a b nope
zmscore nokey a
zcard z
zcard nokey
zrem z a nope
zpopmin z
zpopmax z 2
zpopmin z 0
zpopmin z -1
zpopmin nokey
zpopmin nokey 2
type z
set s v
zadd s 1 a
zrange s 0 -1
zscore s a
zcard s
zpopmin s
zrangestore s2 s 0 -1
zunion 1 s
zadd l 0 a 0 b 0 c 0 d 0 e 0 f
zrangebylex l [b (e
zrevrangebylex l (e [b
zrangebylex l - + limit 1 2
zrange l [c + bylex rev
zrange l + [c bylex rev
zlexcount l [b +
zlexcount l + -
zrangebylex l foo +
zremrangebylex l - [b
zrange l 0 -1
zremrangebyrank l 0 0
zremrangebyscore l -inf +inf
exists l
zadd a 1 x 2 y 3 z
zadd b 10 y 20 z 30 w
sadd st x w q
zunion 2 a b withscores
zunion 3 a b st withscores aggregate max
zinter 2 a b withscores weights 2 3
zinter 2 a b withscores aggregate min
zinter 3 a b st withscores
zdiff 2 a b withscores
zdiff 2 a st
zunionstore dst 2 a b
zrange dst 0 -1 withscores
zinterstore dst 2 a b aggregate max
zrange dst 0 -1 withscores
zdiffstore dst 2 b a
zrange dst 0 -1 withscores
zinterstore dst 2 a nokey
exists dst
zintercard 2 a b
zintercard 2 a b limit 1
zintercard 0 a
zintercard -1 a
zintercard 3 a
zintercard x a
zintercard 1 a limit -1
zintercard 1 a limit 0
zunion 0 a
zunionstore dst 0 a
zunion 2 a
zunion 1 a weights x
zunion 1 a aggregate foo
zdiff 1 a weights 1
zunionstore dst 1 a withscores
zunion 2 a b weights 0 1 withscores
zmpop 2 nokey a min count 2
zmpop 1 a max
zmpop 1 a max count 0
zmpop 0 a max
zmpop 1 a middle
zmpop 1 nokey min
zrangestore dst2 b 0 -1
zrange dst2 0 -1 withscores
zrangestore dst2 b 0 -1 withscores
zrangestore dst2 nokey 0 -1
exists dst2
zrange b 0 -1 limit 1 2
zrangebylex b - + withscores
zrandmember nokey
zrandmember nokey 5
zrandmember b 0
zrange b 0 -1 byscore
zrange b (1 (1 byscore
zadd inf +inf a -inf b
zrange inf 0 -1 withscores
zincrby inf -inf a
zrangebyscore inf -inf +inf withscores
zrangebyscore inf (-inf (+inf withscores
zadd n 1 a
zrange n 0 -1 foo
zrevrange n 0 -1 withscores
zrange n 0 1 rev rev
zrange n a b
zrange n a b byscore
zrange n 0 -1 byscore bylex
zadd m 1 a 1 b 2 c 2 d 3 e
zrangebylex m - +
zrangebylex m [b [d
zremrangebyrank m -2 -1
zrange m 0 -1 withscores
zadd neg -0 z
zscore neg z
zadd ch ch 1 a 2 a
zadd dup 1 a 2 a
zscore dup a
zadd z2 xx 1 a
exists z2
zadd p 1 a 2 b 3 c 4 d 5 e 6 f 7 g 8 h
zrank p g
zrevrank p b
zrange p 5 6
zrange p 1 2 rev
zremrangebyrank p 6 -1
zrange p 0 -1
zadd big 1e300 a 1e-300 b 123456789.123 c -0.1 d
zrange big 0 -1 withscores
object encoding big
"""


def _outcomes(c: redis.Redis) -> list[Any]:
    c.flushall()
    out = []
    for line in _SCRIPT.strip().splitlines():
        try:
            out.append(c.execute_command(*shlex.split(line)))
        except redis.ResponseError as exc:
            out.append(f"error: {exc}")
    return out


@pytest.mark.parametrize("protocol", [2, 3])
def test_zset_replies_equal_a_real_redis_server(
        server_factory: Callable[..., ServerThread], tmp_path: Path, protocol: int) -> None:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", HOST, "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    try:
        from ._server_support import wait_for_port

        wait_for_port(port, proc)
        real = redis.Redis(host=HOST, port=port, protocol=protocol)
        ours = server_factory().client(protocol=protocol)
        want, got = _outcomes(real), _outcomes(ours)
        lines = _SCRIPT.strip().splitlines()
        # OBJECT ENCODING names what Redis would for the size (branch sortdump).
        mismatches = [(line, w, g) for line, w, g in zip(lines, want, got, strict=True)
                      if w != g]
        assert not mismatches, mismatches
        assert got[-1] == want[-1] == b"listpack"
    finally:
        proc.terminate()
        proc.wait(10)


def test_zset_commands_reply_as_redis(r: redis.Redis) -> None:
    assert r.zadd("z", {"a": 1, "b": 2, "c": 3}) == 3
    assert r.zrange("z", 0, -1, withscores=True) == [(b"a", 1.0), (b"b", 2.0), (b"c", 3.0)]
    assert r.zscore("z", "b") == 2.0 and r.zscore("z", "nope") is None
    assert r.zincrby("z", 10, "a") == 11.0 and r.zrank("z", "a") == 2
    # WITHSCORE, as Redis 7.2 (HELLO says 7.2.0): [rank, score], nil for a missing member.
    assert r.execute_command("ZRANK", "z", "a", "WITHSCORE") == [2, 11.0]  # redis-py parses
    assert r.execute_command("ZREVRANK", "z", "a", "withscore") == [0, 11.0]
    assert r.execute_command("ZRANK", "z", "nope", "WITHSCORE") is None
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("ZRANK", "z", "a", "WITHSCORES")
    assert r.zadd("z", {"b": 5}, gt=True, ch=True) == 1 and r.zscore("z", "b") == 5.0
    assert r.zadd("z", {"b": 1}, gt=True, ch=True) == 0 and r.zscore("z", "b") == 5.0
    assert r.zadd("z", {"b": 1}, incr=True, nx=True) is None
    assert r.zrangebyscore("z", "(3", "+inf") == [b"b", b"a"]
    assert r.zrevrangebyscore("z", "+inf", 4, withscores=True, start=0, num=1) == [
        (b"a", 11.0)]
    assert r.zpopmin("z") == [(b"c", 3.0)] and r.zpopmax("z", 5) == [(b"a", 11.0), (b"b", 5.0)]
    assert not r.exists("z") and r.zcard("z") == 0
    r.zadd("q", {"job1": 100, "job2": 50})
    assert r.zrange("q", 0, 60, byscore=True) == [b"job2"]  # Celery / arq's poll
    assert r.zrem("q", "job2") == 1 and r.zrange("q", 0, -1) == [b"job1"]
    assert r.type("q") == b"zset" and r.object("encoding", "q") == b"listpack"
    # NaN refused, infinities kept, -inf + inf refused as NaN.
    with pytest.raises(redis.ResponseError, match="not a valid float"):
        r.zadd("q", {"x": "nan"})
    assert r.zadd("q", {"lo": "-inf", "hi": "+inf"}) == 2
    assert r.zrange("q", 0, -1, withscores=True) == [
        (b"lo", -math.inf), (b"job1", 100.0), (b"hi", math.inf)]
    with pytest.raises(redis.ResponseError, match=r"resulting score is not a number \(NaN\)"):
        r.zincrby("q", "-inf", "hi")
    with pytest.raises(redis.ResponseError, match="NaN"):
        r.zadd("q", {"hi": "-inf"}, incr=True)
    assert r.zscore("q", "hi") == math.inf
    # Every sorted set command on another type answers WRONGTYPE, nothing changes.
    r.set("str", "x")
    r.rpush("list", "x")
    for call in (lambda: r.zadd("str", {"a": 1}), lambda: r.zrange("list", 0, -1),
                 lambda: r.zscore("str", "a"), lambda: r.zcard("list"),
                 lambda: r.zpopmin("str"), lambda: r.zunionstore("d", ["q", "str"]),
                 lambda: r.zrangestore("d", "list", 0, -1), lambda: r.zrank("str", "a"),
                 lambda: r.zscan("str"), lambda: r.zrandmember("str"),
                 lambda: r.zmpop(2, ["nokey", "str"], min=True),
                 lambda: r.bzpopmin(["str"], 0.01)):
        with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
            call()
    assert r.get("str") == b"x" and not r.exists("d")
    with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
        r.sadd("q", "x")
    # ZSCAN walks every member once, with scores.
    r.zadd("many", {f"m{i:03d}": i for i in range(250)})
    seen = dict(r.zscan_iter("many", count=7))
    assert seen == {f"m{i:03d}".encode(): float(i) for i in range(250)}
    assert r.zrandmember("many", 5, withscores=True) is not None
    assert len(set(r.zrandmember("many", 300))) == 250
    assert len(r.zrandmember("many", -300)) == 300


def test_key_commands_work_on_sorted_sets(server: ServerThread) -> None:
    r = server.client(single_connection_client=True)
    r.zadd("z", {"a": 1, "b": 2})
    assert r.copy("z", "c") and r.zadd("c", {"x": 0}) == 1
    assert r.zrange("z", 0, -1) == [b"a", b"b"] and r.zrange("c", 0, -1) == [b"x", b"a", b"b"]
    assert r.zrangebyscore("c", 0, 1) == [b"x", b"a"]  # the copy's score index too
    assert r.rename("c", "d") and r.zrange("d", 0, 0) == [b"x"] and not r.exists("c")
    assert r.move("d", 3) and not r.exists("d")
    r.select(3)
    assert r.zpopmin("d") == [(b"x", 0.0)]
    r.select(0)
    assert r.expire("z", 100) and 0 < r.ttl("z") <= 100
    assert r.pexpire("z", 1) and _wait(lambda: not r.exists("z")) is None
    r.zadd("z", {"a": 1})
    r.swapdb(0, 3)
    assert r.zrange("z", 0, -1) == [] and r.zrange("d", 0, -1, withscores=True) == [
        (b"a", 1.0), (b"b", 2.0)]
    r.flushdb()
    assert r.dbsize() == 0 and r.zcard("d") == 0
    _wait(lambda: _records_on_disk(server, 0xF2) == 1 and _records_on_disk(server, 0xF4) == 1,
          what="the purger reclaiming the flushed and expired sets (the one in db 3 stays)")
    r.select(3)
    assert r.zrange("z", 0, -1, withscores=True) == [(b"a", 1.0)]
    assert r.delete("z") == 1


def test_zset_records_are_the_documented_bytes(tmp_path: Path) -> None:
    """docs/format.md's example, byte for byte: a header (tag 0x05, id, size), member
    records (member -> 8-byte double) and score index records (0xF4 + id + order-preserving
    score + member -> empty)."""
    from shaledb.server.keyspace.keyspace import Keyspace
    from shaledb.server.keyspace.values import TAG_ZSET

    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        txn = ks.begin()
        coll = txn.new_collection(TAG_ZSET)
        txn.zset_write(0, b"z", None, coll._replace(size=2),
                       [(b"a", 1.5, None), (b"b", -2.0, None)])
        txn.commit()
        assert db.get(b"\x00z") == bytes.fromhex("05 0000000000000001 0000000000000002")
        assert db.get(bytes.fromhex("F2 0000000000000001 61")) == bytes.fromhex(
            "3FF8000000000000")
        assert db.get(bytes.fromhex("F2 0000000000000001 62")) == bytes.fromhex(
            "C000000000000000")
        index = [k for k, _ in db.range(b"\xf4", b"\xf5")]
        assert index == [bytes.fromhex("F4 0000000000000001 3FFFFFFFFFFFFFFF 62"),
                         bytes.fromhex("F4 0000000000000001 BFF8000000000000 61")]
        assert db.get(index[0]) == b""
        assert db.get(b"\xffdbmap") == b"\x06\x10" + bytes(range(16))


def test_a_version_5_directory_is_served_and_upgraded_by_its_first_write(
        tmp_path: Path, server_factory: Callable[..., ServerThread]) -> None:
    """Server keyspace version 5 (map record 0x04) has the bytes of version 6 minus sorted
    sets (and version 7's streams): served as it is (its lists and hashes too); the first
    write records the current map version (0x06 since streams), so a version 5 server (which
    would leak a dropped set's score index) refuses it from then on."""
    from shaledb.server.keyspace.dbmap import MAP_KEY, count_key, encode_counts

    path = tmp_path / "v5"
    with shaledb.open(path) as db, db.batch() as b:
        b.put(MAP_KEY, b"\x04\x10" + bytes(range(16)))
        b.put(b"\x00plain", b"\x00hello")
        # A version 5 list of one element ("a").
        b.put(b"\x00l", bytes.fromhex("04 0000000000000007 0000000000000001 8000000000000000"))
        b.put(bytes.fromhex("F2 0000000000000007 8000000000000000"), b"a")
        b.put(count_key(0), encode_counts(2, 0))
    st = server_factory(dir=str(path))
    r = st.client()
    assert r.get("plain") == b"hello" and r.lrange("l", 0, -1) == [b"a"] and r.dbsize() == 2
    assert st.call(lambda: st.server.db.get(MAP_KEY))[0] == 4  # type: ignore[union-attr]
    r.zadd("z", {"m": 1})
    assert st.call(lambda: st.server.db.get(MAP_KEY)) == (  # type: ignore[union-attr]
        b"\x06\x10" + bytes(range(16)))
    assert r.zrange("z", 0, -1, withscores=True) == [(b"m", 1.0)]
    st.stop()
    st2 = server_factory(dir=str(path))
    r2 = st2.client()
    assert r2.zscore("z", "m") == 1.0 and r2.lrange("l", 0, -1) == [b"a"]


def test_a_newer_map_version_is_refused(tmp_path: Path) -> None:
    from shaledb.errors import IncompatibleFormatError
    from shaledb.server.keyspace.dbmap import decode_map

    with pytest.raises(IncompatibleFormatError, match="reads versions 1 to 6"):
        decode_map(b"\x07\x10" + bytes(range(16)))


def test_del_of_a_large_zset_is_one_write_and_its_records_are_reclaimed(
        server: ServerThread) -> None:
    r = server.client()
    n = 20_000
    pipe = r.pipeline(transaction=False)
    for i in range(0, n, 1000):
        pipe.zadd("big", {b"m%05d" % j: j for j in range(i, i + 1000)})
    pipe.execute()
    assert r.zcard("big") == n
    assert _records_on_disk(server, 0xF2) == n and _records_on_disk(server, 0xF4) == n
    assert r.zrank("big", "m12345") == 12_345 and r.zrevrank("big", "m00010") == n - 11
    assert r.zrange("big", 19_998, -1) == [b"m19998", b"m19999"]
    assert r.zcount("big", 100, "(200") == 100
    pipe = r.pipeline(transaction=False)
    pipe.info("shaledb")
    pipe.delete("big")
    pipe.info("shaledb")
    before, deleted, after = pipe.execute()
    assert deleted == 1
    written = after["wal_bytes_written"] - before["wal_bytes_written"]
    assert written < 1024, f"DEL of a {n}-member sorted set wrote {written} bytes of WAL"
    _wait(lambda: _records_on_disk(server, 0xF2) == 0 and _records_on_disk(server, 0xF4) == 0,
          what="the purger reclaiming the members and the score index")


def test_zpopmin_drain_skips_the_tombstones_it_left(server: ServerThread) -> None:
    """A queue drained from its low end (ZPOPMIN, ZREMRANGEBYRANK 0 0) starts each walk at
    the bound the previous one learnt, not at the first of the tombstones it left: a drain
    stays linear."""
    r = server.client()
    n = 10_000
    r.zadd("q", {b"j%05d" % i: i for i in range(n)})
    t0 = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for _ in range(n // 2):
        pipe.zpopmin("q")
    got = pipe.execute()
    first_half = time.perf_counter() - t0
    assert got[0] == [(b"j00000", 0.0)] and got[-1] == [(b"j04999", 4999.0)]
    t0 = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for _ in range(n // 2):
        pipe.zpopmin("q")
    got = pipe.execute()
    second_half = time.perf_counter() - t0
    assert got[-1] == [(b"j09999", 9999.0)] and not r.exists("q")
    # Quadratic would make the second half several times slower than the first.
    assert second_half < 3 * first_half + 1.0, (first_half, second_half)


def test_zrange_is_charged_to_the_output_limit_as_it_is_built(
        server_factory: Callable[..., ServerThread]) -> None:
    st = server_factory(client_output_buffer_limit=256 * KiB)
    r = st.client()
    r.zadd("big", {b"m" * (10 * KiB) + b"%d" % i: i for i in range(60)})  # 600 KiB
    for args in (("ZRANGE", "big", "0", "-1"), ("ZRANGEBYSCORE", "big", "-inf", "+inf"),
                 ("ZUNION", "1", "big")):
        raw = RawClient(st.port)
        raw.send(*args)
        with pytest.raises(ConnectionError):
            raw.read()
        raw.close()
    assert int(st.call(
        lambda: st.server.stats["client_output_buffer_limit_disconnections"])) == 3
    assert r.zcard("big") == 60 and len(r.zrange("big", 0, 5)) == 6


def test_a_member_longer_than_the_limit_is_refused(r: redis.Redis) -> None:
    from shaledb.server.keyspace.values import MAX_ZMEMBER

    with pytest.raises(redis.ResponseError, match="exceeds the maximum"):
        r.zadd("z", {b"x" * (MAX_ZMEMBER + 1): 1})
    assert not r.exists("z")
    assert r.zadd("z", {b"x" * MAX_ZMEMBER: 1}) == 1
    assert r.zscore("z", b"x" * (MAX_ZMEMBER + 1)) is None
    assert r.zrange("z", 0, -1) == [b"x" * MAX_ZMEMBER]


# -- blocking -------------------------------------------------------------------------------

def test_blocked_clients_are_served_first_blocked_first_served(server: ServerThread) -> None:
    r = server.client()
    calls = []
    for i in range(3):
        c = server.client()
        calls.append(_Call(lambda c=c: c.bzpopmin(["a", "b"], 10)))
        _wait(lambda i=i: _blocked(r) == i + 1, what=f"client {i} blocked")
    r.zadd("b", {"x": 1, "y": 2})  # one write, two members: the first two get them
    assert calls[0].result() == (b"b", b"x", 1.0) and calls[1].result() == (b"b", b"y", 2.0)
    assert calls[2].thread.is_alive() and _blocked(r) == 1
    r.zadd("a", {"z": 3})
    assert calls[2].result() == (b"a", b"z", 3.0)
    assert _blocked(r) == 0 and not r.exists("a") and not r.exists("b")
    c1, c2 = server.client(), server.client()
    w1 = _Call(lambda: c1.bzpopmax(["x"], 10))
    w2 = _Call(lambda: c2.bzmpop(10, 1, ["x"], min=True, count=2))
    _wait(lambda: _blocked(r) == 2)
    r.zadd("x", {"1": 1, "2": 2, "3": 3, "4": 4})
    assert w1.result() == (b"x", b"4", 4.0)
    assert w2.result() == [b"x", [[b"1", b"1"], [b"2", b"2"]]]
    assert r.zrange("x", 0, -1) == [b"3"]


def test_blocking_commands_time_out_and_answer_nil(server: ServerThread) -> None:
    r = server.client()
    t = time.monotonic()
    assert r.bzpopmin(["none"], 0.2) is None
    assert 0.15 < time.monotonic() - t < 5
    assert r.bzpopmax(["none"], 0.05) is None
    assert r.bzmpop(0.05, 2, ["n1", "n2"], max=True) is None
    assert _blocked(r) == 0
    with pytest.raises(redis.ResponseError, match="timeout is negative"):
        r.bzpopmin(["none"], -1)
    with pytest.raises(redis.ResponseError, match="timeout is not a float"):
        r.execute_command("BZPOPMIN", "none", "soon")
    with pytest.raises(redis.ResponseError, match="timeout is out of range"):
        r.execute_command("BZMPOP", "1e300", "1", "none", "MIN")


def test_blocking_commands_never_block_inside_multi(r: redis.Redis) -> None:
    p = r.pipeline(transaction=True)
    p.bzpopmin(["none"], 0)
    p.bzmpop(0, 1, ["none"], min=True)
    p.zadd("z", {"a": 1})
    p.bzpopmax(["z"], 0)
    assert p.execute() == [None, None, 1, (b"z", b"a", 1.0)]


def test_a_write_wakes_only_at_its_commit(server: ServerThread) -> None:
    r = server.client()
    c = server.client()
    w = _Call(lambda: c.bzpopmin(["z"], 10))
    _wait(lambda: _blocked(r) == 1)
    p = r.pipeline(transaction=True)
    p.zadd("z", {"a": 5})
    p.zadd("z", {"b": 3})
    p.zincrby("z", -10, "a")
    p.execute()
    assert w.result() == (b"z", b"a", -5.0) and r.zrange("z", 0, -1) == [b"b"]
    # A type change wakes nobody; the client stays blocked until a sorted set comes.
    w = _Call(lambda: c.bzpopmax(["k"], 10))
    _wait(lambda: _blocked(r) == 1)
    r.set("k", "string")
    time.sleep(0.1)
    assert w.thread.is_alive()
    r.delete("k")
    r.zadd("k", {"m": 1})
    assert w.result() == (b"k", b"m", 1.0)


def test_a_blocked_client_that_disconnects_leaves_the_queue(server: ServerThread) -> None:
    r = server.client()
    raw = RawClient(server.port)
    raw.send("BZPOPMIN", "k", "0")
    _wait(lambda: _blocked(r) == 1)
    raw.close()
    _wait(lambda: _blocked(r) == 0, timeout=5, what="the disconnect being seen")
    r.zadd("k", {"kept": 1})
    assert r.zrange("k", 0, -1) == [b"kept"]


def test_resp3_replies_are_doubles_and_pairs(server: ServerThread) -> None:
    raw = RawClient(server.port)
    raw.send("HELLO", "3")
    raw.read()
    for args, want in ((("ZADD", "z", "1.1", "a", "2", "b"), b":2\r\n"),
                       (("ZSCORE", "z", "a"), b",1.1000000000000001\r\n"),
                       (("ZRANGE", "z", "0", "-1", "WITHSCORES"),
                        b"*2\r\n*2\r\n$1\r\na\r\n,1.1000000000000001\r\n*2\r\n$1\r\nb\r\n,2\r\n"),
                       (("ZPOPMIN", "z"), b"*2\r\n$1\r\na\r\n,1.1000000000000001\r\n"),
                       (("ZPOPMAX", "z", "1"), b"*1\r\n*2\r\n$1\r\nb\r\n,2\r\n")):
        raw.send(*args)
        got = b""
        while len(got) < len(want):
            got += raw.sock.recv(65536)
        assert got == want, args
    raw.close()


def test_the_purger_deletes_members_then_the_score_index_and_resumes_where_it_stopped(
        tmp_path: Path) -> None:
    """A dropped sorted set's garbage record says where the purge is: ``01`` + the last
    member deleted, then ``02`` + the last score index entry deleted; each step deletes at
    most its budget, and a purger that starts over (a restart) goes on from the record."""
    from shaledb.server.keyspace.keyspace import Keyspace
    from shaledb.server.keyspace.values import TAG_ZSET, member_garbage_key, score_bytes

    path = tmp_path / "db"
    with shaledb.open(path) as db:
        ks = Keyspace(db)
        txn = ks.begin()
        coll = txn.new_collection(TAG_ZSET)
        txn.zset_write(0, b"z", None, coll._replace(size=5),
                       [(b"m%d" % i, float(i), None) for i in range(5)])
        txn.commit()
        txn = ks.begin()
        txn.delete(0, b"z")
        txn.commit()
        gk = member_garbage_key(coll.id)
        assert db.get(gk) == b""
        assert ks.purger.collect_members(3)
        assert db.get(gk) == b"\x01m2"  # three members gone
        assert ks.purger.collect_members(3)
        # The last two members and the first index entry (m0's, score 0).
        assert db.get(gk) == b"\x02" + score_bytes(0.0) + b"m0"
    with shaledb.open(path) as db:  # a restart: the record is found by its range
        ks = Keyspace(db)
        assert ks.member_garbage_unlisted
        assert ks.purger.collect_members(2)
        assert db.get(gk) == b"\x02" + score_bytes(2.0) + b"m2"
        assert not ks.purger.collect_members(10)
        assert db.get(gk) is None
        assert next(db.range(b"\xf2", b"\xf5"), None) is None


def test_the_learnt_index_bounds_are_bounded(server: ServerThread,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The score index bounds the walks learn (one entry per sorted set walked from an
    end) are capped like the member bounds: past MEMBER_DELETES_MAX the oldest goes."""
    from shaledb.server.keyspace import keyspace

    monkeypatch.setattr(keyspace, "MEMBER_DELETES_MAX", 3)
    r = server.client()
    for i in range(8):
        r.zadd(f"z{i}", {"a": 1, "b": 2})
        assert r.zpopmin(f"z{i}") == [(b"a", 1.0)]
        assert r.zrange(f"z{i}", 0, -1) == [b"b"]
    ks = server.server.keyspace  # type: ignore[union-attr]
    assert 0 < server.call(lambda: len(ks.score_bounds)) <= 3


def test_sorted_set_commands_raise_redis_keyspace_events(server_factory) -> None:
    # Sorted sets landed beside keyspace notifications (branch pubsub) without calling its
    # hook: a subscriber to __keyevent@0__:* heard nothing of ZADD or ZPOPMIN. (The same
    # sequence as a real Redis 7.0.15, checked by hand.)
    def run(r: redis.Redis) -> None:
        r.zadd("z", {"a": 1, "b": 2})
        r.zadd("z", {"a": 1})  # nothing changed: no event
        r.zincrby("z", 5, "a")
        r.zadd("z", {"c": 1}, incr=True)
        r.zrem("z", "c")
        r.zpopmin("z")
        r.zadd("y", {"q": 1})
        r.zunionstore("u", ["z", "y"])
        r.zrangestore("rs", "u", 0, 0)
        r.zinterstore("u", ["z", "missing"])  # empty result: the destination is deleted
        r.zremrangebyscore("z", "-inf", "+inf")  # the last member: the key goes

    got = keyevents(server_factory().client(), run)
    assert got == [("zadd", "z"), ("zincr", "z"), ("zincr", "z"), ("zrem", "z"),
                   ("zpopmin", "z"), ("zadd", "y"), ("zunionstore", "u"),
                   ("zrangestore", "rs"), ("del", "u"), ("zremrangebyscore", "z"),
                   ("del", "z")]
