"""Failover wired to replication (cluster/runner.py's ServerNodeControl): the one write fence
also holds the background writers, and in sync mode only the sync set's acknowledgements
count -- real servers and a real etcd on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from tests.server._server_support import HOST, ServerThread, free_port, wait_until

from shaledb.server import ServerConfig
from shaledb.server.cluster.etcd import EtcdClient
from shaledb.server.cluster.group import GroupKeys, LeaderInfo, MemberInfo, read_group
from shaledb.testing.etcdproc import EtcdProcess
from shaledb.testing.jepsen.proxy import ProxyLoop


@pytest.fixture
def proxies() -> Iterator[ProxyLoop]:
    loop = ProxyLoop()
    yield loop
    loop.close()


def _writable(r: redis.Redis) -> bool:
    return bool(r.info("failover")["failover_writable"])


def test_active_expiry_stands_still_on_a_primary_past_its_lease(
        servers: Callable[..., ServerThread], etcd_server: EtcdProcess, group: str,
        proxies: ProxyLoop) -> None:
    """A primary cut off from etcd is fenced: its active expiry must not delete either (a
    deletion is a write the new primary never made), and it resumes once re-elected."""
    to_etcd = proxies.add((HOST, etcd_server.client_port), "n1-etcd")
    s = servers(etcd=f"http://{HOST}:{to_etcd.port}", group=group, node_name="n1",
                failover_ttl=3, failover_safety_margin=1.0, hz=50)
    r = s.client()
    wait_until(lambda: _writable(r), 15, "the node to be elected")
    ttl_ms = 5000
    for i in range(50):
        r.set(f"k{i}", "v", px=ttl_ms)
    written = time.monotonic()
    to_etcd.cut("blackhole")
    wait_until(lambda: not _writable(r), 5, "the node to fence itself")
    assert time.monotonic() - written < ttl_ms / 1000, "fenced too late for this test"
    time.sleep(max(0.0, written + ttl_ms / 1000 + 1.0 - time.monotonic()))
    # Expired, but nothing deleted them: the fenced node made no write.
    assert r.dbsize() == 50
    assert r.info("stats")["expired_keys"] == 0
    to_etcd.heal()
    wait_until(lambda: _writable(r), 20, "the node to be re-elected")
    wait_until(lambda: r.dbsize() == 0, 10, "active expiry to delete the keys")
    r.close()


def test_sync_mode_counts_only_the_sync_sets_acknowledgements(
        servers: Callable[..., ServerThread], etcd_server: EtcdProcess,
        group: str) -> None:
    """A replica outside the failover group (REPLICAOF by hand) acknowledges, but is no
    candidate for promotion: its acknowledgements must not make a write acknowledged. A
    member of the group that follows the primary joins the sync set, and then they do."""
    url = etcd_server.url
    n1 = servers(etcd=url, group=group, node_name="n1", failover_ttl=3,
                 failover_safety_margin=1.0, sync_replicas=1, sync_replicas_timeout=2.0)
    r1 = n1.client()
    wait_until(lambda: r1.info("failover")["failover_role"] == "primary", 15,
               "n1 to be elected")
    outsider = servers(replicaof=f"{HOST} {n1.port}")
    ro = outsider.client()
    wait_until(lambda: ro.info("replication")["master_link_status"] == "up", 15,
               "the outside replica's link")
    wait_until(lambda: len(r1.info("replication").get("slave0", "")) > 0, 5,
               "the primary to see it")
    time.sleep(1.5)  # a heartbeat and its ACK have come
    with pytest.raises(redis.ResponseError, match="NOREPLICAS"):
        r1.set("a", "1")
    assert r1.info("replication")["shaledb_good_replicas"] == 0
    n2 = servers(etcd=url, group=group, node_name="n2", failover_ttl=3,
                 failover_safety_margin=1.0, sync_replicas=1)
    r2 = n2.client()

    def acknowledged() -> bool:
        try:
            return bool(r1.set("b", "2"))
        except redis.ResponseError as exc:
            assert "NOREPLICAS" in str(exc)
            return False

    wait_until(acknowledged, 30, "n2 to join the sync set and acknowledge")
    assert r1.info("all")["failover_sync_members"] == "n2"
    wait_until(lambda: r2.get("b") == b"2", 5, "n2 to hold the write")
    for c in (r1, r2, ro):
        c.close()


def test_sync_replicas_cannot_change_under_a_running_election(
        servers: Callable[..., ServerThread], etcd_server: EtcdProcess, group: str) -> None:
    """The election's promotion rule (sync mode, K) is fixed at start: CONFIG SET must not
    change K under it."""
    s = servers(etcd=etcd_server.url, group=group, node_name="n1", failover_ttl=3,
                failover_safety_margin=1.0)
    r = s.client()
    with pytest.raises(redis.ResponseError, match="automatic failover"):
        r.config_set("sync-replicas", 1)
    assert r.config_get("sync-replicas") == {"sync-replicas": "0"}
    r.config_set("sync-replicas", 0)  # the same value is fine
    r.close()


def test_a_demoted_primary_publishes_its_whole_history_as_its_position(
        servers: Callable[..., ServerThread], etcd_server: EtcdProcess, group: str,
        etcd: EtcdClient) -> None:
    """A primary told to follow a new leader still holds every write it made until a full
    resync replaces them: its published position is (the term it led, its last sequence
    number), so that it ranks above its own replicas if the new leader dies first (in sync
    mode it may be the only node holding the last acknowledged writes)."""
    s = servers(etcd=etcd_server.url, group=group, node_name="n1", failover_ttl=3,
                failover_safety_margin=1.0)
    r = s.client()
    wait_until(lambda: _writable(r), 15, "the node to be elected")
    for i in range(20):
        r.set(f"k{i}", "v")
    last = s.server.db.last_sequence if s.server is not None else 0
    assert last >= 20
    # A node n9 (at a port where nothing listens) takes over under term 5.
    keys = GroupKeys(group)
    lease = etcd.lease_grant(30)
    etcd.put(keys.term, b"5")
    etcd.put(keys.leader, LeaderInfo("n9", HOST, free_port(), 5).to_json(), lease=lease)

    def published() -> MemberInfo | None:
        m = read_group(etcd, group).members.get("n1")
        return m if m is not None and m.following == "n9" else None

    wait_until(lambda: published() is not None, 15, "n1 to follow n9")
    wait_until(lambda: r.info("replication")["role"] == "slave", 5, "n1 to be a replica")
    m = published()
    assert m is not None and m.role == "replica"
    # (Its own state record, written at the demotion, is one more sequence number.)
    assert m.term == 1 and m.offset >= last
    r.close()


def test_role_commands_are_refused_while_failover_manages_the_role(
        servers: Callable[..., ServerThread], etcd_server: EtcdProcess, group: str) -> None:
    """REPLICAOF NO ONE on a failover replica made it a primary that never got a lease nor
    a new primary to follow; REPLICAOF on the primary left the group without a writer while
    the election kept renewing its key."""
    s = servers(etcd=etcd_server.url, group=group, node_name="n1", failover_ttl=3,
                failover_safety_margin=1.0)
    r = s.client()
    wait_until(lambda: _writable(r), 15, "the node to be elected")
    for cmd in (("REPLICAOF", "NO", "ONE"), ("REPLICAOF", HOST, "1"), ("SLAVEOF", "NO", "ONE"),
                ("SHALEDB.ROLE", "REPLICA", HOST, "1", "9")):
        with pytest.raises(redis.ResponseError, match="automatic failover"):
            r.execute_command(*cmd)
    assert r.info("replication")["role"] == "master" and _writable(r)
    r.close()


def test_replicaof_and_etcd_exclude_each_other() -> None:
    from shaledb.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="etcd and replicaof exclude each other"):
        ServerConfig.from_mapping({"etcd": "http://127.0.0.1:2379", "group": "g",
                                   "node_name": "n", "replicaof": "127.0.0.1 6380"})
