"""The Jepsen-style harness end to end: etcd + ShaleDB nodes on loopback behind proxies, a
workload of acknowledged writes and fenced reads, a nemesis (SIGKILL, SIGSTOP past the
lease, partitions), then the lost-write and linearizability checks.

- ``test_single_node_group_survives_the_nemesis`` runs now: one node, every fault; the same
  node must come back under a newer term each time, losing no acknowledged write.
- ``test_jepsen_short`` (make test): 3 nodes in sync mode, one failover of each kind.
- the soak tests (``pytest -m soak tests/cluster/test_jepsen.py``; make soak): 100 forced
  failovers in sync mode, and async mode's loss window measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shaledb.testing.etcdproc import ETCD_MISSING, etcd_binary
from shaledb.testing.jepsen.cluster import ClusterConfig
from shaledb.testing.jepsen.linearizability import LINEARIZABLE
from shaledb.testing.jepsen.workload import Report, RunConfig, run

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=ETCD_MISSING)


def _run(tmp_path: Path, **kw: object) -> Report:
    cluster = ClusterConfig(tmp_path / "cluster", nodes=int(kw.pop("nodes", 3)),  # type: ignore[call-overload]
                            server_args=tuple(kw.pop("server_args", ())))  # type: ignore[arg-type]
    report = run(RunConfig(cluster, **kw))  # type: ignore[arg-type]
    (tmp_path / "report.json").write_text(report.to_json())
    print(report.to_json())
    return report


def _assert_safe(report: Report, failovers: int) -> None:
    assert report.failovers == failovers, json.dumps([vars(e) for e in report.events])
    assert report.lost_writes == [], report.lost_writes[:5]
    assert report.lost_adds == [], report.lost_adds[:5]
    assert report.linearizable == LINEARIZABLE
    assert report.acknowledged_writes > 0 and report.acknowledged_adds > 0


def test_single_node_group_survives_the_nemesis(tmp_path: Path) -> None:
    report = _run(tmp_path, nodes=1, failovers=3, nemeses=("kill", "pause", "partition"),
                  clients=3, keys=3, settle=0.5, seed=1, cycle=True, takeover_wait=2.0)
    # Each fault made the node lose the lease; it came back under a newer term.
    assert [e.kind for e in report.events] == ["kill", "pause", "partition"]
    assert [e.new_leader for e in report.events] == ["n1"] * 3
    terms = [e.new_term for e in report.events]
    assert terms == sorted(terms) and None not in terms
    _assert_safe(report, 3)
    assert report.ops.get("read:ok", 0) > 0


def test_jepsen_short(tmp_path: Path) -> None:
    """make test: 3 nodes, sync mode, 5 forced failovers: SIGKILL, SIGSTOP past the lease
    and a partition of the primary, in turn. Another node takes over each time; no
    acknowledged write is lost and the reads are linearizable."""
    report = _run(tmp_path, failovers=5, seed=2, cycle=True,
                  server_args=("--sync-replicas", "1"))
    assert [e.kind for e in report.events] == ["kill", "pause", "partition", "kill", "pause"]
    assert all(e.new_leader != e.node for e in report.events), report.events
    _assert_safe(report, 5)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_jepsen_soak_sync_100_failovers(tmp_path: Path) -> None:
    """make soak: sync mode, 100 forced failovers: no acknowledged write lost, reads
    linearizable per key."""
    _assert_safe(_run(tmp_path, failovers=100, seed=3, check_timeout=600.0,
                      server_args=("--sync-replicas", "1")), 100)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_jepsen_soak_async_loss_window(tmp_path: Path) -> None:
    """make soak: async mode loses acknowledged writes at failovers; measured, not
    asserted (docs/operations.md reports the numbers)."""
    report = _run(tmp_path, failovers=30, seed=4, nemeses=("kill", "partition"))
    print(f"async: {len(report.lost_adds)} of {report.acknowledged_adds} acknowledged adds "
          f"and {len(report.lost_writes)} of {report.acknowledged_writes} acknowledged "
          f"writes lost over {report.failovers} failovers")
