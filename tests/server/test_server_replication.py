"""Replication (issue 15): real servers on loopback, redis-py clients. A primary and its
replicas run in-process (ServerThread) or as `shaledb serve` subprocesses where a test kills
them; every comparison is DUMP of every key, byte for byte."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shaledb.server.exec.replication import STATE_KEY

from ._server_support import HOST, ServerThread, free_port, run_server_process, wait_until
from ._tls_support import make_test_pki

Factory = Callable[..., ServerThread]


def _info(c: redis.Redis) -> dict[str, Any]:
    return c.info("replication")


def _synced(p: redis.Redis, r: redis.Redis) -> bool:
    ri = _info(r)
    return (ri.get("master_link_status") == "up"
            and ri["slave_repl_offset"] == _info(p)["master_repl_offset"])


def wait_synced(p: redis.Redis, r: redis.Redis, timeout: float = 30) -> None:
    wait_until(lambda: _synced(p, r), timeout, "the replica to catch up")


def dump_all(client: redis.Redis) -> dict[tuple[int, bytes], bytes | None]:
    """DUMP of every key of every logical database (and its TTL presence)."""
    out: dict[tuple[int, bytes], Any] = {}
    for db in range(16):
        kw = client.connection_pool.connection_kwargs
        c = redis.Redis(host=kw["host"], port=kw["port"], password=kw.get("password"),
                        db=db, socket_timeout=10)
        keys = list(c.scan_iter(count=1000))
        for i in range(0, len(keys), 1000):
            pipe = c.pipeline(transaction=False)
            for k in keys[i:i + 1000]:
                pipe.dump(k).pttl(k)
            res = pipe.execute()
            for j, k in enumerate(keys[i:i + 1000]):
                out[(db, k)] = (res[2 * j], res[2 * j + 1] > 0)
        c.close()
    return out


def assert_same_data(p: redis.Redis, r: redis.Redis) -> None:
    wait_synced(p, r)
    a, b = dump_all(p), dump_all(r)
    assert a.keys() == b.keys()
    # The replica's in-memory key counts follow the stream (DBSIZE, INFO keyspace).
    assert p.info("keyspace") == r.info("keyspace")
    for k in a:
        assert a[k][0] == b[k][0], k
        assert a[k][1] == b[k][1], k


def fill_all_types(c: redis.Redis, n: int = 200) -> None:
    for i in range(n):
        c.set(f"s{i}", f"v{i}" * (i % 7 + 1))
    c.set("big", os.urandom(300_000))  # a chunked string
    c.set("ttl", "x", px=3_600_000)
    c.hset("h", mapping={f"f{i}": i for i in range(100)})
    c.rpush("l", *range(100))
    c.sadd("set", *range(50))
    c.zadd("z", {f"m{i}": i / 3 for i in range(80)})
    c.xadd("st", {"a": "1"})
    c.xgroup_create("st", "g", id="0")
    c.pfadd("hll", *range(30))
    c.setbit("bits", 1000, 1)
    c.execute_command("SELECT", 3)
    c.set("in-db-3", "yes")
    c.execute_command("SELECT", 0)


def replica_of(factory: Factory, primary: ServerThread, **kw: Any) -> ServerThread:
    return factory(replicaof=f"{HOST} {primary.port}", **kw)


# -- sync and stream ------------------------------------------------------------------------

def test_full_sync_of_every_type_then_the_stream(server_factory: Factory) -> None:
    p = server_factory()
    pc = p.client()
    fill_all_types(pc)
    r = replica_of(server_factory, p)
    rc = r.client()
    assert_same_data(pc, rc)
    assert _info(pc)["sync_full"] == 1
    assert rc.dbsize() == pc.dbsize()
    # The stream after the snapshot: every kind of change, FLUSHDB and SWAPDB included.
    pc.incr("counter")
    pc.hdel("h", "f1")
    pc.lpop("l")
    pc.zrem("z", "m3")
    pc.delete("big")
    pc.set("big2", os.urandom(200_000))
    pc.swapdb(0, 5)
    pc.execute_command("SELECT", 3)
    pc.flushdb()
    pc.execute_command("SELECT", 0)
    assert_same_data(pc, rc)
    rc.execute_command("SELECT", 5)
    assert rc.get("s1") == b"v1v1"
    rc.execute_command("SELECT", 0)
    assert rc.execute_command("ROLE")[0] == b"slave"
    role = pc.execute_command("ROLE")
    assert role[0] == b"master" and len(role[2]) == 1


def test_writes_during_the_full_sync_reach_the_replica(server_factory: Factory) -> None:
    p = server_factory()
    pc = p.client()
    for i in range(3000):
        pc.set(f"pre{i}", os.urandom(200))
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        c = p.client()
        while not stop.is_set():
            c.set(f"during{written[0]}", written[0])
            c.incr("hits")
            written[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        r = replica_of(server_factory, p)
        rc = r.client()
        wait_until(lambda: _info(rc).get("master_link_status") == "up", 30, "link up")
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert written[0] > 0
    assert_same_data(pc, rc)
    assert int(rc.get("hits")) == written[0]


def test_exec_is_never_half_visible_on_the_replica(server_factory: Factory) -> None:
    p = server_factory()
    pc = p.client()
    pc.mset({"a": 0, "b": 0})
    r = replica_of(server_factory, p)
    rc = r.client()
    wait_synced(pc, rc)
    stop = threading.Event()
    torn: list[tuple[bytes, bytes]] = []
    reads = [0]

    def reader() -> None:
        c = r.client()
        while not stop.is_set():
            a, b = c.mget("a", "b")
            reads[0] += 1
            if a != b:
                torn.append((a, b))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 400):
            with pc.pipeline(transaction=True) as pipe:
                pipe.set("a", i).set("b", i).execute()
    finally:
        wait_synced(pc, rc)
        stop.set()
        t.join()
    assert reads[0] > 50 and torn == []
    assert rc.mget("a", "b") == [b"399", b"399"]


def test_replica_refuses_writes_and_serves_reads(server_factory: Factory) -> None:
    p = server_factory()
    pc = p.client()
    pc.set("k", "v")
    r = replica_of(server_factory, p)
    rc = r.client()
    wait_synced(pc, rc)
    assert rc.get("k") == b"v"
    with pytest.raises(redis.ReadOnlyError, match="read only replica"):
        rc.set("k", "x")
    with pytest.raises(redis.ResponseError, match="read only replica"):
        rc.eval("return redis.call('SET', KEYS[1], 'x')", 1, "k")
    assert rc.eval("return redis.call('GET', KEYS[1])", 1, "k") == b"v"
    with pytest.raises(redis.ResponseError, match="EXECABORT|read only"), \
            rc.pipeline(transaction=True) as pipe:
        pipe.set("k", "y").get("k").execute()
    with pytest.raises(redis.ResponseError, match="replica"):
        rc.execute_command("WAIT", 0, 0)
    assert rc.get("k") == b"v"
    # REPLICAOF NO ONE: a primary again, writable, with a new replication id.
    replid = _info(rc)["master_replid"]
    assert rc.execute_command("REPLICAOF", "NO", "ONE") == b"OK"
    assert rc.set("k", "mine")
    info = _info(rc)
    assert info["role"] == "master" and info["master_replid"] != replid


def test_redis_replicas_get_a_clear_error(server: ServerThread) -> None:
    c = server.client()
    with pytest.raises(redis.ResponseError, match="ShaleDB replicas only"):
        c.execute_command("PSYNC", "?", "-1")
    with pytest.raises(redis.ResponseError, match="ShaleDB replicas only"):
        c.execute_command("SYNC")


def test_a_real_redis_replica_is_refused(server: ServerThread, tmp_path: Path) -> None:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    log = tmp_path / "redis.log"
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", HOST,
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
                             "--logfile", str(log), "--replicaof", HOST, str(server.port)])
    try:
        wait_until(lambda: log.exists() and "ShaleDB replicas only" in log.read_text(),
                   20, "the Redis replica to log the refusal")
    finally:
        proc.terminate()
        proc.wait(10)


# -- resync ---------------------------------------------------------------------------------

def test_partial_resync_after_a_replica_restart(server_factory: Factory, tmp_path: Path
                                                ) -> None:
    p = server_factory()
    pc = p.client()
    fill_all_types(pc, 50)
    rdir = str(tmp_path / "replica")
    r = replica_of(server_factory, p, dir=rdir)
    rc = r.client()
    wait_synced(pc, rc)
    r.stop()
    for i in range(100):
        pc.set(f"while-down{i}", i)
    r2 = replica_of(server_factory, p, dir=rdir)
    rc2 = r2.client()
    assert_same_data(pc, rc2)
    info = _info(pc)
    assert info["sync_full"] == 1, info  # no second full sync
    assert info["sync_partial_ok"] == 1
    assert _info(rc2)["shaledb_partial_syncs_done"] == 1


def test_full_resync_after_the_backlog_overflowed(server_factory: Factory, tmp_path: Path
                                                 ) -> None:
    p = server_factory(repl_backlog_size=16 * 1024)
    pc = p.client()
    rdir = str(tmp_path / "replica")
    r = replica_of(server_factory, p, dir=rdir)
    rc = r.client()
    pc.set("first", 1)
    wait_synced(pc, rc)
    r.stop()
    for i in range(200):
        pc.set(f"while-down{i}", "x" * 500)  # 100 KB: past the 16 KiB backlog
    pc.save()  # the memtable flushed: the WAL segments that held those writes are gone
    r2 = replica_of(server_factory, p, dir=rdir)
    rc2 = r2.client()
    assert_same_data(pc, rc2)
    info = _info(pc)
    assert info["sync_full"] == 2 and info["sync_partial_err"] == 1, info


def test_partial_resync_past_the_backlog_from_the_wal_on_disk(server_factory: Factory,
                                                               tmp_path: Path) -> None:
    p = server_factory(repl_backlog_size=16 * 1024)
    pc = p.client()
    rdir = str(tmp_path / "replica")
    r = replica_of(server_factory, p, dir=rdir)
    rc = r.client()
    pc.set("first", 1)
    wait_synced(pc, rc)
    r.stop()
    for i in range(200):
        pc.set(f"while-down{i}", "x" * 500)  # 100 KB: past the backlog, not flushed
    r2 = replica_of(server_factory, p, dir=rdir)
    rc2 = r2.client()
    assert_same_data(pc, rc2)
    info = _info(pc)
    assert info["sync_full"] == 1 and info["sync_partial_ok"] == 1, info
    assert info["shaledb_repl_wal_reads"] >= 1


def test_a_replica_that_does_not_read_is_disconnected(server_factory: Factory,
                                                      caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    """A replica that stops reading: the primary's unsent output stays bounded (the
    feeder waits at TAIL_WINDOW), the backlog overflows, the replica is dropped with a log
    line, and the primary goes on."""
    p = server_factory(repl_backlog_size=64 * 1024)
    pc = p.client()
    s = socket.create_connection((HOST, p.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"*5\r\n$13\r\nSHALEDB.PSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n$1\r\n0\r\n$1\r\n1\r\n")
    wait_until(lambda: _info(pc)["connected_slaves"] == 1, 10, "the fake replica")
    value = b"x" * 4096
    dropped = False
    for i in range(20_000):
        pc.set(f"k{i % 100}", value)
        if i % 200 == 0 and _info(pc)["shaledb_slow_replica_disconnections"]:
            dropped = True
            break
    assert dropped
    wait_until(lambda: _info(pc)["connected_slaves"] == 0, 10, "the replica dropped")
    assert "no longer holds" in caplog.text
    assert pc.ping()
    s.close()


# -- acknowledgements -----------------------------------------------------------------------

def test_wait_counts_replicas_that_have_the_writes(server_factory: Factory) -> None:
    p = server_factory()
    pc = p.client()
    assert pc.execute_command("WAIT", 1, 50) == 0  # no replica: the timeout
    r = replica_of(server_factory, p)
    rc = r.client()
    wait_synced(pc, rc)
    pc.set("k", "v")
    t0 = time.monotonic()
    assert pc.execute_command("WAIT", 1, 5000) == 1
    assert time.monotonic() - t0 < 4
    assert rc.get("k") == b"v"
    assert pc.execute_command("WAIT", 2, 200) == 1  # only one replica: the timeout
    assert pc.execute_command("WAIT", 0, 0) == 1


def test_sync_mode_refuses_writes_without_replicas_then_acknowledges_durably(
        server_factory: Factory) -> None:
    p = server_factory(sync_replicas=1, sync_replicas_timeout=5.0)
    pc = p.client()
    with pytest.raises(redis.ResponseError, match="NOREPLICAS|Not enough good replicas"):
        pc.set("k", "v")
    assert pc.get("k") is None  # refused before it ran
    assert pc.ping()  # reads and the rest are served
    r = replica_of(server_factory, p)
    rc = r.client()
    wait_until(lambda: _info(pc)["shaledb_good_replicas"] == 1, 30, "a good replica")
    for i in range(20):
        assert pc.set(f"k{i}", i)
        # Acknowledged only once the replica applied (and fsynced) it.
        assert rc.get(f"k{i}") == str(i).encode()
    assert pc.config_get("sync-replicas") == {"sync-replicas": "1"}
    pc.config_set("sync-replicas", 0)
    r.stop()
    assert pc.set("async", 1)  # asynchronous again: no replica needed


def test_sync_mode_times_out_when_the_replica_stops_acknowledging(
        server_factory: Factory) -> None:
    p = server_factory(sync_replicas=1, sync_replicas_timeout=0.5,
                       sync_replicas_refuse=False)
    pc = p.client()
    # refuse=no: without a replica the write waits for the timeout, then says so.
    t0 = time.monotonic()
    with pytest.raises(redis.ResponseError, match="only 0 of the 1 replicas"):
        pc.set("k", "v")
    assert time.monotonic() - t0 >= 0.4


# -- security and terms ---------------------------------------------------------------------

def test_replica_authenticates_and_reports_a_failure(server_factory: Factory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    p = server_factory(requirepass="s3cret")
    pc = p.client(password="s3cret")
    pc.set("k", "v")
    r = replica_of(server_factory, p, masterauth="wrong", metrics_port=0)
    rc = r.client()
    wait_until(lambda: "authentication" in _info(rc)["shaledb_master_link_error"], 10,
               "the auth failure in INFO")
    assert _info(rc)["master_link_status"] == "down"
    assert r.server is not None
    health = f"http://{HOST}:{r.server.metrics_port}/health"
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(health, timeout=10)
    body = json.loads(failed.value.read())
    assert body["status"] == "degraded" and "authentication" in body["reason"]
    assert body["role"] == "slave"
    assert "authentication to the primary failed" in caplog.text
    assert "wrong" not in _info(rc)["shaledb_master_link_error"]
    assert rc.config_get("masterauth") == {"masterauth": "(set)"}
    rc.config_set("masterauth", "s3cret")
    wait_synced(pc, rc)
    assert rc.get("k") == b"v"
    with urllib.request.urlopen(health, timeout=10) as ok:
        assert json.loads(ok.read())["status"] == "ok"


def test_replica_over_tls(server_factory: Factory, tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    p = server_factory(tls_port=0, tls_cert_file=str(pki.server_cert),
                       tls_key_file=str(pki.server_key), tls_ca_cert_file=str(pki.ca_cert),
                       tls_auth_clients="no")
    assert p.server is not None and p.server.tls_port is not None
    pc = p.client()
    pc.set("k", "over tls")
    r = server_factory(replicaof=f"{HOST} {p.server.tls_port}", master_tls=True,
                       tls_ca_cert_file=str(pki.ca_cert), tls_auth_clients="no")
    rc = r.client()
    wait_synced(pc, rc)
    assert rc.get("k") == b"over tls"


def test_terms_refuse_stale_orders_and_stale_primaries(server_factory: Factory) -> None:
    p = server_factory()
    pc = p.client()
    assert pc.execute_command("SHALEDB.ROLE", "PRIMARY", 2) == b"OK"
    assert _info(pc)["shaledb_term"] == 2
    with pytest.raises(redis.ResponseError, match="STALETERM|older than"):
        pc.execute_command("SHALEDB.ROLE", "PRIMARY", 1)
    pc.set("k", "v")
    # A replica at term 2 follows this primary (term 2) ...
    r = server_factory()
    rc = r.client()
    assert rc.execute_command("SHALEDB.ROLE", "REPLICA", HOST, p.port, 2) == b"OK"
    wait_synced(pc, rc)
    assert rc.get("k") == b"v"
    # ... a node at term 3 refuses it: the primary is the stale one.
    s = server_factory()
    sc = s.client()
    sc.execute_command("SHALEDB.ROLE", "PRIMARY", 3)
    sc.execute_command("SHALEDB.ROLE", "REPLICA", HOST, p.port, 3)
    wait_until(lambda: "term" in _info(sc)["shaledb_master_link_error"], 10,
               "the stale term in INFO")
    assert _info(sc)["master_link_status"] == "down"
    # ... and the primary learnt that a newer leader exists: it fences itself.
    assert _info(pc)["shaledb_fenced_by_term"] == 3
    with pytest.raises(redis.ReadOnlyError, match="stale"):
        pc.set("k", "split-brain")
    with pytest.raises(redis.ResponseError, match="STALETERM|term >= 3"):
        pc.execute_command("SHALEDB.ROLE", "PRIMARY", 2)
    assert pc.execute_command("SHALEDB.ROLE", "PRIMARY", 3) == b"OK"  # re-elected
    assert pc.set("k", "v3")
    # The term survives a restart: it is stored with the data.
    assert r.server is not None
    assert r.server.db.get(STATE_KEY) is not None


def test_returning_old_primary_resyncs_and_keeps_what_it_discards(
        server_factory: Factory) -> None:
    p = server_factory()
    pc = p.client()
    pc.set("shared", 1)
    r = replica_of(server_factory, p)
    rc = r.client()
    wait_synced(pc, rc)
    # Failover: the replica is promoted at term 1; the old primary, cut off, still takes a
    # write (never acknowledged in sync mode), then rejoins as a replica at term 1.
    rc.execute_command("SHALEDB.ROLE", "PRIMARY", 1)
    rc.set("after-failover", 1)
    pc.set("lost-write", 1)
    pc.execute_command("SHALEDB.ROLE", "REPLICA", HOST, r.port, 1)
    assert_same_data(rc, pc)
    assert pc.get("lost-write") is None
    assert p.server is not None
    lost = Path(p.server.db.path) / "lost"
    files = list(lost.glob("replication-discarded-*.msgpack"))
    assert len(files) == 1
    assert b"lost-write" in files[0].read_bytes()
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    report = p.server.db.verify()
    assert report.ok and any("full resync" in n.message for n in report.notices)


# -- crashes (subprocesses) ------------------------------------------------------------------

def _proc(data: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return run_server_process(data, port, *extra)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=10)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _crash_round(tmp_path: Path, procs: list[subprocess.Popen[bytes]], rounds: int,
                 seed: int) -> None:
    rng = random.Random(seed)
    pport, rport = free_port(), free_port()
    pdir, rdir = tmp_path / "primary", tmp_path / "replica"
    primary = _proc(pdir, pport)
    procs.append(primary)
    pc = _client(pport)
    for i in range(2000):
        pc.set(f"base{i}", os.urandom(rng.randint(10, 400)))
    replica = _proc(rdir, rport, "--replicaof", HOST, str(pport))
    procs.append(replica)
    n = 0
    for _ in range(rounds):
        # Writes go on while the replica syncs or tails; it is killed at a random moment.
        deadline = time.monotonic() + rng.uniform(0.05, 0.6)
        while time.monotonic() < deadline:
            with pc.pipeline(transaction=True) as pipe:
                pipe.set(f"k{n % 300}", n).hset("h", f"f{n % 50}", n).rpush("l", n)
                pipe.execute()
            n += 1
        if rng.random() < 0.3:
            # The primary dies too (appendfsync everysec: it may lose its last second;
            # the replica must then resync to whatever the primary has).
            _kill(primary)
            primary = _proc(pdir, pport)
            procs.append(primary)
            pc = _client(pport)
        _kill(replica)
        replica = _proc(rdir, rport, "--replicaof", HOST, str(pport))
        procs.append(replica)
    rc = _client(rport)
    assert_same_data(pc, rc)


def test_sigkill_of_replica_and_primary_keeps_the_copy_exact(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    _crash_round(tmp_path, procs, rounds=3, seed=15)


@pytest.mark.soak
def test_sigkill_loop_soak(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    _crash_round(tmp_path, procs, rounds=40, seed=int(time.time()))


def test_sigkill_during_a_full_resync_leaves_nothing_half_visible(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """The replica dies while it loads the snapshot: restarted on its own, it holds neither
    a part of the primary's data nor its old data (a copy of which is under lost/), and the
    next sync loads everything."""
    pport, rport = free_port(), free_port()
    pdir, rdir = tmp_path / "primary", tmp_path / "replica"
    # The replica first has data of its own (a standalone node).
    replica = _proc(rdir, rport)
    procs.append(replica)
    own = _client(rport)
    own.mset({f"old{i}": i for i in range(100)})
    own.close()  # a graceful stop waits up to 5 s for open connections
    replica.terminate()
    replica.wait(20)
    primary = _proc(pdir, pport)
    procs.append(primary)
    pc = _client(pport)
    value = os.urandom(1000)
    for i in range(0, 12_000, 1000):
        pc.mset({f"p{j}": value for j in range(i, i + 1000)})
    replica = _proc(rdir, rport, "--replicaof", HOST, str(pport))
    procs.append(replica)
    rc = _client(rport)
    # Killed once the load has begun: the node's own data was set aside (lost/) and wiped,
    # part of the snapshot is applied. (master_sync_in_progress turns 1 earlier, while the
    # old data is copied to lost/: a kill then keeps the old data, as it should.)
    wait_until(lambda: _info(rc).get("master_sync_read_bytes", 0) > 0, 30, "the full sync",
               interval=0.005)
    _kill(replica)
    replica = _proc(rdir, rport)  # on its own: no primary to finish the sync
    procs.append(replica)
    rc = _client(rport)
    assert rc.keys() == [] and rc.dbsize() == 0  # a walk: count records come last
    assert list((rdir / "lost").glob("replication-discarded-*.msgpack"))
    _kill(replica)
    replica = _proc(rdir, rport, "--replicaof", HOST, str(pport))
    procs.append(replica)
    assert_same_data(pc, _client(rport))


def test_replication_settings_from_toml_and_their_bounds(tmp_path: Path) -> None:
    from shaledb.errors import InvalidArgument
    from shaledb.server import ServerConfig

    path = tmp_path / "shaledb.toml"
    path.write_text('replicaof = "127.0.0.1 6380"\nsync-replicas = 2\n'
                    'sync-replicas-timeout = 2.5\nrepl-backlog-size = 1048576\n'
                    'masteruser = "repl"\nmaster-tls = true\n')
    cfg = ServerConfig.load(str(path))
    assert (cfg.replicaof, cfg.sync_replicas, cfg.sync_replicas_timeout,
            cfg.repl_backlog_size, cfg.masteruser, cfg.master_tls) == (
        "127.0.0.1 6380", 2, 2.5, 1 << 20, "repl", True)
    for bad in ({"replicaof": "nohost"}, {"replicaof": "h 70000"}, {"sync_replicas": -1},
                {"repl_backlog_size": 1024}, {"sync_replicas_timeout": 0},
                {"repl_timeout": float("inf")}):
        with pytest.raises(InvalidArgument):
            ServerConfig.from_mapping(bad)


def test_config_set_of_replication_settings(server: ServerThread) -> None:
    c = server.client()
    with pytest.raises(redis.ResponseError, match="immutable"):
        c.config_set("repl-backlog-size", 1 << 20)
    with pytest.raises(redis.ResponseError, match="immutable"):
        c.config_set("replicaof", "127.0.0.1 1")
    c.config_set("masterauth", "pw")
    assert c.config_get("masterauth") == {"masterauth": "(set)"}
    c.config_set("sync-replicas", 1)
    with pytest.raises(redis.ResponseError, match="NOREPLICAS"):
        c.set("k", "v")
    c.config_set("sync-replicas", 0)
    assert c.set("k", "v")
    assert c.config_get("replicaof") == {"replicaof": ""}


def test_promoting_a_replica_in_the_middle_of_a_full_resync_serves_nothing_of_it(
        server_factory: Factory) -> None:
    p = server_factory()
    pc = p.client()
    value = os.urandom(1000)
    for i in range(0, 30_000, 1000):
        pc.mset({f"p{j}": value for j in range(i, i + 1000)})
    r = replica_of(server_factory, p)
    rc = r.client()
    wait_until(lambda: _info(rc).get("master_sync_in_progress") == 1, 30, "the full sync",
               interval=0.002)
    with pytest.raises(redis.BusyLoadingError):
        rc.get("p1")  # -LOADING while it loads
    # REPLICAOF works while loading (a replica whose primary died mid-sync can be moved).
    assert rc.execute_command("REPLICAOF", "NO", "ONE") == b"OK"
    # Nothing of the partial load: no key (a walk of the data, not the count records,
    # which the snapshot sends last), no value.
    assert rc.keys() == [] and rc.get("p1") is None and rc.dbsize() == 0
    assert rc.set("fresh", 1)
    assert rc.keys() == [b"fresh"]


def test_a_replica_that_never_acknowledges_is_dropped_after_repl_timeout(
        server_factory: Factory) -> None:
    p = server_factory(repl_timeout=1.0)
    pc = p.client()
    s = socket.create_connection((HOST, p.port))
    s.sendall(b"*5\r\n$13\r\nSHALEDB.PSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n$1\r\n0\r\n$1\r\n1\r\n")
    wait_until(lambda: _info(pc)["connected_slaves"] == 1, 10, "the silent replica")
    # Writes keep the feeder busy all along: the timeout must apply anyway.
    deadline = time.monotonic() + 6
    i = 0
    while _info(pc)["connected_slaves"] and time.monotonic() < deadline:
        pc.set(f"k{i % 10}", i)
        i += 1
        time.sleep(0.01)
    assert _info(pc)["connected_slaves"] == 0
    s.close()


def test_wait_of_clients_that_left_is_forgotten(server: ServerThread) -> None:
    c = server.client()
    socks = []
    for _ in range(20):
        s = socket.create_connection((HOST, server.port))
        s.sendall(b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$1\r\n0\r\n")  # forever: no replica
        socks.append(s)
    wait_until(lambda: _info(c)["shaledb_repl_waiters"] == 20, 10, "20 waiting clients")
    for s in socks:
        s.close()
    assert server.server is not None
    connections = server.server.connections
    wait_until(lambda: len(connections) == 1, 10, "the clients gone")
    assert c.execute_command("WAIT", 1, 10) == 0  # the next WAIT forgets the others
    assert _info(c)["shaledb_repl_waiters"] == 0


def test_sync_mode_acknowledged_writes_survive_the_primary_being_killed(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """sync-replicas 1: every write acknowledged before the primary is SIGKILLed is on the
    replica (which fsynced it before acknowledging), and the replica, promoted, serves
    them."""
    pport, rport = free_port(), free_port()
    primary = _proc(tmp_path / "primary", pport, "--sync-replicas", "1")
    procs.append(primary)
    replica = _proc(tmp_path / "replica", rport, "--replicaof", HOST, str(pport))
    procs.append(replica)
    pc, rc = _client(pport), _client(rport)
    wait_until(lambda: _info(pc)["shaledb_good_replicas"] == 1, 30, "a good replica")
    acknowledged: list[int] = []
    stop = threading.Event()

    def writer(base: int) -> None:
        c = _client(pport)
        i = base
        while not stop.is_set():
            try:
                c.set(f"w{i}", i)
            except (redis.ConnectionError, redis.ResponseError):
                return
            acknowledged.append(i)
            i += 1

    threads = [threading.Thread(target=writer, args=(n * 1_000_000,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    _kill(primary)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acknowledged) > 50
    assert rc.execute_command("REPLICAOF", "NO", "ONE") == b"OK"
    missing = [i for i, v in zip(acknowledged, rc.mget([f"w{i}" for i in acknowledged]),
                                 strict=True) if v != str(i).encode()]
    assert missing == []
