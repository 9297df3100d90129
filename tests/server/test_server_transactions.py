"""MULTI / EXEC / DISCARD / WATCH / UNWATCH with Redis semantics, and KRANGE."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from ._server_support import RawClient


def test_multi_exec_runs_queued_commands(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.set("a", "1").incr("a").get("a").mget("a", "b")
    assert pipe.execute() == [True, 2, b"2", [b"2", None]]


def test_raw_multi_replies(server) -> None:
    c = RawClient(server.port)
    assert c("MULTI") == b"OK"
    assert c("SET", "k", "v") == b"QUEUED"
    assert c("GET", "k") == b"QUEUED"
    assert c("EXEC") == [b"OK", b"v"]
    assert str(c("EXEC")) == "ERR EXEC without MULTI"
    assert str(c("DISCARD")) == "ERR DISCARD without MULTI"
    c("MULTI")
    assert str(c("MULTI")) == "ERR MULTI calls can not be nested"
    assert str(c("WATCH", "k")) == "ERR WATCH inside MULTI is not allowed"
    assert c("SET", "k", "changed") == b"QUEUED"
    assert c("DISCARD") == b"OK"
    assert c("GET", "k") == b"v"
    c.close()


def test_queueing_error_aborts_exec(r: redis.Redis) -> None:
    r.execute_command("MULTI")
    r.execute_command("SET", "x", "1")
    with pytest.raises(redis.ResponseError, match="unknown command"):
        r.execute_command("NOSUCHCMD")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("GET")
    with pytest.raises(redis.exceptions.ExecAbortError, match="previous errors"):
        r.execute_command("EXEC")
    assert r.get("x") is None


def test_runtime_error_inside_exec_keeps_the_others(r: redis.Redis) -> None:
    r.set("s", "abc")
    pipe = r.pipeline(transaction=True)
    pipe.set("a", "1").incr("s").set("b", "2")
    results = pipe.execute(raise_on_error=False)
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], redis.ResponseError)
    assert r.mget("a", "b", "s") == [b"1", b"2", b"abc"]


def test_watch_aborts_exec_when_another_client_writes(server, r: redis.Redis) -> None:
    other = server.client()
    r.set("w", "1")
    r.execute_command("WATCH", "w")
    other.set("w", "2")
    r.execute_command("MULTI")
    r.execute_command("SET", "w", "mine")
    assert r.execute_command("EXEC") is None
    assert r.get("w") == b"2"
    # WATCH is cleared by EXEC: the next transaction goes through.
    r.execute_command("MULTI")
    r.execute_command("SET", "w", "mine")
    assert r.execute_command("EXEC") == [b"OK"]
    other.close()


def test_watch_untouched_key_and_unwatch(server, r: redis.Redis) -> None:
    other = server.client()
    r.execute_command("WATCH", "a")
    other.set("unrelated", "x")
    r.execute_command("MULTI")
    r.execute_command("SET", "a", "1")
    assert r.execute_command("EXEC") == [b"OK"]
    r.execute_command("WATCH", "a")
    other.set("a", "2")
    assert r.execute_command("UNWATCH") is True
    r.execute_command("MULTI")
    r.execute_command("SET", "a", "3")
    assert r.execute_command("EXEC") == [b"OK"]
    assert r.get("a") == b"3"
    other.close()


def test_watch_sees_own_write_delete_flush_and_expiry(server, r: redis.Redis) -> None:
    def attempt(prepare) -> object:
        r.execute_command("WATCH", "k")
        prepare()
        r.execute_command("MULTI")
        r.execute_command("PING")
        return r.execute_command("EXEC")

    r.set("k", "v")
    assert attempt(lambda: r.set("k", "w")) is None          # its own write counts
    assert attempt(lambda: r.delete("k")) is None
    r.set("k", "v")
    assert attempt(lambda: r.flushdb()) is None
    r.set("k", "v", px=100)
    assert attempt(lambda: time.sleep(0.2)) is None           # expired after WATCH
    assert attempt(lambda: None) == [b"PONG"]


def test_watch_in_other_db_is_separate(server, r: redis.Redis) -> None:
    other = server.client(db=1)
    r.execute_command("WATCH", "k")
    other.set("k", "db1")
    r.execute_command("MULTI")
    r.execute_command("PING")
    assert r.execute_command("EXEC") == [b"PONG"]
    other.close()


def test_optimistic_increment_with_redis_py_transaction(server) -> None:
    """The classic WATCH/GET/MULTI/SET/EXEC loop of several clients loses no update."""
    n_threads, per_thread = 3, 60

    def work() -> None:
        c = server.client()

        def incr(pipe: redis.client.Pipeline) -> None:
            value = int(pipe.get("ctr") or 0)
            pipe.multi()
            pipe.set("ctr", value + 1)

        for _ in range(per_thread):
            c.transaction(incr, "ctr")
        c.close()

    ts = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    c = server.client()
    assert c.get("ctr") == str(n_threads * per_thread).encode()
    c.close()


def test_exec_is_atomic_for_other_readers(server, r: redis.Redis) -> None:
    """A reader never sees half of a MULTI that moves value from one key to another."""
    r.mset({"x": 100, "y": 0})
    stop = threading.Event()
    bad: list[tuple[bytes | None, bytes | None]] = []

    def reader() -> None:
        c = server.client()
        while not stop.is_set():
            x, y = c.mget("x", "y")
            if int(x or 0) + int(y or 0) != 100:
                bad.append((x, y))
        c.close()

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(100):
        pipe = r.pipeline(transaction=True)
        pipe.decr("x").incr("y")
        pipe.execute()
    stop.set()
    t.join()
    assert bad == []
    assert r.mget("x", "y") == [b"0", b"100"]


def test_krange(r: redis.Redis) -> None:
    r.mset({"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"})
    assert r.execute_command("KRANGE", "-", "+") == [
        b"a", b"1", b"b", b"2", b"c", b"3", b"d", b"4", b"e", b"5"]
    assert r.execute_command("KRANGE", "[b", "[d") == [b"b", b"2", b"c", b"3", b"d", b"4"]
    assert r.execute_command("KRANGE", "(b", "(d") == [b"c", b"3"]
    assert r.execute_command("KRANGE", "[b", "+", "LIMIT", "2") == [b"b", b"2", b"c", b"3"]
    assert r.execute_command("KRANGE", "-", "+", "LIMIT", "2", "REV") == [
        b"e", b"5", b"d", b"4"]
    assert r.execute_command("KRANGE", "[a", "(c", "REV") == [b"b", b"2", b"a", b"1"]
    assert r.execute_command("KRANGE", "[d", "[b") == []
    assert r.execute_command("KRANGE", "+", "-") == []
    assert r.execute_command("KRANGE", "-", "+", "LIMIT", "0") == []
    with pytest.raises(redis.ResponseError, match="not valid string range item"):
        r.execute_command("KRANGE", "a", "+")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("KRANGE", "-", "+", "LIMIT")
    with pytest.raises(redis.ResponseError, match="krange-max-limit"):
        r.execute_command("KRANGE", "-", "+", "LIMIT", "1000000")
    # LIMIT defaults to krange-max-limit (10,000) and may not exceed it.
    assert r.config_get("krange-max-limit") == {"krange-max-limit": "10000"}
    r.config_set("krange-max-limit", 3)
    assert r.execute_command("KRANGE", "-", "+") == [b"a", b"1", b"b", b"2", b"c", b"3"]
    assert len(r.execute_command("KRANGE", "-", "+", "LIMIT", "3")) == 6
    with pytest.raises(redis.ResponseError, match="krange-max-limit"):
        r.execute_command("KRANGE", "-", "+", "LIMIT", "4")


def test_krange_pages_and_sees_exec_writes(r: redis.Redis) -> None:
    r.mset({f"k{i:03d}": str(i) for i in range(50)})
    got: list[bytes] = []
    start = "-"
    while True:
        page = r.execute_command("KRANGE", start, "+", "LIMIT", "7")
        got.extend(page[0::2])
        if len(page) < 14:
            break
        start = b"(" + page[-2]
    assert got == [f"k{i:03d}".encode() for i in range(50)]
    pipe = r.pipeline(transaction=True)
    pipe.set("k0005", "new").delete("k001")
    pipe.execute_command("KRANGE", "[k000", "[k002")
    assert pipe.execute()[2] == [b"k000", b"0", b"k0005", b"new", b"k002", b"2"]


def test_krange_helpers_for_redis_py(r: redis.Redis) -> None:
    from shaledb.client.krange import iter_krange, krange

    r.mset({f"user:{i:03d}": f"name{i}" for i in range(25)})
    r.mset({"other": "x", "zzz": "y"})
    assert krange(r, "[user:", "(user;", limit=2) == [
        (b"user:000", b"name0"), (b"user:001", b"name1")]
    assert krange(r, "[user:", "(user;", limit=1, rev=True) == [(b"user:024", b"name24")]
    keys = [k for k, _ in iter_krange(r, "[user:", "(user;", page=4)]
    assert keys == [f"user:{i:03d}".encode() for i in range(25)]
    back = [k for k, _ in iter_krange(r, "[user:", "(user;", page=7, rev=True)]
    assert back == keys[::-1]
    assert len(list(iter_krange(r))) == 27


def test_kdelrange(r: redis.Redis) -> None:
    r.mset({f"k{i:02d}": str(i) for i in range(20)})
    r.mset({"a": "x", "z": "y"})
    assert r.execute_command("KDELRANGE", "[k05", "(k10") == 5
    assert r.execute_command("KDELRANGE", "[k05", "(k10") == 0
    assert r.execute_command("KDELRANGE", "[k", "(l", "LIMIT", "4") == 4
    # The first four keys of the range went (k00-k03); k05-k09 were gone already.
    left = [f"k{i:02d}".encode() for i in (4, *range(10, 20))]
    assert sorted(r.keys()) == [b"a", *left, b"z"]
    assert r.execute_command("KDELRANGE", "+", "-") == 0
    assert r.execute_command("KDELRANGE", "-", "+", "LIMIT", "0") == 0
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("KDELRANGE", "-", "+", "LIMIT")
    with pytest.raises(redis.ResponseError, match="krange-max-limit"):
        r.execute_command("KDELRANGE", "-", "+", "LIMIT", "1000000")
    with pytest.raises(redis.ResponseError, match="not valid string range item"):
        r.execute_command("KDELRANGE", "k", "+")
    # One atomic write: a watcher of a deleted key sees it, keys outside stay.
    w = r.pipeline(transaction=True)
    w.watch("k15")
    assert r.execute_command("KDELRANGE", "-", "+") == 13
    w.multi()
    w.set("k15", "again")
    with pytest.raises(redis.WatchError):
        w.execute()
    assert r.keys() == []
    # Without LIMIT at most krange-max-limit keys go, as KRANGE returns.
    r.mset({f"m{i}": "v" for i in range(5)})
    r.config_set("krange-max-limit", 3)
    assert r.execute_command("KDELRANGE", "-", "+") == 3
    assert r.keys() == [b"m3", b"m4"]
    with pytest.raises(redis.ResponseError, match="krange-max-limit"):
        r.execute_command("KDELRANGE", "-", "+", "LIMIT", "4")


def test_kdelrange_is_one_atomic_batch_and_pages_large_ranges(server, r: redis.Redis) -> None:
    from shaledb.client.krange import kdelrange

    r.mset({f"u:{i:05d}": "v" for i in range(2500)})
    r.set("w", "keep")
    before = server.call(lambda: server.server.db.stats()["wal_records"])
    assert r.execute_command("KDELRANGE", "[u:", "(u;", "LIMIT", "1000") == 1000
    assert server.call(lambda: server.server.db.stats()["wal_records"]) - before == 1
    assert kdelrange(r, "[u:", "(u;", limit=600) == 1500
    assert r.keys() == [b"w"]


def test_kbatch(server, r: redis.Redis) -> None:
    from shaledb.client.krange import kbatch

    r.set("gone", "1")
    before = server.call(lambda: server.server.db.stats()["wal_records"])
    assert r.execute_command("KBATCH", "SET", "a", "1", "SET", "b", "2", "PX", "60000",
                             "DEL", "gone", "SET", "px", "3") == 4
    assert server.call(lambda: server.server.db.stats()["wal_records"]) - before == 1
    assert r.mget("a", "b", "gone", "px") == [b"1", b"2", None, b"3"]
    assert r.ttl("a") == -1 and 0 < r.pttl("b") <= 60000
    # Any bad operation rejects the whole batch: nothing is written.
    for bad in (["SET", "c", "1", "FOO", "x"], ["SET", "c"], ["DEL"], ["SET", "c", "1", "PX", "-5"],
                ["SET", "c", "1", "PX", "abc"], ["SET", "c", "1", "DEL", "k" * 70_000]):
        with pytest.raises(redis.ResponseError):
            r.execute_command("KBATCH", *bad)
        assert r.get("c") is None
    assert r.get("a") == b"1"
    assert kbatch(r, [("set", "c", "3"), ("del", "a"), ("set", "d", "4", 5000)]) == 3
    assert r.mget("a", "c", "d") == [None, b"3", b"4"]
    assert kbatch(r, []) == 0
    with pytest.raises(ValueError):
        kbatch(r, [("incr", "a")])
