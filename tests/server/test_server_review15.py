"""Review of replication and failover (issue 15): attacks on a real primary over loopback
sockets. A test marked ``xfail(strict=True)`` proves a defect that is not fixed yet (it
fails without the marker); the others guard a fix."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from ._server_support import HOST, ServerThread, wait_until

Factory = Callable[..., ServerThread]


def _info(c: redis.Redis) -> dict[str, Any]:
    return c.info("replication")


def _fake_replica(port: int, term: int = 0) -> socket.socket:
    """A client that asks for the stream (SHALEDB.PSYNC) and then never reads it."""
    s = socket.create_connection((HOST, port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    t = b"%d" % term
    s.sendall(b"*5\r\n$13\r\nSHALEDB.PSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n$%d\r\n%s\r\n$1\r\n1\r\n"
              % (len(t), t))
    return s


def test_an_ack_past_what_was_sent_does_not_acknowledge_later_writes(
        server_factory: Factory) -> None:
    """A replica acknowledging an offset it was never sent (a forged or confused ACK) must
    not make later writes count as held by it: sync-replicas and WAIT would acknowledge
    writes that exist nowhere but on the primary."""
    p = server_factory(sync_replicas=1, sync_replicas_timeout=0.5)
    pc = p.client()
    s = _fake_replica(p.port)
    try:
        wait_until(lambda: _info(pc)["connected_slaves"] == 1, 10, "the fake replica")
        wait_until(lambda: _info(pc)["slave0"]["state"] == "online", 10, "its stream")
        s.sendall(b"*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$12\r\n999999999999\r\n")
        wait_until(lambda: _info(pc)["shaledb_good_replicas"] == 1, 10, "the ACK")
        # The fake replica never reads: it holds nothing of this write.
        with pytest.raises(redis.ResponseError, match="only 0 of the 1 replicas"):
            pc.set("k", "v")
        pc.close()  # the server closes a connection whose write timed out
        c = p.client()
        assert c.execute_command("WAIT", 1, 50) == 0
        assert _info(c)["slave0"]["offset"] <= _info(c)["master_repl_offset"]
        c.close()
    finally:
        s.close()


def test_a_read_on_a_sync_primary_does_not_see_an_unacknowledged_write(
        server_factory: Factory) -> None:
    """sync-replicas 1: a write is acknowledged only once a replica holds it, because
    otherwise a failover may lose it. A concurrent plain GET on the primary must not
    return such a write either: a client that read it would see it vanish after the
    failover (Jepsen: a read of a value that was never committed). The Jepsen harness
    only issues fenced reads (MULTI GET + SET), so it cannot see this. Fixed: plain reads
    run at the snapshot replicas acknowledged (test_server_sync_reads.py)."""
    p = server_factory(sync_replicas=1, sync_replicas_timeout=3.0)
    pc = p.client()
    s = _fake_replica(p.port)
    try:
        wait_until(lambda: _info(pc)["slave0"]["state"] == "online"
                   if _info(pc)["connected_slaves"] else False, 10, "the fake replica")
        seq = _info(pc)["master_repl_offset"]
        ack = b"%d" % seq
        s.sendall(b"*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$%d\r\n%s\r\n" % (len(ack), ack))
        wait_until(lambda: _info(pc)["shaledb_good_replicas"] == 1, 10, "a good replica")
        outcome: list[Any] = []

        def write() -> None:
            try:
                outcome.append(p.client().set("x", "unacknowledged"))
            except redis.ResponseError as exc:
                outcome.append(exc)

        t = threading.Thread(target=write)
        t.start()
        # The SET is applied and waits for an ACK that never comes.
        wait_until(lambda: _info(pc)["shaledb_repl_waiters"] >= 1, 5, "the SET to wait")
        seen = pc.get("x")
        t.join(10)
        assert isinstance(outcome[0], redis.ResponseError)  # never acknowledged
        assert seen is None, "a reader saw a write no replica holds"
    finally:
        s.close()


def test_the_unsent_stream_of_all_replicas_together_is_bounded(
        server_factory: Factory) -> None:
    """Any client with @admin (the default user without ACLs) can PSYNC and never read.
    Each such feed keeps up to SNAPSHOT_WINDOW + a chunk (and a pinned snapshot) on the
    primary; there is no cap on the number of feeds but maxclients. Measured here: 20
    fake replicas of a 20 MB database hold about 85 MB of unsent output. Fixed:
    repl-total-output-limit (16 MiB) drops the links furthest behind and max-replicas (16)
    refuses the rest (test_server_repl_limits.py)."""
    p = server_factory()
    pc = p.client()
    value = os.urandom(100_000)
    for i in range(200):
        pc.set(f"k{i}", value)
    socks = [_fake_replica(p.port) for _ in range(20)]
    try:
        def total_omem() -> int:
            return sum(int(c.get("omem", 0)) for c in pc.client_list())

        wait_until(lambda: total_omem() > 0, 10, "the snapshots to be sent")
        time.sleep(2)
        total = total_omem()
        # A bound for all replicas together (here: the per-replica window, twice).
        assert total <= 2 * 9 * 1024 * 1024, f"{total} bytes unsent to fake replicas"
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("mode", ["no", "everysec"])
def test_a_sync_primary_acknowledges_only_writes_on_its_own_disk(
        server_factory: Factory, tmp_path: Any, mode: str) -> None:
    """(Review 15b, HIGH.) A takeover puts the old primary in the next sync set as a holder
    of every write it acknowledged; with appendfsync everysec or no those writes could be
    in its page cache only, lost with its machine -- and then a node without them could be
    promoted (test_review15b_failover). In sync mode a reply now waits for the primary's
    own fsync too: after a power loss of the primary, every acknowledged write is on its
    disk, whatever appendfsync says."""
    import shaledb
    from shaledb.server import ServerConfig
    from shaledb.testing import FaultInjectionFS

    path = str(tmp_path / "primary")
    fs = FaultInjectionFS()
    # No engine sync thread: only what the server asks for reaches the disk.
    db = shaledb.open(path, fs=fs, fsync_interval=None)
    p = ServerThread(ServerConfig(port=0, host=HOST, dir=path, metrics_port=None,
                                  appendfsync=mode, sync_replicas=1,
                                  sync_replicas_timeout=10.0), db)
    acked: list[str] = []
    try:
        r = server_factory(replicaof=f"{HOST} {p.port}")
        pc = p.client()
        wait_until(lambda: _info(pc)["shaledb_good_replicas"] == 1, 30, "a good replica")
        for i in range(50):
            assert pc.set(f"k{i}", f"v{i}")
            acked.append(f"k{i}")
        with pc.pipeline(transaction=False) as pipe:
            for i in range(50, 300):
                pipe.set(f"k{i}", f"v{i}")
            assert all(pipe.execute())
        acked += [f"k{i}" for i in range(50, 300)]
        fs.crash()  # the primary's machine loses power: unsynced bytes are gone
        pc.close()
        r.stop()
    finally:
        p.stop()
        with contextlib.suppress(shaledb.ShaleError):
            db.close()
    after = server_factory(dir=path)  # the primary restarted on what its disk kept
    c = after.client()
    missing = [k for k, v in zip(acked, c.mget(acked), strict=True) if v is None]
    assert missing == [], f"{len(missing)} acknowledged writes lost with the page cache"
    assert c.mget(acked) == [f"v{k[1:]}".encode() for k in acked]
