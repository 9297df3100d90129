"""Review of issue 15 (failover): attacks on a real `--etcd` server over loopback. Tests
marked ``xfail(strict=True)`` prove a defect not fixed yet (they fail without it)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
from tests.server._server_support import HOST, ServerThread, wait_until

from shaledb.server.cluster.election import PRIMARY, REPLICA
from shaledb.server.cluster.etcd import EtcdClient
from shaledb.server.cluster.group import read_group

from .test_election import Group


def _set_ok(client: redis.Redis, key: str, value: str) -> bool:
    try:
        return bool(client.set(key, value))
    except redis.ReadOnlyError:
        return False


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
    # Under --etcd the lease is the fence: a claimed term fences nothing, not even briefly.
    assert r.info("replication")["shaledb_fenced_by_term"] == 0
    assert _set_ok(r, "k1", "v"), "a forged term blocked writes on the elected primary"
    # Several lease renewals later, the group must have a writable primary again.
    deadline = time.monotonic() + 10
    while not _set_ok(r, "k2", "v"):
        assert time.monotonic() < deadline, (
            "no writable primary 10 s after a forged term: "
            f"{r.info('failover')}, fenced_by={r.info('replication')['shaledb_fenced_by_term']}")
        time.sleep(0.2)
    r.close()


def test_sync_mode_promotion_does_not_use_a_stale_published_position(
        etcd_url: str, group: str, etcd: EtcdClient) -> None:
    """Timeline with the defaults (TTL 10 s, margin 2 s, step every (10 - 2) / 3 = 2.67 s):
    the primary is cut off from etcd but not from its replicas (or its election thread is
    stuck in a slow etcd call) and keeps acknowledging writes until ``sent + TTL - 2 s``;
    etcd drops its key at ``sent + TTL``. Standby c acknowledged the last writes, but its
    member key still holds the offset of its last step, up to 2.67 s old -- longer than
    the 2 s between the last acknowledgement and the leader key's expiry. Standby b steps
    first, sees both standbys live (|S| - K + 1 = 2) and compares its own fresh offset with
    c's stale one. Here the lease is revoked at once instead of expiring: the same order of
    events, without waiting."""
    g = Group(etcd_url, group, ttl=4, safety_margin=1.0, sync_mode=True, sync_replicas=1)
    try:
        g.add("a")
        g.add("b", offset=10)
        g.add("c", offset=10)
        g.step("a")
        g.step("b", "c")
        g.step("a")  # S = {b, c}, K = 1
        st = read_group(etcd, group)
        assert st.sync is not None and st.sync.members == ("b", "c")
        # The primary goes on: b gets up to 15; c acknowledges a write at 20 (b does not
        # hold it), then the leader key goes before c's next step.
        g.ctl("b").offset = 15
        g.ctl("c").offset = 20
        g.step("b")
        g.kill("a")
        g.step("b")
        # c, live and in S, holds an acknowledged write b lacks: b must not win yet.
        assert g.nodes["b"].role == REPLICA, "b promoted over c's acknowledged write"
        g.step("c")
        g.step("b", "c")
        assert g.nodes["c"].role == PRIMARY
    finally:
        g.close()


def _cmd(*args: object) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def _info_repl(c: redis.Redis) -> dict[str, Any]:
    return c.info("replication")


def test_a_client_announcing_a_standbys_address_does_not_count_as_that_standby(
        servers: Callable[..., ServerThread], etcd_url: str, group: str) -> None:
    n1 = servers(etcd=etcd_url, group=group, node_name="n1", failover_ttl=3,
                 failover_safety_margin=1.0, sync_replicas=1, sync_replicas_timeout=2.0)
    r1 = n1.client()
    wait_until(lambda: r1.info("failover")["failover_role"] == "primary", 15, "n1 elected")
    n2 = servers(etcd=etcd_url, group=group, node_name="n2", failover_ttl=3,
                 failover_safety_margin=1.0, sync_replicas=1)
    wait_until(lambda: r1.info("all")["failover_sync_members"] == "n2", 30, "n2 in S")
    wait_until(lambda: _info_repl(r1)["shaledb_good_replicas"] == 1, 15, "n2 acknowledging")
    # An impostor: announces n2's address, takes the stream and acknowledges what it got.
    term = r1.info("failover")["failover_term"]
    sock = socket.create_connection((HOST, n1.port))
    sock.sendall(_cmd("REPLCONF", "listening-port", n2.port, "ip-address", HOST))
    assert sock.recv(100).startswith(b"+OK")
    sock.sendall(_cmd("SHALEDB.PSYNC", "?", -1, term, 1))
    time.sleep(0.5)
    sock.sendall(_cmd("REPLCONF", "ACK", _info_repl(r1)["master_repl_offset"]))
    time.sleep(0.5)
    try:
        # One standby in S: at most one good replica may count for sync-replicas.
        assert _info_repl(r1)["shaledb_good_replicas"] <= 1, _info_repl(r1)
        # An impostor that also claims n2's node name replaces n2's link (one link per
        # node): n2 still counts once, never twice.
        imp2 = socket.create_connection((HOST, n1.port))
        try:
            imp2.sendall(_cmd("REPLCONF", "listening-port", n2.port, "ip-address", HOST,
                              "node-name", "n2"))
            assert imp2.recv(100).startswith(b"+OK")
            imp2.sendall(_cmd("SHALEDB.PSYNC", "?", -1, term, 1))
            time.sleep(0.5)
            imp2.sendall(_cmd("REPLCONF", "ACK", _info_repl(r1)["master_repl_offset"]))
            for _ in range(10):
                assert _info_repl(r1)["shaledb_good_replicas"] <= 1, _info_repl(r1)
                time.sleep(0.1)
        finally:
            imp2.close()
        # n2 reconnects (replacing the closed impostor) and acknowledges again.
        wait_until(lambda: _set_ok(r1, "after", "1"), 20, "n2 to acknowledge again")
        assert _info_repl(r1)["shaledb_good_replicas"] == 1
    finally:
        sock.close()
        r1.close()


def _offset(c: redis.Redis) -> int:
    return int(_info_repl(c).get("slave_repl_offset", -1))


def test_a_standby_without_the_last_acknowledged_write_is_not_promoted_end_to_end(
        servers: Callable[..., ServerThread], etcd_url: str, group: str) -> None:
    """Three servers and etcd, sync mode, K = 1. n3's member key keeps the position of its
    last step (the test seam ``hold_published_position``: its next step has not come yet)
    while it acknowledges a write n2 never receives (n2's replication user is switched
    off). The primary goes. n2's own position is then at least n3's published one, and n2
    is first by name: before the fix n2 was promoted and n3, the only holder of the
    acknowledged write, resynced from it -- the write lost. Now the takeover waits for
    n3's position read after the leader key went, and n3, which holds the write, wins."""
    common: dict[str, Any] = dict(etcd=etcd_url, group=group, failover_ttl=4,
                                  failover_safety_margin=1.0, sync_replicas=1,
                                  sync_replicas_timeout=5.0)
    n1 = servers(node_name="n1", **common)
    r1 = n1.client()
    wait_until(lambda: r1.info("failover")["failover_role"] == "primary", 15, "n1 elected")
    r1.execute_command("ACL", "SETUSER", "repl2", "on", ">pw2", "~*", "&*", "+@all")
    n2 = servers(node_name="n2", masteruser="repl2", masterauth="pw2", **common)
    n3 = servers(node_name="n3", **common)
    r2, r3 = n2.client(), n3.client()
    wait_until(lambda: r1.info("failover")["failover_sync_members"] == ["n2", "n3"], 30,
               "n2 and n3 in the sync set")

    def acknowledged(key: str) -> bool:
        try:
            return bool(r1.set(key, "1"))
        except redis.ResponseError as exc:
            assert "NOREPLICAS" in str(exc)
            return False

    wait_until(lambda: acknowledged("w1"), 30, "a write acknowledged")
    top = _info_repl(r1)["master_repl_offset"]
    wait_until(lambda: _offset(r2) == top and _offset(r3) == top, 15,
               "both standbys to hold w1")
    # From here n3's member key keeps what it published last (at most w1's position).
    assert n3.server is not None and n3.server.failover is not None
    n3.server.failover.election.hold_published_position(True)
    # n2 is cut off: its replication user is switched off and its link closed.
    r1.execute_command("ACL", "SETUSER", "repl2", "off")
    r1.execute_command("CLIENT", "KILL", "USER", "repl2")
    wait_until(lambda: _info_repl(r2)["master_link_status"] == "down", 15, "n2's link down")
    assert r1.set("w2", "acknowledged by n3 only")  # K = 1: n3 acknowledged it
    assert r3.get("w2") == b"acknowledged by n3 only" and r2.get("w2") is None
    r1.close()
    n1.stop()  # resigns: fenced, then the lease (and the leader key) revoked at once
    # n3 has not published a position read after the leader key went: nobody may win.
    until = time.monotonic() + 4 * 1.5  # past the TTL, after which fresh positions suffice
    while time.monotonic() < until:
        for name, c in (("n2", r2), ("n3", r3)):
            assert c.info("failover")["failover_role"] == "replica", (
                f"{name} promoted without n3's fresh position")
        time.sleep(0.2)
    blocked = r2.info("failover")["failover_promotion_blocked"]
    assert "waiting for n3" in blocked, blocked
    # ... and so does `shaledb cluster status`, from etcd alone.
    out = subprocess.run([sys.executable, "-m", "shaledb.cli", "cluster", "status", "--etcd",
                          etcd_url, "--group", group], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "NONE (no leader key)" in out and "promotion blocked: waiting for n3" in out, out
    # n3's next step publishes its fresh position: it holds w2 and takes over.
    n3.server.failover.election.hold_published_position(False)
    wait_until(lambda: r3.info("failover")["failover_role"] == "primary", 20, "n3 elected")
    assert r3.get("w2") == b"acknowledged by n3 only"
    wait_until(lambda: r2.info("failover")["failover_leader"] == "n3", 15, "n2 to follow n3")
    assert r2.info("failover")["failover_promotion_blocked"] == ""
    r2.close()
    r3.close()


def test_a_dead_sync_standby_leaves_the_set_once_the_others_hold_every_write(
        etcd_url: str, group: str, etcd: EtcdClient) -> None:
    """S = {b, c}, K = 1. c dies while a leads: with S kept whole, a's death later needs
    |S| - K + 1 = 2 live members of S, and b alone could never take over although it holds
    every write a acknowledged after c died. a drops c from S, but only once b (K of the
    rest) acknowledged every write made before a stopped counting c; until then S stays
    whole and a failover is refused, saying why."""
    g = Group(etcd_url, group, ttl=4, safety_margin=1.0, sync_mode=True, sync_replicas=1)
    try:
        g.add("a")
        g.add("b", offset=10)
        g.add("c", offset=10)
        g.step("a")
        g.step("b", "c")
        g.step("a")
        assert read_group(etcd, group).sync.members == ("b", "c")  # type: ignore[union-attr]
        g.kill("c")
        g.step("a")  # c is gone but b has not acknowledged everything: S stays whole
        st = read_group(etcd, group)
        assert st.sync is not None and st.sync.members == ("b", "c")
        assert g.ctl("a").calls[-1] == ("narrow_sync_standbys", ("b",))
        assert g.ctl("a").standbys == ["b"]  # c's acknowledgements no longer count
        g.ctl("a").caught_up = {"b"}
        g.step("a")
        st = read_group(etcd, group)
        assert st.sync is not None and st.sync.members == ("b",)
        assert g.nodes["a"].sync_members == {"b"}
        g.kill("a")
        g.step("b")
        assert g.nodes["b"].role == PRIMARY
    finally:
        g.close()


def test_no_promotion_when_no_live_member_provably_holds_every_acknowledged_write(
        etcd_url: str, group: str, etcd: EtcdClient) -> None:
    g = Group(etcd_url, group, ttl=4, safety_margin=1.0, sync_mode=True, sync_replicas=1)
    try:
        g.add("a")
        g.add("b", offset=10)
        g.add("c", offset=10)
        g.step("a")
        g.step("b", "c")
        g.step("a")
        g.kill("a")
        g.kill("c")  # the primary and a standby at once: b may lack what c acknowledged
        g.step("b")
        g.step("b")
        assert g.nodes["b"].role == REPLICA
        why = g.nodes["b"].status().promotion_blocked
        assert why is not None and "1 of the 2 members of the sync set" in why, why
    finally:
        g.close()


def test_the_group_fails_over_after_a_sync_standby_died_end_to_end(
        servers: Callable[..., ServerThread], etcd_url: str, group: str) -> None:
    """Three servers, sync mode, K = 1: a standby stops, then the primary. The survivor
    holds every acknowledged write (it was the only standby counting since), so it must
    take over instead of waiting for the dead standby forever."""
    common: dict[str, Any] = dict(etcd=etcd_url, group=group, failover_ttl=4,
                                  failover_safety_margin=1.0, sync_replicas=1,
                                  sync_replicas_timeout=5.0)
    n1 = servers(node_name="n1", **common)
    r1 = n1.client()
    wait_until(lambda: r1.info("failover")["failover_role"] == "primary", 15, "n1 elected")
    n2 = servers(node_name="n2", **common)
    n3 = servers(node_name="n3", **common)
    r2 = n2.client()
    wait_until(lambda: r1.info("failover")["failover_sync_members"] == ["n2", "n3"], 30,
               "n2 and n3 in the sync set")
    n3.stop()  # resigns: its member key goes at once
    wait_until(lambda: r1.info("failover")["failover_sync_members"] == "n2", 30,
               "n3 dropped from the sync set")
    assert r1.set("after", "acknowledged by n2")
    r1.close()
    n1.stop()
    wait_until(lambda: r2.info("failover")["failover_role"] == "primary", 20, "n2 elected")
    assert r2.get("after") == b"acknowledged by n2"
    r2.close()


def test_no_write_is_acknowledged_after_the_primarys_lease_deadline(
        servers: Callable[..., ServerThread], etcd_url: str, group: str) -> None:
    """Promotion trusts that nothing is acknowledged after the old primary's write deadline
    (positions read after the leader key went cover every acknowledged write). A write
    committed before the deadline whose K-th acknowledgement arrives after it must not be
    answered OK: the standby may have published the position that decides the failover
    before it applied the write. Here the standby is a raw socket holding n2's name (n2
    itself stopped), so the test chooses when it acknowledges; the deadline passing is
    the adapter's fence(), what the election calls when a renewal comes too late."""
    common: dict[str, Any] = dict(etcd=etcd_url, group=group, failover_ttl=10,
                                  failover_safety_margin=2.0, sync_replicas=1,
                                  sync_replicas_timeout=10.0)
    n1 = servers(node_name="n1", **common)
    r1 = n1.client()
    wait_until(lambda: r1.info("failover")["failover_role"] == "primary", 15, "n1 elected")
    n2 = servers(node_name="n2", **common)
    wait_until(lambda: r1.info("failover")["failover_sync_members"] == "n2", 30, "n2 in S")
    n2.stop()
    term = r1.info("failover")["failover_term"]
    standby = socket.create_connection((HOST, n1.port))
    writer = socket.create_connection((HOST, n1.port))
    try:
        standby.sendall(_cmd("REPLCONF", "listening-port", 1, "node-name", "n2"))
        assert standby.recv(100).startswith(b"+OK")
        standby.sendall(_cmd("SHALEDB.PSYNC", "?", -1, term, 1))
        wait_until(lambda: _info_repl(r1)["shaledb_good_replicas"] == 1, 10,
                   "the stand-in streaming")
        writer.sendall(_cmd("SET", "w", "unacknowledged-value"))
        # The stream carries the write: it is committed, its reply waits for the ACK.
        got = b""
        standby.settimeout(10)
        while b"unacknowledged-value" not in got:
            chunk = standby.recv(65536)
            assert chunk, "the primary closed the stand-in's link"
            got += chunk
        assert n1.server is not None and n1.server.node_control is not None
        n1.server.node_control.fence()  # the write deadline has passed
        standby.sendall(_cmd("REPLCONF", "ACK", 1 << 40))  # (clamped to what was sent)
        writer.settimeout(10)
        reply = writer.recv(4096)
        assert reply.startswith(b"-NOREPLICAS"), reply
        assert b"lease" in reply, reply
    finally:
        standby.close()
        writer.close()
        r1.close()
