"""The election state machine against a real etcd, with in-memory nodes
(MemoryNodeControl); steps are driven by hand so each test controls who runs when."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from shaledb.errors import InvalidArgument
from shaledb.server.cluster.control import MemoryNodeControl, StaleTermError
from shaledb.server.cluster.election import PRIMARY, REPLICA, Election, ElectionConfig
from shaledb.server.cluster.etcd import EtcdClient, LeaseExpired
from shaledb.server.cluster.group import GroupKeys, read_group


class Group:
    """Elections of several in-memory nodes in one group."""

    def __init__(self, url: str, group: str, **cfg: object) -> None:
        self.url = url
        self.group = group
        self.cfg = cfg
        self.nodes: dict[str, Election] = {}

    def add(self, name: str, offset: int = 0, port: int | None = None) -> Election:
        port = port or 7000 + len(self.nodes)
        e = Election(EtcdClient(self.url), MemoryNodeControl(offset=offset),
                     ElectionConfig(self.group, name, "127.0.0.1", port, **self.cfg))
        self.nodes[name] = e
        return e

    def ctl(self, name: str) -> MemoryNodeControl:
        c = self.nodes[name].control
        assert isinstance(c, MemoryNodeControl)
        return c

    def step(self, *names: str) -> None:
        for n in names or list(self.nodes):
            self.nodes[n].step()

    def kill(self, name: str) -> None:
        """The node dies: its lease goes (etcd deletes its keys), it never steps again."""
        e = self.nodes.pop(name)
        if e.lease is not None:
            try:
                e.client.lease_revoke(e.lease)
            except LeaseExpired:
                pass  # it lapsed already
        e.client.close()

    def close(self) -> None:
        for e in self.nodes.values():
            e.close()
            e.client.close()


@pytest.fixture
def grp(etcd_url: str, group: str) -> Iterator[Group]:
    g = Group(etcd_url, group, ttl=4, safety_margin=1.0)
    yield g
    g.close()


def test_leader_elected_and_replicas_follow(grp: Group, etcd: EtcdClient) -> None:
    a, b, c = grp.add("a"), grp.add("b"), grp.add("c")
    grp.step()
    assert a.role == PRIMARY and a.term == 1
    assert grp.ctl("a").is_writable()
    assert grp.ctl("a").calls[:2] == [("make_durable", 0), ("promote", 1)]  # fsync first
    assert b.role == REPLICA and c.role == REPLICA
    assert grp.ctl("b").primary == ("127.0.0.1", 7000) and grp.ctl("b").term == 1
    assert grp.ctl("c").calls == [("demote_to", "127.0.0.1", 7000, 1)]
    grp.step()
    grp.step()
    # Stable: nobody re-points or re-promotes while the leader renews.
    assert grp.ctl("c").calls == [("demote_to", "127.0.0.1", 7000, 1)]
    assert grp.ctl("a").calls == [("make_durable", 0), ("promote", 1)]
    st = read_group(etcd, grp.group)
    assert st.leader is not None and st.leader.node == "a" and st.term == 1
    assert sorted(st.members) == ["a", "b", "c"]
    assert st.members["b"].following == "a" and st.members["a"].role == PRIMARY


def test_dead_leader_replaced_by_the_most_advanced_replica_with_term_plus_one(
        grp: Group, etcd: EtcdClient) -> None:
    grp.add("a")
    grp.add("b", offset=50)
    grp.add("c", offset=80)
    grp.step("a")
    grp.step("b", "c")
    assert grp.nodes["a"].role == PRIMARY
    grp.kill("a")  # lease revoked: the leader key is gone at once
    grp.step("b")  # b sees c ahead of it: it must not take over
    assert grp.nodes["b"].role == REPLICA
    grp.step("c")
    assert grp.nodes["c"].role == PRIMARY and grp.nodes["c"].term == 2
    assert grp.ctl("c").calls[-1] == ("promote", 2)
    grp.step("b")
    assert grp.ctl("b").primary == ("127.0.0.1", 7002) and grp.ctl("b").term == 2
    st = read_group(etcd, grp.group)
    assert st.term == 2 and st.leader is not None and st.leader.node == "c"


def test_expired_lease_replaced_and_old_leader_returns_as_replica(
        etcd_url: str, group: str) -> None:
    g = Group(etcd_url, group, ttl=2, safety_margin=0.5, interval=0.3)
    try:
        a, b = g.add("a"), g.add("b")
        g.step()
        assert a.role == PRIMARY
        # a stops renewing (a partition from etcd): its lease expires in etcd after ~2 s.
        deadline = time.monotonic() + 10
        while b.role != PRIMARY:
            assert time.monotonic() < deadline, "b never took over"
            g.step("b")
            time.sleep(0.1)
        assert b.term == 2
        assert not g.ctl("a").is_writable()
        g.step("a")  # a comes back: lease gone -> fenced; then follows b
        g.step("a")
        assert a.role == REPLICA
        assert g.ctl("a").primary == ("127.0.0.1", 7001) and g.ctl("a").term == 2
        assert ("fence",) in g.ctl("a").calls
    finally:
        g.close()


def test_paused_leader_fences_itself_before_its_lease_can_expire(
        etcd_url: str, group: str) -> None:
    g = Group(etcd_url, group, ttl=3, safety_margin=1.0, interval=0.3)
    try:
        a, b = g.add("a"), g.add("b")
        g.step()
        sent = time.monotonic()
        g.step("a")  # the last renewal: sent no earlier than `sent`
        assert a.role == PRIMARY
        fence_at = None
        takeover_at = None
        deadline = time.monotonic() + 15
        # a is paused (never steps again); its write path still checks the deadline.
        while takeover_at is None:
            assert time.monotonic() < deadline, "b never took over"
            now = time.monotonic()
            if fence_at is None and not g.ctl("a").is_writable():
                fence_at = now
            g.step("b")
            if b.role == PRIMARY:
                takeover_at = time.monotonic()
                # a must already refuse writes when anyone else may write.
                assert not g.ctl("a").is_writable()
            time.sleep(0.05)
        assert fence_at is not None
        # The write path's deadline (is_writable is False from it on; fence_at only saw it
        # between two of b's steps, which take long on a loaded machine): TTL - margin
        # after the renewal was sent (within a step's slack) ...
        fenced = g.ctl("a").deadline
        assert fence_at >= fenced
        assert fenced - sent <= 3 - 1.0 + 0.2
        # ... and at least the safety margin before the takeover.
        assert takeover_at - fenced >= 1.0 - 0.2
    finally:
        g.close()


def test_stale_term_refused_and_old_primary_steps_down(grp: Group, etcd: EtcdClient) -> None:
    ctl = MemoryNodeControl(term=5)
    with pytest.raises(StaleTermError):
        ctl.promote(3)
    with pytest.raises(StaleTermError):
        ctl.demote_to("127.0.0.1", 1, 4)
    assert ctl.role == "replica" and not ctl.is_writable()
    a, b = grp.add("a"), grp.add("b")
    grp.step()
    assert a.role == PRIMARY and a.term == 1
    # Someone else wins term 2 while a is cut off (its lease revoked from outside).
    assert a.lease is not None
    etcd.lease_revoke(a.lease)
    grp.step("b")
    assert b.role == PRIMARY and b.term == 2
    grp.step("a")  # lease gone -> fence
    assert not grp.ctl("a").is_writable() and a.role == REPLICA
    grp.step("a")
    assert grp.ctl("a").primary == ("127.0.0.1", 7001)
    # A leader key from term 1 can never come back: the term counter only grows.
    keys = GroupKeys(grp.group)
    kv = etcd.get(keys.term)
    assert kv is not None and kv.value == b"2"


def test_only_one_of_two_racing_candidates_wins(grp: Group, etcd: EtcdClient) -> None:
    a, b = grp.add("a"), grp.add("b")
    for e in (a, b):
        e._renew()
    st = read_group(etcd, grp.group)
    a._take_over(st)
    b._take_over(st)  # same view: the compare on the term / leader key fails
    assert a.role == PRIMARY and b.role == REPLICA
    assert read_group(etcd, grp.group).term == 1


def test_close_resigns_so_failover_is_immediate(grp: Group) -> None:
    a, b = grp.add("a"), grp.add("b")
    grp.step()
    assert a.role == PRIMARY
    a.close()
    assert not grp.ctl("a").is_writable()
    grp.nodes.pop("a")
    grp.step("b")
    assert b.role == PRIMARY and b.term == 2


def test_sync_mode_promotes_only_a_member_that_holds_every_acknowledged_write(
        etcd_url: str, group: str, etcd: EtcdClient) -> None:
    g = Group(etcd_url, group, ttl=4, safety_margin=1.0, sync_mode=True, sync_replicas=1)
    try:
        g.add("a")
        g.add("b", offset=10)
        g.add("c", offset=10)
        g.step("a")
        g.step("b", "c")
        g.step("a")  # a sees b, c following it: S = {b, c}, published before they count
        st = read_group(etcd, group)
        assert st.sync is not None and st.sync.members == ("b", "c") and st.sync.k == 1
        # Standbys are named by node (each announces its name in its replication handshake).
        assert g.ctl("a").standbys == ["b", "c"]
        set_calls = [c for c in g.ctl("a").calls if c[0] == "set_sync_standbys"]
        # At promotion nobody counts yet (writes wait or are refused), then b and c.
        assert set_calls == [("set_sync_standbys", ()), ("set_sync_standbys", ("b", "c"))]
        # A node outside S is never promoted, whatever its offset.
        g.add("d", offset=1000)
        g.step("d")
        g.kill("a")
        g.kill("c")
        # K=1 of |S|=2: an acknowledged write may be on c only; b alone must not win.
        g.step("b", "d")
        g.step("b", "d")
        assert all(e.role == REPLICA for e in g.nodes.values())
        assert read_group(etcd, group).leader is None
        # c comes back (same name, new process): now b and c are both live; c is ahead.
        g.add("c", offset=30, port=7002)
        g.step("c", "b", "d")
        assert g.nodes["c"].role == PRIMARY and g.nodes["c"].term == 2
        st = read_group(etcd, group)
        # Everyone who may hold acknowledged writes stays a candidate: old S + old leader.
        assert st.sync is not None and st.sync.members == ("a", "b") and st.sync.term == 2
    finally:
        g.close()


def test_sync_set_never_shrinks_within_a_term(etcd_url: str, group: str,
                                              etcd: EtcdClient) -> None:
    g = Group(etcd_url, group, ttl=4, safety_margin=1.0, sync_mode=True, sync_replicas=1)
    try:
        g.add("a")
        g.add("b")
        g.step("a")
        g.step("b")
        g.step("a")
        g.kill("b")
        g.add("c")
        g.step("c")
        g.step("a")
        st = read_group(etcd, group)
        assert st.sync is not None and st.sync.members == ("b", "c")
    finally:
        g.close()


def test_config_bounds() -> None:
    ElectionConfig("g", "n", "127.0.0.1", 1, ttl=2, safety_margin=0.5)
    for bad in [dict(ttl=1), dict(safety_margin=0), dict(safety_margin=10),
                dict(interval=5.0), dict(sync_replicas=0), dict(group="a/b"),
                dict(node=""), dict(port=0)]:
        kw: dict[str, object] = {"group": "g", "node": "n", "host": "127.0.0.1", "port": 1}
        kw.update(bad)
        with pytest.raises(InvalidArgument):
            ElectionConfig(**kw)  # type: ignore[arg-type]


def _random_schedule(etcd_url: str, group: str, etcd: EtcdClient, seed: int,
                     actions: int) -> int:
    """Random steps, kills, restarts, pauses and sleeps of four in-memory nodes against
    real etcd; after every action at most one node may write, and only under etcd's
    current term. Returns the number of terms seen."""
    import random

    rng = random.Random(seed)
    g = Group(etcd_url, group, ttl=2, safety_margin=0.5, interval=0.3)
    names = ["a", "b", "c", "d"]
    try:
        for n in names:
            g.add(n, offset=rng.randrange(3), port=7000 + names.index(n))
        seen_terms = {0}
        for _ in range(actions):
            roll = rng.random()
            live = list(g.nodes)
            if roll < 0.6 and live:
                g.step(rng.choice(live))
            elif roll < 0.7 and len(live) > 1:
                g.kill(rng.choice(live))
            elif roll < 0.8:
                dead = [n for n in names if n not in g.nodes]
                if dead:
                    n = rng.choice(dead)
                    g.add(n, offset=rng.randrange(3), port=7000 + names.index(n))
            else:
                time.sleep(rng.choice([0.1, 0.5, 1.0, 2.0]))  # pauses past the lease too
            writable = [n for n in g.nodes if g.ctl(n).is_writable()]
            assert len(writable) <= 1, f"two writable primaries: {writable}"
            term = read_group(etcd, group).term
            seen_terms.add(term)
            for n in writable:
                assert g.ctl(n).term == term, f"{n} writes under term {g.ctl(n).term} < {term}"
        assert sorted(seen_terms) == list(range(max(seen_terms) + 1))  # no term skipped back
        return len(seen_terms) - 1
    finally:
        g.close()


@pytest.mark.parametrize("seed", [1])
def test_random_schedules_never_have_two_writers(etcd_url: str, group: str,
                                                 etcd: EtcdClient, seed: int) -> None:
    assert _random_schedule(etcd_url, group, etcd, seed, 60) >= 1


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(100, 120))
def test_random_schedules_never_have_two_writers_soak(etcd_url: str, group: str,
                                                      etcd: EtcdClient, seed: int) -> None:
    _random_schedule(etcd_url, group, etcd, seed, 300)
