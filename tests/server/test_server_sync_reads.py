"""Reads on a sync-replicas primary (issue 15, review15): no reply shows a write that
sync-replicas replicas have not acknowledged. A fake replica (a raw socket that asks for
the stream and never reads it) acknowledges exactly when the test says so, which holds
writes unacknowledged as long as a test needs."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from ._server_support import HOST, ServerThread, wait_until

Factory = Callable[..., ServerThread]


def _info(c: redis.Redis) -> dict[str, Any]:
    return c.info("replication")


class FakeReplica:
    """A replica link whose acknowledgements the test sends by hand."""

    def __init__(self, port: int, admin: redis.Redis) -> None:
        self.admin = admin
        self.sock = socket.create_connection((HOST, port))
        self.sock.sendall(b"*5\r\n$13\r\nSHALEDB.PSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n$1\r\n0\r\n"
                          b"$1\r\n1\r\n")
        wait_until(lambda: _info(admin)["connected_slaves"] == 1
                   and _info(admin)["slave0"]["state"] == "online", 10, "the fake replica")
        self.ack()
        wait_until(lambda: _info(admin)["shaledb_good_replicas"] == 1, 10, "a good replica")

    def ack(self) -> None:
        """Acknowledge everything committed so far."""
        seq = b"%d" % _info(self.admin)["master_repl_offset"]
        self.sock.sendall(b"*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$%d\r\n%s\r\n"
                          % (len(seq), seq))

    def close(self) -> None:
        self.sock.close()


class Pending:
    """A command running on its own connection in a thread (its reply waits for ACKs)."""

    def __init__(self, server: ServerThread, fn: Callable[[redis.Redis], Any]) -> None:
        self.result: list[Any] = []
        self.client = server.client()

        def run() -> None:
            try:
                self.result.append(fn(self.client))
            except redis.RedisError as exc:
                self.result.append(exc)

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def get(self) -> Any:
        self.thread.join(15)
        assert self.result, "no reply"
        self.client.close()
        return self.result[0]


def _waiting(st: ServerThread, n: int) -> None:
    """Until ``n`` replies wait for acknowledgements. Read on the server's loop, not by a
    client's INFO: a command that is not a write settles the turn's buffered writes first,
    so an INFO arriving in the turn of the writes it waits for had its own reply held
    behind their acknowledgements (CI: -NOREPLICAS after 10 s; docs/design.md)."""
    assert st.server is not None
    repl = st.server.replication

    def count() -> int:
        return int(dict(repl.info_fields())["shaledb_repl_waiters"])

    wait_until(lambda: st.call(count) >= n, 10, f"{n} waiting replies")


def test_incr_on_two_connections_while_others_read(server_factory: Factory) -> None:
    """Two INCRs wait for their acknowledgement: the second one saw the first (writes read
    the latest state; its reply waits for its own, later, acknowledgement, which covers
    the first). A plain GET on a third connection meanwhile reads the acknowledged value;
    an EXEC and a Lua script that read hold their reply until what they read is
    acknowledged; after the ACK everything shows the new value."""
    p = server_factory(sync_replicas=1, sync_replicas_timeout=10.0)
    pc = p.client()
    fake = FakeReplica(p.port, pc)
    try:
        first = Pending(p, lambda c: c.set("n", 1))
        _waiting(p, 1)
        fake.ack()
        assert first.get() is True
        a = Pending(p, lambda c: c.incr("n"))
        _waiting(p, 1)
        b = Pending(p, lambda c: c.incr("n"))
        _waiting(p, 2)
        assert pc.get("n") == b"1"  # not 2 nor 3: neither INCR is acknowledged
        assert pc.mget("n", "missing") == [b"1", None]
        assert pc.exists("n") == 1 and pc.strlen("n") == 1

        def exec_get(c: redis.Redis) -> Any:
            with c.pipeline(transaction=True) as pipe:
                return pipe.get("n").execute()

        in_exec = Pending(p, exec_get)
        in_lua = Pending(p, lambda c: c.eval("return redis.call('GET', KEYS[1])", 1, "n"))
        wait_until(lambda: _info(pc)["shaledb_sync_held_reads"] >= 2, 10, "held reads")
        assert in_exec.thread.is_alive() and in_lua.thread.is_alive()
        assert _info(pc)["shaledb_sync_view_reads"] >= 3
        fake.ack()
        assert sorted([a.get(), b.get()]) == [2, 3]
        assert in_exec.get() == [b"3"]
        assert in_lua.get() == b"3"
        assert pc.get("n") == b"3"
    finally:
        fake.close()


def test_a_clients_own_unacknowledged_write_is_in_its_later_reads(
        server_factory: Factory) -> None:
    """A pipeline SET then GET on one connection: the GET sees the SET (its reply waits
    behind the SET's anyway), while another connection's GET reads the acknowledged
    value."""
    p = server_factory(sync_replicas=1, sync_replicas_timeout=10.0)
    pc = p.client()
    fake = FakeReplica(p.port, pc)
    try:
        old = Pending(p, lambda c: c.set("k", "old"))
        _waiting(p, 1)
        fake.ack()
        assert old.get() is True

        def own(c: redis.Redis) -> Any:
            with c.pipeline(transaction=False) as pipe:
                return pipe.set("k", "new").get("k").execute()

        mine = Pending(p, own)
        _waiting(p, 1)
        other = p.client()
        assert other.get("k") == b"old"
        fake.ack()
        assert mine.get() == [True, b"new"]
        assert other.get("k") == b"new"
        other.close()
    finally:
        fake.close()


def test_unacknowledged_deletes_expiries_fields_and_flushes_are_not_seen(
        server_factory: Factory) -> None:
    p = server_factory(sync_replicas=1, sync_replicas_timeout=10.0)
    pc = p.client()
    fake = FakeReplica(p.port, pc)
    try:
        setup = Pending(p, lambda c: c.pipeline(transaction=True).set("k", "v").set("j", "w")
                        .hset("h", "f", "1").set("gone", "x").execute())
        _waiting(p, 1)
        fake.ack()
        setup.get()
        changes = [Pending(p, lambda c: c.expire("k", 1000)),
                   Pending(p, lambda c: c.delete("j")),
                   Pending(p, lambda c: c.hset("h", "f", "2")),
                   Pending(p, lambda c: c.hset("h", "g", "3"))]
        _waiting(p, 4)
        assert pc.ttl("k") == -1
        assert pc.get("j") == b"w" and pc.exists("j") == 1
        assert pc.hget("h", "f") == b"1" and pc.hget("h", "g") is None
        assert pc.hlen("h") == 1
        flush = Pending(p, lambda c: c.flushdb())
        _waiting(p, 5)
        assert pc.get("gone") == b"x"  # the flushed database's map is not seen yet
        fake.ack()
        for c in changes:
            c.get()
        assert flush.get() is True
        assert pc.get("gone") is None and pc.get("j") is None and pc.ttl("k") == -2
    finally:
        fake.close()


def test_a_write_that_timed_out_stays_unseen_until_a_replica_acknowledges_it(
        server_factory: Factory) -> None:
    """-NOREPLICAS: applied on the primary but not acknowledged. Reads keep not showing it
    (it may be lost in a failover); once a replica acknowledges it, it is visible."""
    p = server_factory(sync_replicas=1, sync_replicas_timeout=0.5)
    pc = p.client()
    fake = FakeReplica(p.port, pc)
    try:
        w = Pending(p, lambda c: c.set("x", "maybe"))
        result = w.get()
        assert isinstance(result, redis.ResponseError) and "only 0 of the 1" in str(result)
        assert pc.get("x") is None
        fake.ack()
        wait_until(lambda: pc.get("x") == b"maybe", 10, "the acknowledged write")
    finally:
        fake.close()


def test_config_set_sync_replicas_starts_and_ends_the_acknowledged_view(
        server_factory: Factory) -> None:
    """CONFIG SET sync-replicas 0 shows every write again; setting it back starts from
    everything committed then (acknowledged without replicas, in async mode)."""
    p = server_factory(sync_replicas=1, sync_replicas_timeout=0.5)
    pc = p.client()
    fake = FakeReplica(p.port, pc)
    try:
        assert isinstance(Pending(p, lambda c: c.set("x", "maybe")).get(),
                          redis.ResponseError)
        assert pc.get("x") is None
        assert pc.config_set("sync-replicas", 0)
        assert pc.get("x") == b"maybe"
        assert pc.config_set("sync-replicas", 1)
        fake.ack()
        assert pc.get("x") == b"maybe"
        assert isinstance(Pending(p, lambda c: c.set("y", "later")).get(),
                          redis.ResponseError)
        assert pc.get("y") is None and pc.get("x") == b"maybe"
    finally:
        fake.close()


def test_a_held_read_fails_like_a_write_when_nothing_is_acknowledged(
        server_factory: Factory) -> None:
    """A read that is not a point read (HGETALL) reads the latest state and holds its
    reply until that is acknowledged: with no acknowledgement within
    sync-replicas-timeout it gets -NOREPLICAS, never the unacknowledged field."""
    p = server_factory(sync_replicas=1, sync_replicas_timeout=0.5)
    pc = p.client()
    fake = FakeReplica(p.port, pc)
    try:
        assert isinstance(Pending(p, lambda c: c.hset("h", "f", "maybe")).get(),
                          redis.ResponseError)
        reader = p.client()
        with pytest.raises(redis.ResponseError, match="or a write this reply read"):
            reader.hgetall("h")
        reader.close()
        assert pc.hget("h", "f") is None  # a point read answers at once, without it
        fake.ack()
        wait_until(lambda: pc.hgetall("h") == {b"f": b"maybe"}, 10, "the acknowledged field")
    finally:
        fake.close()
