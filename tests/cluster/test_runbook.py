"""The failover runbook's procedures (docs/operations.md section 8), end to end: real
servers with ``--etcd`` on loopback and a real etcd."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from tests.server._server_support import ServerThread, wait_until

from shaledb.server.cluster.etcd import EtcdClient
from shaledb.server.cluster.group import read_group


def _role(client: redis.Redis) -> Any:
    return client.info("failover")["failover_role"]


def _sync_members(client: redis.Redis) -> Any:
    return client.info("failover")["failover_sync_members"]


def test_replace_a_dead_node(servers: Callable[..., ServerThread], etcd_url: str,
                             group: str, etcd: EtcdClient) -> None:
    """Sync mode, K = 1, three nodes: n3's machine is lost for good. A new node, n4, on an
    empty directory, joins with a name of its own and nothing else to configure: it loads
    the data, the primary's sync set becomes [n2 n4] (n3 dropped once n2 held every
    acknowledged write), and after the primary dies too, the group fails over to a node
    that holds every acknowledged write, written before and after the replacement."""
    common: dict[str, Any] = dict(etcd=etcd_url, group=group, failover_ttl=4,
                                  failover_safety_margin=1.0, sync_replicas=1,
                                  sync_replicas_timeout=5.0)
    n1 = servers(node_name="n1", **common)
    r1 = n1.client()
    wait_until(lambda: _role(r1) == "primary", 15, "n1 elected")
    n2 = servers(node_name="n2", **common)
    n3 = servers(node_name="n3", **common)
    wait_until(lambda: _sync_members(r1) == ["n2", "n3"], 30, "n2 and n3 in the sync set")
    for i in range(100):
        assert r1.set(f"before{i}", i)
    n3.stop()
    n4 = servers(node_name="n4", **common)
    r4 = n4.client()
    wait_until(lambda: _sync_members(r1) == ["n2", "n4"], 30,
               "n3 dropped from the sync set and n4 added")
    assert r4.get("before99") == b"99", "the new node loaded the data written before it came"
    for i in range(100):
        assert r1.set(f"after{i}", i)
    state = read_group(etcd, group)
    assert sorted(state.members) == ["n1", "n2", "n4"]
    assert state.sync is not None and sorted(state.sync.members) == ["n2", "n4"]
    r1.close()
    n1.stop()  # the old primary goes too: one of n2, n4 takes over with everything
    r2 = n2.client()
    wait_until(lambda: "primary" in (_role(r2), _role(r4)), 30, "n2 or n4 elected")
    new = r2 if _role(r2) == "primary" else r4
    assert [new.get(f"before{i}") for i in range(100)] == [str(i).encode() for i in range(100)]
    assert [new.get(f"after{i}") for i in range(100)] == [str(i).encode() for i in range(100)]

    def acknowledged() -> bool:
        try:
            return bool(new.set("later", "ok"))
        except redis.ResponseError as exc:
            assert "NOREPLICAS" in str(exc)  # until the other node follows the new primary
            return False

    wait_until(acknowledged, 30, "the other node to follow and acknowledge a write")
    for c in (r2, r4):
        c.close()
