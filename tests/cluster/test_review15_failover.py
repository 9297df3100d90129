"""Review of issue 15 (failover): attacks on a real `--etcd` server over loopback. Tests
marked ``xfail(strict=True)`` prove a defect not fixed yet (they fail without it)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from tests.server._server_support import HOST, ServerThread, wait_until

from shaledb.server import ServerConfig


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(**settings: Any) -> ServerThread:
        settings.setdefault("port", 0)
        settings.setdefault("host", HOST)
        settings.setdefault("dir", str(tmp_path / f"db{len(started)}"))
        st = ServerThread(ServerConfig(**settings))
        started.append(st)
        return st

    yield start
    for st in started:
        st.stop()


def _set_ok(client: redis.Redis, key: str, value: str) -> bool:
    try:
        return bool(client.set(key, value))
    except redis.ReadOnlyError:
        return False


@pytest.mark.xfail(strict=True, reason="review15: one SHALEDB.PSYNC with a made-up term "
                   "fences the elected primary forever: it keeps the etcd lease and the "
                   "leader key but refuses every write, and nothing re-elects")
def test_a_forged_term_in_psync_does_not_leave_the_group_without_a_writable_primary(
        servers: Callable[..., ServerThread], etcd_url: str, group: str) -> None:
    s = servers(etcd=etcd_url, group=group, node_name="n1", failover_ttl=3,
                failover_safety_margin=1.0)
    r = s.client()
    wait_until(lambda: _set_ok(r, "k", "v"), 15, "a write to be accepted")
    # A client (any user with @admin) claims a term no leader ever had.
    sock = socket.create_connection((HOST, s.port))
    sock.sendall(b"*5\r\n$13\r\nSHALEDB.PSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n$6\r\n999999\r\n"
                 b"$1\r\n1\r\n")
    assert b"STALETERM" in sock.recv(4096)
    sock.close()
    assert r.info("failover")["failover_term"] == 1  # etcd's term: no newer leader exists
    # Several lease renewals later, the group must have a writable primary again.
    deadline = time.monotonic() + 10
    while not _set_ok(r, "k2", "v"):
        assert time.monotonic() < deadline, (
            "no writable primary 10 s after a forged term: "
            f"{r.info('failover')}, fenced_by={r.info('replication')['shaledb_fenced_by_term']}")
        time.sleep(0.2)
    r.close()
