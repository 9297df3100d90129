"""Issue 10, items 5 and 6: large values must not slow key walks, and APPEND/SETRANGE must
write what they change, not the whole value.

Strings longer than 64 KiB are chunked (docs/format.md, "Server keyspace", version 3): a
small header under the key, the bytes in chunk records outside every database's range, and
garbage records that the purger turns into chunk deletions. These tests talk to real servers
over loopback sockets (in-process threads, or ``shaledb serve`` subprocesses where a SIGKILL
or a CPU measurement needs a process of its own), compare every string command with a real
``redis-server`` on chunked values, and check that the chunk region never leaks.

The first tests (WAL bytes of APPEND, walk and PING latencies, idle CPU, DBSIZE speed) use
only the protocol and INFO, so they run against the code before the change too, where they
failed: 400 MiB of WAL for the appends, RANDOMKEY 0.6-0.9 s, PING p99 0.18-0.28 s, idle CPU
23-37%, DBSIZE O(keys).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import shaledb

from ._server_support import (
    HOST,
    ServerThread,
    free_port,
    real_redis,
    run_server_process,
    wait_until,
)

# Latency and wall-clock bounds: `make test` runs these alone, after the parallel run.
pytestmark = pytest.mark.timing

MiB = 1 << 20
#: The chunk size of the layout under test (a module constant of keyspace.py; repeated
#: here so that the protocol-only tests also run against the code before chunking).
CHUNK = 64 * 1024


def _wait(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    wait_until(cond, timeout, what, 0.02)


def _client(port: int, db: int = 0) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, db=db, socket_timeout=60)


def _wal_written(r: redis.Redis) -> int:
    return int(r.info("shaledb")["wal_bytes_written"])


def _timed(fn: Callable[[], Any], n: int, pause: float = 0.0) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        if pause:
            time.sleep(pause)
    return sorted(out)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- item 6: APPEND writes what it appends -----------------------------------------------------

def test_fifty_one_byte_appends_to_an_8_mib_value_write_at_most_a_chunk_each(server) -> None:
    """Before: every APPEND rewrote the whole value (50 x 8 MiB = 400 MiB of WAL, 40-70 ms of
    loop each). Now an APPEND writes the last, partial chunk plus what it appends."""
    r = server.client()
    size = 8 * MiB + 40_000  # the last chunk is partial: each append rewrites it
    r.set("big", b"v" * size)
    before = _wal_written(r)
    for i in range(50):
        assert r.append("big", b"%d" % (i % 10)) == size + i + 1
    grown = _wal_written(r) - before
    assert grown <= 50 * (CHUNK + 1024), f"50 one-byte APPENDs wrote {grown} WAL bytes"
    assert r.strlen("big") == size + 50
    assert r.getrange("big", size - 3, -1) == b"vvv" + b"0123456789" * 5
    assert r.getrange("big", 0, 9) == b"v" * 10


def test_setrange_and_getrange_touch_only_their_chunks(server) -> None:
    r = server.client()
    size = 4 * MiB + 123
    r.set("big", b"a" * size)
    before = _wal_written(r)
    assert r.setrange("big", 2 * MiB + 5, b"PATCH") == size
    assert _wal_written(r) - before <= CHUNK + 1024
    assert r.getrange("big", 2 * MiB, 2 * MiB + 11) == b"aaaaaPATCHaa"
    # Across a chunk boundary, and past the end (zero-padded).
    r.setrange("big", 3 * CHUNK - 2, b"XYZW")
    assert r.getrange("big", 3 * CHUNK - 3, 3 * CHUNK + 2) == b"aXYZWa"
    assert r.setrange("big", size + 10, b"end") == size + 13
    assert r.getrange("big", size - 1, -1) == b"a" + bytes(10) + b"end"


# -- item 5: key walks never touch large values ------------------------------------------------

@pytest.fixture
def big_values_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A `shaledb serve` process holding 1,000 small keys, 100 keys with a (long) TTL (so
    the expiry sweeper is awake), a live 32 MiB value and a deleted one whose bytes a table
    still holds (SAVE flushed it before the DEL)."""
    port = free_port()
    proc = run_server_process(tmp_path / "db", port)
    try:
        r = _client(port)
        r.mset({f"k{i:05d}": b"v" * 100 for i in range(1000)})
        with r.pipeline(transaction=False) as p:
            for i in range(100):
                p.set(f"t{i:03d}", b"v", ex=3600)
            p.execute()
        r.set("live", b"L" * (32 * MiB))
        r.set("dead", b"D" * (32 * MiB))
        r.execute_command("SAVE")
        r.delete("dead")
        time.sleep(1.0)  # a few sweeper ticks, the purger's first steps
        yield proc, port
    finally:
        proc.kill()
        proc.wait(10)


def test_key_walks_stay_fast_next_to_large_values(big_values_server) -> None:
    """Before: each walk decoded (and copied) the 32 MiB values: RANDOMKEY 0.6-0.9 s, SCAN
    0.3 s, DBSIZE 0.5-0.9 s. Now they read headers only."""
    _, port = big_values_server
    r = _client(port)
    for name, fn in (("RANDOMKEY", r.randomkey),
                     ("SCAN", lambda: r.scan(0, count=100)),
                     ("KEYS", lambda: r.keys("k0001*")),
                     ("DBSIZE", r.dbsize)):
        times = _timed(fn, 40)
        assert statistics.median(times) < 0.025, f"{name} median {times[len(times) // 2]}"
        assert times[-2] < 0.1, f"{name} slowest runs {times[-3:]}"
    assert r.dbsize() == 1101
    assert r.strlen("live") == 32 * MiB and r.exists("dead") == 0


def test_ping_p99_and_idle_cpu_stay_low_next_to_large_values(big_values_server) -> None:
    """Before: the sweeper copied the 32 MiB values every tick: PING p99 0.18-0.28 s, idle
    CPU 23-37% of a core."""
    proc, port = big_values_server
    r = _client(port)
    times = _timed(r.ping, 1000, pause=0.001)
    p99 = times[int(len(times) * 0.99) - 1]
    c0, t0 = _cpu_seconds(proc.pid), time.monotonic()
    time.sleep(3.0)
    cpu = (_cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
    assert (p99 < 0.03, cpu < 0.15) == (True, True), \
        f"PING p99 {p99 * 1000:.1f} ms, idle server used {cpu:.0%} of a core"


def test_dbsize_is_constant_time_and_exact(server) -> None:
    """Before: DBSIZE counted the keys one by one (O(n)). Now it reads the database's count
    record, kept in the same write batch as every write."""
    r = server.client()
    with r.pipeline(transaction=False) as p:
        for i in range(0, 100_000, 2_000):
            p.mset({b"key:%06d" % j: b"x" for j in range(i, i + 2_000)})
        p.execute()
    r.set("large", b"L" * (3 * MiB))
    r.execute_command("SAVE")
    times = _timed(r.dbsize, 20)
    assert statistics.median(times) < 0.02, f"DBSIZE median {statistics.median(times)}"
    assert r.dbsize() == 100_001
    r.delete("key:000000", "key:000001", "missing", "large")
    r.set("key:000002", "overwritten")
    r.rename("key:000003", "renamed")
    r.move("key:000004", 5)
    r.copy("key:000005", "copied", destination_db=7)
    assert r.dbsize() == 99_997
    assert server.client(db=5).dbsize() == 1 and server.client(db=7).dbsize() == 1
    r.flushdb()
    assert r.dbsize() == 0


# -- exact semantics on chunked values, against a real redis-server ----------------------------

@pytest.fixture
def redis7(tmp_path: Path) -> Iterator[redis.Redis]:
    """A real redis-server on loopback (skips when it is not installed)."""
    with real_redis(tmp_path) as client:
        yield client


def _reply(client: redis.Redis, args: tuple[Any, ...]) -> Any:
    try:
        return client.execute_command(*args)
    except redis.ResponseError as exc:
        return ("error", str(exc))


def _normalize(args: tuple[Any, ...], reply: Any) -> Any:
    """TTLs run on two clocks: compare only missing (-2), none (-1), or positive."""
    if args[0] in ("TTL", "PTTL") and isinstance(reply, int) and reply > 0:
        return "positive"
    return reply


def _random_value(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 7, 100, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5,
                       rng.randrange(1, 300_000), 1_100_000])
    return rng.randbytes(size)


def _random_command(rng: random.Random, keys: list[str]) -> tuple[Any, ...]:
    k, k2 = rng.choice(keys), rng.choice(keys)
    value = _random_value
    c = rng.randrange(31)
    if c < 4:
        opts: list[Any] = []
        if rng.random() < 0.3:
            opts += rng.choice([["EX", 1000], ["PX", 900_000], ["KEEPTTL"]])
        if rng.random() < 0.3:
            opts.append("GET")
        if rng.random() < 0.2:
            opts.append(rng.choice(["NX", "XX"]))
        return ("SET", k, value(rng), *opts)
    if c < 7:
        return ("APPEND", k, value(rng) if rng.random() < 0.3 else rng.randbytes(
            rng.randrange(1, 3000)))
    if c < 10:
        return ("SETRANGE", k, rng.choice([0, 5, CHUNK - 3, CHUNK, rng.randrange(400_000)]),
                rng.randbytes(rng.choice([1, 10, CHUNK + 7, rng.randrange(1, 5000)])))
    if c < 13:
        a = rng.choice([0, 1, -1, -10, CHUNK - 2, CHUNK, 3 * CHUNK, -CHUNK - 5, 10**6])
        b = rng.choice([0, -1, 10, CHUNK + 1, 2 * CHUNK, -2, 10**7, a + 100])
        return ("GETRANGE", k, a, b)
    simple = [("GET", k), ("STRLEN", k), ("INCR", k), ("INCRBYFLOAT", k, "1.5"),
              ("GETSET", k, value(rng)), ("GETDEL", k), ("GETEX", k, "EX", 500),
              ("GETEX", k, "PERSIST"), ("EXPIRE", k, 1000), ("PERSIST", k), ("TTL", k),
              ("COPY", k, k2), ("COPY", k, k2, "REPLACE"), ("COPY", k, k2, "DB", 1),
              ("RENAME", k, k2), ("RENAMENX", k, k2), ("MOVE", k, 1), ("DEL", k),
              ("EXISTS", k, k2), ("DBSIZE",), ("MSET", k, value(rng), k2, value(rng)),
              ("MGET", k, k2), ("SETNX", k, value(rng)), ("SWAPDB", 0, 1)]
    if rng.random() < 0.02:
        return ("FLUSHDB",)
    return rng.choice(simple)


def _contents(client: redis.Redis) -> dict[int, dict[bytes, tuple[bytes, bool]]]:
    out = {}
    for db in (0, 1):
        client.execute_command("SELECT", db)
        out[db] = {k: (client.get(k), client.ttl(k) > 0) for k in sorted(client.keys("*"))}
    client.execute_command("SELECT", 0)
    return out


def _chunk_audit(st: ServerThread) -> tuple[dict[int, int], dict[int, int], int]:
    """(chunk sets named by live headers: id -> chunks, chunk sets present in the chunk
    region: id -> chunks, garbage records), read on the server's loop."""
    from shaledb.server.keyspace.dbmap import CHUNK_PREFIX, GARBAGE_PREFIX, PHYSICAL_DATABASES
    from shaledb.server.keyspace.keyspace import chunk_count, chunk_key_parts, chunk_ref_of

    assert st.server is not None
    ks = st.server.keyspace

    def audit() -> tuple[dict[int, int], dict[int, int], int]:
        named: dict[int, int] = {}
        for phys in range(PHYSICAL_DATABASES):
            for _, raw in ks.raw_range(bytes((phys,)), bytes((phys + 1,))):
                ref = chunk_ref_of(raw)
                if ref is not None:
                    assert ref.id not in named, "two headers name one chunk set"
                    named[ref.id] = chunk_count(ref.length)
        present: dict[int, int] = {}
        for ck, _ in ks.raw_range(bytes((CHUNK_PREFIX,)), bytes((CHUNK_PREFIX + 1,))):
            cid, _index = chunk_key_parts(ck)
            present[cid] = present.get(cid, 0) + 1
        garbage = sum(1 for _ in ks.raw_range(bytes((GARBAGE_PREFIX,)),
                                               bytes((GARBAGE_PREFIX + 1,))))
        return named, present, garbage

    result: tuple[dict[int, int], dict[int, int], int] = st.call(audit)
    return result


def _assert_no_leak(st: ServerThread) -> None:
    """Once the purger ran, the chunk region holds exactly the chunks of live headers."""
    assert st.server is not None
    ks = st.server.keyspace
    _wait(lambda: not st.call(lambda: ks.purger.busy), what="the purger")
    named, present, garbage = _chunk_audit(st)
    assert garbage == 0
    assert present == named


def test_string_commands_on_chunked_values_match_redis(server, redis7) -> None:
    """A random mix of every string command (and the key commands that move values) on
    values around and far past the chunking threshold, against redis-server 7: every reply
    and the final contents are the same, and no chunk leaks."""
    ours = server.client(single_connection_client=True)
    rng = random.Random(20_260_110)
    keys = ["a", "b", "c", "d"]
    for step in range(700):
        args = _random_command(rng, keys)
        if rng.random() < 0.05:
            db = rng.randrange(2)
            assert _reply(ours, ("SELECT", db)) == _reply(redis7, ("SELECT", db))
        got, want = _reply(ours, args), _reply(redis7, args)
        assert _normalize(args, got) == _normalize(args, want), \
            (step, args[:2], str(got)[:200], str(want)[:200])
    assert _contents(ours) == _contents(redis7)
    ours.execute_command("SELECT", 0)
    _assert_no_leak(server)


def test_multi_exec_sees_its_own_chunks_and_undoes_a_failed_command(server,
                                                                     redis7) -> None:
    big = random.Random(7).randbytes(300_000)
    script: list[tuple[Any, ...]] = [
        ("SET", "k", big), ("APPEND", "k", b"tail"), ("GETRANGE", "k", 299_990, -1),
        ("SETRANGE", "k", CHUNK - 2, b"ACROSS"), ("INCR", "k"), ("STRLEN", "k"),
        ("RENAME", "k", "r"), ("COPY", "r", "c"), ("APPEND", "c", b"!"), ("GET", "r"),
        ("GETRANGE", "c", -3, -1), ("SET", "k", b"small"), ("DBSIZE",), ("GETDEL", "c")]
    replies = []
    for client in (server.client(), redis7):
        with client.pipeline(transaction=True) as p:
            for args in script:
                p.execute_command(*args)
            replies.append(p.execute(raise_on_error=False))
    ours, theirs = ([str(x) if isinstance(x, Exception) else x for x in rs] for rs in replies)
    assert ours == theirs
    assert server.client().get("r") == redis7.get("r")
    _assert_no_leak(server)


# -- garbage: nothing leaks, whatever drops a header -------------------------------------------

def test_no_chunk_leaks_after_overwrite_delete_expire_flush_and_moves(server) -> None:
    r = server.client()
    r1 = server.client(db=1)
    value = b"x" * (5 * CHUNK + 17)
    for i in range(8):
        r.set(f"k{i}", value)
    r.set("k0", b"small")                      # overwritten by an inline string
    r.set("k1", value + b"again")              # overwritten by another chunked string
    r.delete("k2")
    r.unlink("k3")
    r.getdel("k4")
    r.set("k5", value, px=50)                   # expires; the sweeper deletes it
    r.rename("k6", "k6b")                       # keeps its chunks
    r.copy("k6b", "k6c")                        # new chunks
    r.move("k7", 1)                             # keeps its chunks
    r1.set("f1", value)
    r1.set("f2", value)
    r.expire("k6c", -1)                         # a past expiry deletes
    time.sleep(0.2)
    assert r.get("k5") is None
    r1.flushdb()                                # the purger releases f1's and f2's chunks
    r.set("keep", value)
    r.swapdb(0, 2)
    _assert_no_leak(server)
    r2 = server.client(db=2)
    assert sorted(r2.keys()) == [b"k0", b"k1", b"k6b", b"keep"]
    assert r2.get("k6b") == value and r2.get("k1") == value + b"again"
    assert r1.dbsize() == 0 and r.dbsize() == 0
    named, _, _ = _chunk_audit(server)
    assert sorted(named.values()) == [6, 6, 6]


def test_krange_kbatch_and_kdelrange_on_chunked_values(server) -> None:
    r = server.client()
    big = random.Random(5).randbytes(3 * CHUNK + 99)
    assert r.execute_command("KBATCH", "SET", "a", big, "SET", "b", b"small",
                             "SET", "c", big + b"c") == 3
    assert r.execute_command("KRANGE", "-", "+") == [b"a", big, b"b", b"small",
                                                    b"c", big + b"c"]
    assert r.execute_command("KRANGE", "-", "+", "REV", "LIMIT", 1) == [b"c", big + b"c"]
    assert r.execute_command("KDELRANGE", "[a", "[b") == 2
    assert r.keys() == [b"c"] and r.dbsize() == 1
    _assert_no_leak(server)
    assert sorted(_chunk_audit(server)[1].values()) == [4]


def test_the_sweeper_settles_the_turn_before_freeing_chunks(server) -> None:
    """A write buffered in the turn's shared transaction (here a PERSIST of a chunked string
    about to expire, made while it was live) must be committed before the sweeper judges the
    string expired and frees its chunks: else the PERSIST, committed after, would leave a
    live header naming deleted chunks."""
    assert server.server is not None
    srv = server.server
    r = server.client()
    value = b"s" * (3 * CHUNK + 1)
    r.set("soon", value, px=300)

    def persist_then_sweep() -> None:
        txn = srv._turn.txn  # the turn's shared transaction, as a client's PERSIST uses it
        txn.mark()
        e = txn.get(0, b"soon")
        assert e is not None
        txn.set_entry(0, b"soon", e, 0)
        time.sleep(0.35)  # expired by now, on the sweeper's clock
        srv.keyspace.sweeper.step(10_000, 10.0)
        srv._turn.commit()

    server.call(persist_then_sweep)
    _assert_no_leak(server)
    assert r.get("soon") == value and r.ttl("soon") == -1


def test_flushall_releases_the_chunks_of_every_database(server) -> None:
    r = server.client()
    for db in range(4):
        c = server.client(db=db)
        for i in range(3):
            c.set(f"v{i}", b"y" * (2 * CHUNK + db))
    r.flushall()
    _assert_no_leak(server)
    assert _chunk_audit(server)[1] == {}


# -- crash: acknowledged appends survive, nothing is torn, nothing leaks -----------------------

def _appender(port: int, keys: list[bytes], acked: dict[bytes, list[bytes]],
              inflight: dict[bytes, bytes | None], stop: threading.Event, seed: int,
              errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    c = _client(port)
    try:
        while not stop.is_set():
            k = rng.choice(keys)
            if sum(map(len, acked[k])) > 4 * MiB:
                continue  # stay far below proto-max-bulk-len
            piece = rng.randbytes(rng.choice([1, 100, 5000, CHUNK + 3, 150_000]))
            inflight[k] = piece
            c.append(k, piece)
            acked[k].append(piece)
            inflight[k] = None
    except (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError):
        pass  # the SIGKILL
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_sigkill_during_appends_keeps_every_acknowledged_append(tmp_path: Path) -> None:
    data = tmp_path / "db"
    port = free_port()
    keys = [b"s0", b"s1", b"s2"]
    acked: dict[bytes, list[bytes]] = {k: [] for k in keys}
    proc = run_server_process(data, port)
    try:
        c = _client(port)
        for k in keys:
            first = random.Random(k[1]).randbytes(CHUNK * 2 + 11)
            c.set(k, first)
            acked[k].append(first)
        for cycle in range(4):
            inflight: dict[bytes, bytes | None] = {k: None for k in keys}
            stop = threading.Event()
            errors: list[BaseException] = []
            t = threading.Thread(target=_appender,
                                 args=(port, keys, acked, inflight, stop, cycle, errors))
            t.start()
            time.sleep(0.3 + 0.4 * random.Random(cycle).random())
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            stop.set()
            t.join(30)
            assert errors == []
            proc = run_server_process(data, port)
            c = _client(port)
            for k in keys:
                got = c.get(k)  # a torn value (header and chunks apart) is an error
                assert got is not None
                want = b"".join(acked[k])
                piece = inflight[k]
                if got != want:
                    # The append in flight at the kill may have been applied.
                    assert piece is not None and got == want + piece, (cycle, k, len(got),
                                                                      len(want))
                    acked[k].append(piece)
        # Let the purger finish (its garbage came from nothing here but the values' own
        # overwrite-free appends: there must be none), stop, and audit the raw data.
        _wait(lambda: _client(port).info("shaledb")["chunk_garbage_pending"] == 0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _audit_directory(data, {k: b"".join(v) for k, v in acked.items()})
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _audit_directory(path: Path, expected: dict[bytes, bytes]) -> None:
    """Open a stopped server's directory: every header's chunks are all there with the
    lengths the header implies, and the chunk region holds nothing else."""
    from shaledb.server.keyspace.dbmap import CHUNK_PREFIX, GARBAGE_PREFIX, MAP_KEY, decode_map
    from shaledb.server.keyspace.keyspace import (
        CHUNK_SIZE,
        chunk_count,
        chunk_key_parts,
        chunk_ref_of,
    )

    with shaledb.open(path) as db:
        phys = decode_map(db.get(MAP_KEY))[0]
        named = {}
        for ek, raw in db.range(bytes((phys,)), bytes((phys + 1,))):
            ref = chunk_ref_of(raw)
            assert ref is not None and ek[1:] in expected
            assert ref.length == len(expected[ek[1:]])
            named[ref.id] = ref
        seen: dict[int, list[int]] = {}
        for ck, chunk in db.range(bytes((CHUNK_PREFIX,)), bytes((CHUNK_PREFIX + 1,))):
            cid, index = chunk_key_parts(ck)
            assert cid in named, f"chunk set {cid:#x} leaked"
            ref = named[cid]
            assert len(chunk) == min(CHUNK_SIZE, ref.length - index * CHUNK_SIZE)
            seen.setdefault(cid, []).append(index)
        for cid, ref in named.items():
            assert seen.get(cid) == list(range(chunk_count(ref.length)))
        assert next(db.range(bytes((GARBAGE_PREFIX,)), bytes((GARBAGE_PREFIX + 1,))),
                    None) is None


def test_sigkill_during_overwrites_leaks_no_chunk(tmp_path: Path) -> None:
    """Overwrites and deletions of chunked strings killed at random moments: once the
    restarted server's purger has run, the chunk region holds only live chunks."""
    data = tmp_path / "db"
    port = free_port()
    proc = run_server_process(data, port)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        rng = random.Random(3)
        c = _client(port)
        try:
            while not stop.is_set():
                k = f"w{rng.randrange(6)}"
                op = rng.randrange(4)
                if op == 0:
                    c.delete(k)
                elif op == 1:
                    c.rename(k, f"w{rng.randrange(6)}") if c.exists(k) else None
                else:
                    c.set(k, rng.randbytes(rng.choice([CHUNK + 1, 3 * CHUNK, 200_000])))
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError):
            pass  # the SIGKILL
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    try:
        for cycle in range(3):
            stop.clear()
            t = threading.Thread(target=churn)
            t.start()
            time.sleep(0.5 + 0.3 * cycle)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            stop.set()
            t.join(30)
            assert errors == []
            proc = run_server_process(data, port)
        c = _client(port)
        expected = {k: c.get(k) for k in c.keys("*")}
        _wait(lambda: _client(port).info("shaledb")["chunk_garbage_pending"] == 0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _audit_directory(data, expected)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- the keyspace itself: encodings, garbage steps, counts, upgrade ----------------------------

def test_value_and_record_layouts_are_the_documented_bytes() -> None:
    from shaledb.server.keyspace.keyspace import (
        CHUNK_SIZE,
        ChunkRef,
        chunk_count,
        chunk_key,
        encode_garbage,
        encode_header,
        garbage_key,
    )

    ref = ChunkRef(0x0102030405060708, 0x1_0000_0001)
    assert encode_header(ref, 0) == (b"\x01" + (0x1_0000_0001).to_bytes(8, "big")
                                     + (0x0102030405060708).to_bytes(8, "big"))
    assert encode_header(ref, 1234) == (b"\x81" + (1234).to_bytes(8, "big")
                                        + encode_header(ref, 0)[1:])
    assert chunk_key(5, 7) == b"\xf0" + (5).to_bytes(8, "big") + (7).to_bytes(4, "big")
    assert garbage_key(5) == b"\xf1" + (5).to_bytes(8, "big")
    assert encode_garbage(9) == (9).to_bytes(8, "big")
    # docs/format.md's example: a 200,000-byte string in chunk set 7.
    assert encode_header(ChunkRef(7, 200_000), 0) == bytes.fromhex(
        "01 00 00 00 00 00 03 0D 40 00 00 00 00 00 00 00 07")
    assert chunk_key(7, 3) == bytes.fromhex("F0 00 00 00 00 00 00 00 07 00 00 00 03")
    assert chunk_count(200_000) == 4 and 200_000 - 3 * CHUNK_SIZE == 3392


def test_garbage_is_deleted_from_the_top_in_bounded_crash_safe_steps(tmp_path: Path) -> None:
    from shaledb.server.keyspace.keyspace import (
        CHUNK_SIZE,
        Keyspace,
        chunk_key,
        decode_garbage,
        garbage_key,
    )

    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        txn = ks.begin()
        txn.set(0, b"k", b"z" * (7 * CHUNK_SIZE))
        txn.commit()
        ref = ks.begin().get(0, b"k").chunks  # type: ignore[union-attr]
        assert ref is not None
        txn = ks.begin()
        txn.delete(0, b"k")
        txn.commit()
        assert decode_garbage(db.get(garbage_key(ref.id)) or b"") == 7
        assert ks.purger.collect(3) is True          # chunks 4, 5, 6 go; 4 left to do
        assert decode_garbage(db.get(garbage_key(ref.id)) or b"") == 4
        assert [db.get(chunk_key(ref.id, i)) is not None for i in range(7)] == \
            [True] * 4 + [False] * 3
        ks2 = Keyspace(db)                           # a restart resumes from the record
        assert ks2.garbage_pending
        assert ks2.purger.collect(10) is False
        assert db.get(garbage_key(ref.id)) is None
        assert next(db.range(b"\xf0", b"\xf2"), None) is None
        assert ks2.purger.purged_chunks == 4


def test_the_purger_does_not_rescan_deleted_garbage_records(tmp_path: Path) -> None:
    """Garbage records come and go like a queue. Scanning the garbage range for the next
    one skipped the tombstones of every record deleted before (until compaction), so each
    step got slower: 6,000 overwrites of chunked strings cost O(n^2). The purger now
    follows the ids the writes listed, with point reads."""
    from shaledb.server.keyspace.keyspace import Keyspace, encode_garbage, garbage_key
    from shaledb.server.keyspace.purge import PURGE_CHUNK

    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        t0 = time.perf_counter()
        for cid in range(1, 6001):
            b = shaledb.WriteBatch()
            b.put(garbage_key(cid), encode_garbage(1))
            ks.write(b, garbage=[cid])
            assert ks.purger.collect(PURGE_CHUNK) is False
        elapsed = time.perf_counter() - t0
        assert elapsed < 2.0, f"6,000 garbage records took {elapsed:.1f} s"
        assert next(db.range(b"\xf0", b"\xf2"), None) is None


def test_garbage_past_the_list_bound_is_found_by_a_scan(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    from shaledb.server.keyspace import keyspace as keyspace_module
    from shaledb.server.keyspace import purge as purge_module
    from shaledb.server.keyspace.keyspace import CHUNK_SIZE, Keyspace

    monkeypatch.setattr(keyspace_module, "GARBAGE_LIST_MAX", 2)
    monkeypatch.setattr(purge_module, "GARBAGE_LIST_MAX", 2)
    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        txn = ks.begin()
        for i in range(5):
            txn.set(0, b"k%d" % i, b"c" * (2 * CHUNK_SIZE + i))
        txn.commit()
        txn = ks.begin()
        for i in range(5):
            txn.delete(0, b"k%d" % i)
        txn.commit()
        assert len(ks.garbage_ids) == 2 and ks.garbage_unlisted
        steps = 0
        while ks.purger.collect(3):
            steps += 1
        assert steps >= 4 and not ks.garbage_pending
        assert next(db.range(b"\xf0", b"\xf2"), None) is None
        assert ks.purger.purged_chunks == 2 + 4 * 3  # k0 is exactly two chunks long


def test_expired_keys_met_by_reads_are_bounded(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads remember the expired keys they meet (DBSIZE leaves them out at once, as Redis,
    which deletes them on access), at most LAZY_EXPIRED_MAX of them; the sweeper deletes
    them, remembered or not."""
    from shaledb.server.keyspace import keyspace as keyspace_module
    from shaledb.server.keyspace.keyspace import Keyspace

    monkeypatch.setattr(keyspace_module, "LAZY_EXPIRED_MAX", 2)
    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        txn = ks.begin()
        for i in range(4):
            txn.set(0, b"e%d" % i, b"v", txn.now + 30)
        txn.set(0, b"stay", b"v")
        txn.commit()
        time.sleep(0.05)
        txn = ks.begin()
        assert [txn.get(0, b"e%d" % i) for i in range(4)] == [None] * 4
        assert len(ks.lazy_expired) == 2
        assert txn.key_count(0) == 3 and ks.key_counts() == {0: (3, 2)}
        ks.sweeper.step(10_000, 10.0)
        assert not ks.lazy_expired and ks.expired_keys == 4
        assert ks.begin().key_count(0) == 1 and ks.key_counts() == {0: (1, 0)}


def test_a_transaction_writes_no_chunk_nothing_names(tmp_path: Path) -> None:
    from shaledb.server.keyspace.keyspace import CHUNK_SIZE, Keyspace

    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        txn = ks.begin()
        txn.set(0, b"k", b"a" * (3 * CHUNK_SIZE))    # chunks buffered ...
        txn.set(0, b"k", b"small")                   # ... and orphaned before the commit
        mark = txn.mark()
        txn.set(0, b"u", b"b" * (2 * CHUNK_SIZE))
        txn.undo(mark)                               # a failed command's chunks go too
        txn.commit()
        assert next(db.range(b"\xf0", b"\xf2"), None) is None
        assert ks.begin().get(0, b"k") == (b"small", 0) and ks.counts[ks.map[0]] == (1, 0)


def test_counts_stay_exact_under_random_writes(tmp_path: Path) -> None:
    """Random sets (inline and chunked, with and without expiry), deletes, renames, moves,
    copies, appends, flushes and swaps, some undone: after every commit the count records
    equal a full count of the raw entries, and the chunk region matches the headers."""
    from shaledb.server.keyspace.dbmap import CHUNK_PREFIX, count_key, decode_counts
    from shaledb.server.keyspace.keyspace import (
        CHUNK_SIZE,
        Keyspace,
        chunk_count,
        chunk_ref_of,
        expiry_of,
    )

    rng = random.Random(11)
    with shaledb.open(tmp_path / "db") as db:
        ks = Keyspace(db)
        for _ in range(300):
            txn = ks.begin()
            for _ in range(rng.randrange(1, 6)):
                mark = txn.mark()
                d, k = rng.randrange(3), b"k%d" % rng.randrange(8)
                op = rng.randrange(9)
                size = rng.choice([3, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 9])
                e = txn.get(d, k)
                if op < 3:
                    txn.set(d, k, rng.randbytes(size), rng.choice([0, txn.now + 10**6]))
                elif op == 3:
                    txn.delete(d, k)
                elif op == 4 and e is not None:
                    txn.delete(d, k)
                    txn.set_entry(d, b"r" + k, e, e.expire_ms)
                elif op == 5 and e is not None:
                    copy = rng.random() < 0.5  # COPY, or MOVE (keeps the chunk set)
                    txn.set_entry((d + 1) % 3, k, e, e.expire_ms, copy=copy)
                    if not copy:
                        txn.delete(d, k)
                elif op == 6:
                    txn.append(d, k, e, rng.randbytes(rng.choice([1, CHUNK_SIZE])))
                elif op == 7 and rng.random() < 0.2:
                    if rng.random() < 0.7:
                        txn.flush(d)
                    else:
                        txn.swap(d, (d + 1) % 3)
                if rng.random() < 0.1:
                    txn.undo(mark)
            txn.commit()
            while ks.purger.queue:
                ks.purger.step(10_000)
            for d in range(3):
                phys = ks.map[d]
                raws = [raw for _, raw in ks.raw_range(bytes((phys,)), bytes((phys + 1,)))]
                want = (len(raws), sum(expiry_of(raw) != 0 for raw in raws))
                assert ks.counts[phys] == want == decode_counts(db.get(count_key(phys)))
        while ks.purger.collect(10_000):
            pass
        named = {}
        for phys in ks.map:
            for _, raw in ks.raw_range(bytes((phys,)), bytes((phys + 1,))):
                ref = chunk_ref_of(raw)
                if ref is not None:
                    named[ref.id] = chunk_count(ref.length)
        present: dict[int, int] = {}
        for ck, _ in ks.raw_range(bytes((CHUNK_PREFIX,)), bytes((CHUNK_PREFIX + 1,))):
            cid = int.from_bytes(ck[1:9], "big")
            present[cid] = present.get(cid, 0) + 1
        assert present == named


def test_a_version_2_directory_is_upgraded_once(tmp_path: Path,
                                               server_factory: Callable[..., ServerThread]
                                               ) -> None:
    """Values the old server wrote with the engine's expiry are rewritten without it (the
    engine would drop them at compaction behind the counts' back), the counts are taken,
    and the version 2 map makes an older server refuse the directory."""
    import struct

    path = tmp_path / "old"
    soon = int(time.time() * 1000) + 3000
    later = int(time.time() * 1000) + 600_000
    with shaledb.open(path) as db, db.batch() as b:
        for i in range(50):
            b.put(b"\x00k%02d" % i, b"\x00v")
        b.put(b"\x00soon", b"\x80" + struct.pack(">Q", soon) + b"s", expire_at_ms=soon)
        b.put(b"\x02later", b"\x80" + struct.pack(">Q", later) + b"l", expire_at_ms=later)
    st = server_factory(dir=str(path))
    r = st.client()
    assert r.dbsize() == 51 and st.client(db=2).dbsize() == 1
    assert r.info("keyspace")["db2"] == {"keys": 1, "expires": 1, "avg_ttl": 0}
    assert st.client(db=2).pexpiretime("later") == later
    assert st.call(lambda: st.server.db.ttl(b"\x02later")) is None  # type: ignore[union-attr]
    _wait(lambda: r.dbsize() == 50, what="the sweeper deleting the expired key")
    st.stop()
    with shaledb.open(path) as db:
        assert db.get(b"\xffdbmap") == b"\x06\x10" + bytes(range(16))


def test_an_old_directory_opened_read_only_is_refused_with_a_reason(tmp_path: Path) -> None:
    """The upgrade writes; a read-only engine cannot, so the server says what to do rather
    than serve counts it does not have. A fresh directory needs no upgrade."""
    from shaledb.errors import IncompatibleFormatError
    from shaledb.server.keyspace.keyspace import Keyspace

    path = tmp_path / "old"
    with shaledb.open(path) as db:
        db.put(b"\x00k", b"\x00v")
    with shaledb.open(path, read_only=True) as db, \
            pytest.raises(IncompatibleFormatError, match="open it writable once"):
        Keyspace(db)
    fresh = tmp_path / "fresh"
    shaledb.open(fresh).close()
    with shaledb.open(fresh, read_only=True) as db:
        ks = Keyspace(db)
        assert ks.key_counts() == {} and ks.map_pending

