"""`shaledb serve --etcd`: the election beside a real server, the write fence, SENTINEL for
redis-py's Sentinel client, and `shaledb cluster status` -- against a real etcd on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.sentinel import Sentinel
from tests.server._server_support import (
    HOST,
    ServerThread,
    free_port,
    run_server_process,
    wait_until,
)

from shaledb.server import ServerConfig
from shaledb.server.cluster.control import MemoryNodeControl
from shaledb.server.cluster.election import PRIMARY, Election, ElectionConfig
from shaledb.server.cluster.etcd import EtcdClient
from shaledb.server.cluster.group import GroupKeys, LeaderInfo, read_group


def _set_ok(client: redis.Redis, key: str, value: str) -> bool:
    """Whether a write was accepted (a node refuses them until its election step)."""
    try:
        return bool(client.set(key, value))
    except redis.ReadOnlyError:
        return False


def _primary_of(client: redis.Redis, group: str) -> Any:
    return client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", group)


def test_single_node_group_elects_itself_and_accepts_writes(
        servers: Callable[..., ServerThread], etcd_url: str, group: str) -> None:
    s = servers(etcd=etcd_url, group=group, node_name="n1", failover_ttl=3,
                failover_safety_margin=1.0)
    r = s.client()
    wait_until(lambda: _primary_of(r, group) == [HOST.encode(), str(s.port).encode()],
               10, "the node to become primary")
    wait_until(lambda: _set_ok(r, "k", "v"), 5, "a write to be accepted")
    assert r.get("k") == b"v"
    assert r.config_get("etcd") == {"etcd": etcd_url}
    assert r.config_get("group") == {"group": group}
    assert r.config_get("node-name") == {"node-name": "n1"}
    assert r.config_get("failover-ttl") == {"failover-ttl": "3"}
    with pytest.raises(redis.ResponseError):
        r.config_set("etcd", "http://127.0.0.1:1")
    info = r.info("failover")
    assert info["failover_enabled"] == 1 and info["failover_role"] == "primary"
    assert info["failover_writable"] == 1 and info["failover_leader"] == "n1"
    assert info["failover_term"] == 1 and 0 < info["failover_write_deadline_in_ms"] <= 2000
    assert "failover_enabled" in r.info("all") and "failover_enabled" not in r.info()
    assert r.execute_command("SENTINEL", "MYID") == b"n1"
    assert r.execute_command("SENTINEL", "SENTINELS", group) == []
    masters = r.execute_command("SENTINEL", "MASTERS")
    assert len(masters) == 1
    r.close()


def test_fenced_node_refuses_writes_then_recovers_leadership(
        servers: Callable[..., ServerThread], etcd_url: str, group: str,
        etcd: EtcdClient) -> None:
    s = servers(etcd=etcd_url, group=group, node_name="n1", failover_ttl=3,
                failover_safety_margin=1.0)
    r = s.client()
    wait_until(lambda: _primary_of(r, group) is not None, 10, "a primary")
    wait_until(lambda: _set_ok(r, "a", "1"), 5, "a write to be accepted")
    # etcd drops the lease (as when the node was cut off for longer than the TTL): the
    # node must stop writing, then win term 2 (it is alone) and write again.
    lead = read_group(etcd, group).leader
    assert lead is not None and lead.term == 1
    etcd.lease_revoke(lead.lease)
    refused = 0
    deadline = time.monotonic() + 15
    while True:
        assert time.monotonic() < deadline, "the node never took term 2"
        try:
            r.set("b", "2")
        except redis.ReadOnlyError as exc:
            assert "ask SENTINEL get-master-addr-by-name" in str(exc)
            refused += 1
            time.sleep(0.02)
            continue
        st = read_group(etcd, group)
        if st.leader is not None and st.leader.term == 2:
            break
    assert refused > 0
    st = read_group(etcd, group)
    assert st.term == 2 and st.leader is not None and st.leader.node == "n1"
    r.close()


def test_node_that_is_not_the_leader_refuses_writes_and_points_to_it(
        servers: Callable[..., ServerThread], etcd_url: str, group: str,
        etcd: EtcdClient) -> None:
    keys = GroupKeys(group)
    lease = etcd.lease_grant(60)
    etcd.put(keys.term, b"1")
    etcd.put(keys.leader, LeaderInfo("other", HOST, 7999, 1).to_json(), lease=lease)
    s = servers(etcd=etcd_url, group=group, node_name="n1", failover_ttl=3,
                failover_safety_margin=1.0)
    r = s.client()
    wait_until(lambda: "n1" in read_group(etcd, group).members, 10, "n1's member key")
    with pytest.raises(redis.ReadOnlyError):
        r.set("k", "v")
    # MULTI/EXEC and scripts go through the same commit: refused as well, nothing written.
    with pytest.raises(redis.ReadOnlyError):
        r.eval("return redis.call('set', KEYS[1], 'x')", 1, "k2")
    pipe = r.pipeline(transaction=True)
    pipe.set("k3", "v").incr("n")
    with pytest.raises(redis.ReadOnlyError):
        pipe.execute()
    assert r.exists("k", "k2", "k3", "n") == 0
    assert _primary_of(r, group) == [HOST.encode(), b"7999"]
    wait_until(lambda: read_group(etcd, group).members["n1"].following == "other", 10,
               "n1 to follow the leader")
    reps = r.execute_command("SENTINEL", "REPLICAS", group)
    assert len(reps) == 1
    rep = reps[0]
    flat = rep if isinstance(rep, dict) else dict(zip(rep[::2], rep[1::2], strict=True))
    assert flat[b"ip"] == HOST.encode() and flat[b"port"] == str(s.port).encode()
    assert flat[b"flags"] == b"slave" and flat[b"master-link-status"] == b"ok"
    etcd.lease_revoke(lease)
    r.close()


def test_redis_py_sentinel_finds_the_primary_and_follows_a_failover(
        servers: Callable[..., ServerThread], etcd_url: str, group: str,
        etcd: EtcdClient) -> None:
    # Two plain servers play the primary before and after a failover; the leader key is
    # set by hand. The node with --etcd is only asked, as a Sentinel.
    old = servers()
    new = servers()
    # They lead their terms as the replication layer sees it too: n1 replicates from the
    # leader it is shown (and a primary of an older term would be fenced by its term).
    for st, term in ((old, 1), (new, 2)):
        c = st.client()
        c.execute_command("SHALEDB.ROLE", "PRIMARY", term)
        c.close()
    keys = GroupKeys(group)
    lease = etcd.lease_grant(60)
    etcd.put(keys.term, b"1")
    etcd.put(keys.leader, LeaderInfo("old", HOST, old.port, 1).to_json(), lease=lease)
    node = servers(etcd=etcd_url, group=group, node_name="n1", failover_ttl=3,
                   failover_safety_margin=1.0)
    wait_until(lambda: "n1" in read_group(etcd, group).members, 10, "n1's member key")
    sentinel = Sentinel([(HOST, node.port)], socket_timeout=5)
    assert sentinel.discover_master(group) == (HOST, old.port)
    master = sentinel.master_for(group, socket_timeout=5)
    master.set("k", "before")
    assert old.client().get("k") == b"before"
    assert sentinel.discover_slaves(group) == [(HOST, node.port)]
    replica = sentinel.slave_for(group, socket_timeout=5)
    assert replica.ping()
    with pytest.raises(redis.sentinel.MasterNotFoundError):
        sentinel.discover_master("no-such-group")
    # Failover: the leader key now names `new`; the old primary goes away.
    etcd.put(keys.term, b"2")
    etcd.put(keys.leader, LeaderInfo("new", HOST, new.port, 2).to_json(), lease=lease)
    old.stop()
    # The connection to the old primary broke: redis-py's default retry reconnects, and a
    # new connection asks the Sentinel again.
    master.set("k", "after")
    assert new.client().get("k") == b"after"
    etcd.delete(keys.leader)
    with pytest.raises(redis.sentinel.MasterNotFoundError):
        sentinel.discover_master(group)
    etcd.lease_revoke(lease)


def test_sentinel_errors(servers: Callable[..., ServerThread], etcd_url: str,
                         group: str) -> None:
    plain = servers()
    r = plain.client()
    with pytest.raises(redis.ResponseError, match="start the server with --etcd"):
        r.execute_command("SENTINEL", "MASTERS")
    assert r.info("failover") == {"failover_enabled": 0}
    assert len(r.execute_command("SENTINEL", "HELP")) > 5
    r.close()
    s = servers(etcd=etcd_url, group=group, node_name="n1", failover_ttl=3,
                failover_safety_margin=1.0)
    r = s.client()
    assert _primary_of(r, "other-group") is None
    with pytest.raises(redis.ResponseError, match="No such master with that name"):
        r.execute_command("SENTINEL", "REPLICAS", "other-group")
    with pytest.raises(redis.ResponseError, match="unknown subcommand"):
        r.execute_command("SENTINEL", "FAILOVER", group)
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("SENTINEL", "REPLICAS")
    r.close()


def test_config_needs_group_and_node_name(tmp_path: Path) -> None:
    from shaledb.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="needs group and node_name"):
        ServerConfig(etcd="http://127.0.0.1:2379")
    with pytest.raises(InvalidArgument, match="need etcd"):
        ServerConfig(group="g")
    with pytest.raises(InvalidArgument, match="failover_announce_host"):
        ServerConfig(etcd="http://127.0.0.1:2379", group="g", node_name="n", host="0.0.0.0")
    with pytest.raises(InvalidArgument, match="failover_safety_margin"):
        ServerConfig(etcd="http://127.0.0.1:2379", group="g", node_name="n",
                     failover_ttl=2, failover_safety_margin=1.5)
    with pytest.raises(InvalidArgument):
        ServerConfig(etcd="ftp://x", group="g", node_name="n")
    with pytest.raises(InvalidArgument):
        ServerConfig(etcd="http://127.0.0.1:2379", group="g/x", node_name="n")


def test_sigstopped_primary_refuses_writes_when_resumed_after_a_failover(
        tmp_path: Path, etcd_url: str, group: str, etcd: EtcdClient) -> None:
    """The node is SIGSTOPped past its lease; another node takes over; on SIGCONT the old
    primary's very first write is refused, whichever of its threads runs first."""
    conf = tmp_path / "n1.toml"
    conf.write_text(f'etcd = "{etcd_url}"\ngroup = "{group}"\nnode_name = "n1"\n'
                    "failover_ttl = 2\nfailover_safety_margin = 0.5\n")
    port = free_port()
    proc = run_server_process(tmp_path / "n1", port, "--config", str(conf))
    other = Election(EtcdClient(etcd_url), MemoryNodeControl(offset=0),
                     ElectionConfig(group, "n2", HOST, 7998, ttl=2, safety_margin=0.5,
                                    interval=0.3))
    try:
        r = redis.Redis(host=HOST, port=port, socket_timeout=5)
        wait_until(lambda: _primary_of(r, group) == [HOST.encode(), str(port).encode()],
                   10, "n1 to become primary")
        wait_until(lambda: _set_ok(r, "k", "v"), 5, "a write")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 15
            while other.role != PRIMARY:
                assert time.monotonic() < deadline, "n2 never took over"
                other.step()
                time.sleep(0.1)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        with pytest.raises(redis.ReadOnlyError):
            r.set("k", "split-brain")
        other.step()
        # Commands that commit by themselves are fenced too.
        for cmd in (("FLUSHALL",), ("SWAPDB", "0", "1"), ("DEL", "k"), ("EXPIRE", "k", "1")):
            with pytest.raises(redis.ReadOnlyError):
                r.execute_command(*cmd)
        assert r.get("k") == b"v" and r.ttl("k") == -1
        wait_until(lambda: _primary_of(r, group) == [HOST.encode(), b"7998"], 10,
                   "n1 to name n2 as the primary")
        r.close()
    finally:
        other.close()
        other.client.close()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_cluster_status_cli(etcd_url: str, group: str, etcd: EtcdClient) -> None:
    a = Election(EtcdClient(etcd_url), MemoryNodeControl(offset=5),
                 ElectionConfig(group, "a", HOST, 7101, ttl=4, safety_margin=1.0))
    b = Election(EtcdClient(etcd_url), MemoryNodeControl(offset=3),
                 ElectionConfig(group, "b", HOST, 7102, ttl=4, safety_margin=1.0))
    try:
        a.step()
        b.step()
        # Keep renewing while the CLI runs (two interpreter starts can outlast a 4 s lease
        # on a loaded machine: the leader key was gone by the second one).
        a.start()
        b.start()
        cmd = [sys.executable, "-m", "shaledb.cli", "cluster", "status", "--etcd", etcd_url,
               "--group", group]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
        assert f"group {group}: term 1, primary a at {HOST}:7101" in out.stdout
        assert "following a" in out.stdout and "b " in out.stdout
        js = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True,
                                       timeout=60, check=True).stdout)
        assert js["leader"]["node"] == "a" and set(js["members"]) == {"a", "b"}
        dead = [sys.executable, "-m", "shaledb.cli", "cluster", "status", "--etcd",
                f"http://{HOST}:{free_port()}", "--group", group]
        bad = subprocess.run(dead, capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "cannot read group" in bad.stderr
    finally:
        for e in (a, b):
            e.close()
            e.client.close()
