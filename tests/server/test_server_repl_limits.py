"""Bounds of a primary's replication links (issue 15, review15): how many replicas it feeds
(``max-replicas``), how much stream it holds unsent for all of them together
(``repl-total-output-limit``), and per link also for a giant write group. Real servers on
loopback; fake replicas are raw sockets that ask for the stream and never read it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from ._server_support import HOST, ServerThread, free_port, run_server_process, wait_until

Factory = Callable[..., ServerThread]
MiB = 1024 * 1024


def _info(c: redis.Redis) -> dict[str, Any]:
    return c.info("replication")


def _psync(port: int) -> socket.socket:
    """A client that asks for the stream (SHALEDB.PSYNC) and then never reads it."""
    s = socket.create_connection((HOST, port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"*5\r\n$13\r\nSHALEDB.PSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n$1\r\n0\r\n$1\r\n1\r\n")
    return s


def _first_line(s: socket.socket) -> bytes:
    s.settimeout(10)
    data = b""
    while b"\r\n" not in data:
        more = s.recv(4096)
        if not more:
            break
        data += more
    return data.split(b"\r\n", 1)[0]


def _replica_omem(c: redis.Redis) -> list[int]:
    """The unsent output of every (fake) replica link: its last command was the PSYNC."""
    return [int(x["omem"]) for x in c.client_list() if x.get("cmd") == "shaledb.psync"]


def test_a_psync_past_max_replicas_is_refused_with_a_clear_error(
        server_factory: Factory) -> None:
    p = server_factory(max_replicas=2)
    pc = p.client()
    socks = [_psync(p.port) for _ in range(2)]
    try:
        for s in socks:
            assert _first_line(s).startswith(b"+FULLRESYNC")
        wait_until(lambda: _info(pc)["connected_slaves"] == 2, 10, "two replicas")
        third = _psync(p.port)
        socks.append(third)
        line = _first_line(third)
        assert line.startswith(b"-ERR max number of replicas reached (max-replicas 2)"), line
        info = _info(pc)
        assert info["connected_slaves"] == 2
        assert info["shaledb_max_replicas_refused"] == 1
        # CONFIG SET raises it (and CONFIG GET shows it): the next one is fed.
        assert pc.config_set("max-replicas", 3)
        assert pc.config_get("max-replicas") == {"max-replicas": "3"}
        fourth = _psync(p.port)
        socks.append(fourth)
        assert _first_line(fourth).startswith(b"+FULLRESYNC")
        with pytest.raises(redis.ResponseError, match="max-replicas"):
            pc.config_set("max-replicas", 0)
    finally:
        for s in socks:
            s.close()


def test_a_reading_replica_is_fed_while_stalled_ones_are_dropped_for_the_total(
        server_factory: Factory) -> None:
    """Fake replicas that never read fill the total bound; a real replica that connects
    after them still loads its full resync: the links furthest behind (the most unsent
    stream) are dropped, not the newcomer, and the total stays under the bound."""
    limit = 10 * MiB
    p = server_factory(repl_total_output_limit=limit)
    pc = p.client()
    value = os.urandom(100_000)
    for i in range(200):
        pc.set(f"k{i}", value)
    socks = [_psync(p.port) for _ in range(4)]
    try:
        wait_until(lambda: _info(pc)["shaledb_repl_output_limit_disconnections"] >= 1, 20,
                   "a stalled replica to be dropped")
        assert _info(pc)["shaledb_repl_output_bytes"] <= limit
        r = server_factory(replicaof=f"{HOST} {p.port}")
        rc = r.client()
        wait_until(lambda: _info(rc).get("master_link_status") == "up"
                   and rc.dbsize() == 200, 60, "the real replica's full resync")
        assert rc.get("k7") == value
        assert _info(rc)["shaledb_full_syncs_done"] == 1  # never dropped and restarted
        assert _info(pc)["shaledb_repl_output_bytes"] <= limit
        assert sum(_replica_omem(pc)) <= limit
        assert pc.config_get("repl-total-output-limit") == {
            "repl-total-output-limit": str(limit)}
        with pytest.raises(redis.ResponseError, match="repl-total-output-limit"):
            pc.config_set("repl-total-output-limit", "1mb")
        rc.close()
    finally:
        for s in socks:
            s.close()


def _rss_kib(pid: int, field: str = "VmHWM") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_a_giant_write_group_is_streamed_to_each_replica_in_bounded_slices(
        tmp_path: Path) -> None:
    """An EXEC of two 50 MiB SETs is one 100 MiB write group. Sent whole, every replica
    link that does not read held a copy of it: 3 stalled replicas held 100 MiB unsent each
    and the primary's peak RSS grew by 899 MiB (399 MiB when sliced: the write itself).
    Streamed in 1 MiB slices, each link holds at most its window (about 9 MiB)."""
    port = free_port()
    proc = run_server_process(tmp_path / "p", port)
    socks: list[socket.socket] = []
    try:
        pc = redis.Redis(host=HOST, port=port, socket_timeout=60)
        pc.config_set("client-query-buffer-limit", "256mb")
        pc.config_set("proto-max-bulk-len", "60mb")  # (a string is at most 64 MiB)
        pc.config_set("max-multi-bytes", "256mb")
        pc.config_set("repl-total-output-limit", "1gb")  # the per-link bound is measured
        for _ in range(3):
            socks.append(_psync(port))
        wait_until(lambda: _info(pc)["connected_slaves"] == 3
                   and all(f"slave{i}" in _info(pc) and _info(pc)[f"slave{i}"]["state"]
                           == "online" for i in range(3)), 20, "three online replicas")
        before = _rss_kib(proc.pid)
        size = 100 * MiB
        with pc.pipeline(transaction=True) as pipe:  # one EXEC: one write group
            pipe.set("giant1", b"x" * (size // 2)).set("giant2", b"y" * (size // 2))
            pipe.execute()
        time.sleep(1.0)  # the feeders send what the window lets them
        omem = _replica_omem(pc)
        grown = (_rss_kib(proc.pid) - before) * 1024
        print(f"per-link unsent {omem}, peak RSS {before // 1024} MiB + {grown // MiB} MiB")
        assert len(omem) == 3
        assert max(omem) <= 9 * MiB + 64 * 1024, omem
        # The write itself (request, WAL record, memtable, backlog) costs a few copies of
        # the value; three whole frames per link would add 600 MiB more.
        assert grown < 6 * size, f"peak RSS grew by {grown // MiB} MiB"
        pc.close()
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.communicate(timeout=60)


def test_a_full_resync_of_a_giant_value_is_sent_in_bounded_slices(
        server_factory: Factory) -> None:
    """A list element (or hash value) may be a 40 MiB engine value, and a snapshot chunk
    holds at least one value: sent as one frame, each loading replica held all of it
    unsent. Sliced, a link holds at most the snapshot window and a slice; a real replica
    loads the same bytes."""
    p = server_factory(proto_max_bulk_len=60 * MiB, client_query_buffer_limit=256 * MiB,
                       repl_total_output_limit=1 << 30)
    pc = p.client()
    value = os.urandom(40 * MiB)
    pc.rpush("big", value, b"small")
    socks = [_psync(p.port) for _ in range(2)]
    try:
        wait_until(lambda: len(_replica_omem(pc)) == 2 and min(_replica_omem(pc)) > 0, 20,
                   "the snapshots to be sent")
        time.sleep(1.0)
        omem = _replica_omem(pc)
        assert max(omem) <= 5 * MiB + 64 * 1024, omem
        r = server_factory(replicaof=f"{HOST} {p.port}")
        rc = r.client()
        wait_until(lambda: _info(rc).get("master_link_status") == "up", 60,
                   "the real replica's full resync")
        assert rc.lrange("big", 0, -1) == [value, b"small"]
        rc.close()
    finally:
        for s in socks:
            s.close()


def test_the_limits_load_from_toml_and_are_validated(tmp_path: Path) -> None:
    from shaledb.errors import InvalidArgument
    from shaledb.server import ServerConfig

    path = tmp_path / "shaledb.toml"
    path.write_text("max_replicas = 3\nrepl_total_output_limit = 20971520\n")
    config = ServerConfig.load(str(path))
    assert (config.max_replicas, config.repl_total_output_limit) == (3, 20 * MiB)
    assert (ServerConfig().max_replicas, ServerConfig().repl_total_output_limit) == (16,
                                                                                    16 * MiB)
    with pytest.raises(InvalidArgument, match="repl_total_output_limit must be an integer"):
        ServerConfig(repl_total_output_limit=MiB)  # below one link's own bound
    with pytest.raises(InvalidArgument, match="max_replicas"):
        ServerConfig(max_replicas=0)
