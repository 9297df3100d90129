"""Review of replication and failover (issue 15): attacks on a real primary over loopback
sockets. A test marked ``xfail(strict=True)`` proves a defect that is not fixed yet (it
fails without the marker); the others guard a fix."""

from __future__ import annotations

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
        assert pc.execute_command("WAIT", 1, 50) == 0
        assert _info(pc)["slave0"]["offset"] <= _info(pc)["master_repl_offset"]
    finally:
        s.close()
