"""Review 15b: attacks on the sync-mode failover rules (fresh positions, the shrinking sync
set, node names); each failed on the code it was written against.

Election-level tests use test_election's ``Group`` (in-memory nodes, real etcd, steps by
hand). A node's ``MemoryNodeControl.offset`` stands for how far its copy of the primary's
stream goes; "w acknowledged by X only" means the primary counted X's acknowledgement (K =
1) for the write at that offset."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from tests.server._server_support import ServerThread, wait_until

from shaledb.errors import StorageError
from shaledb.server.cluster.control import MemoryNodeControl
from shaledb.server.cluster.election import PRIMARY, REPLICA, Election, ElectionConfig
from shaledb.server.cluster.etcd import EtcdClient, EtcdUnavailable, Put
from shaledb.server.cluster.group import GroupKeys, read_group

from .test_election import Group


@pytest.fixture
def sync1(etcd_url: str, group: str) -> Iterator[Group]:
    g = Group(etcd_url, group, ttl=4, safety_margin=1.0, sync_mode=True, sync_replicas=1)
    yield g
    g.close()


def _lead_with_standbys(g: Group, leader: str, *standbys: str) -> None:
    g.step(leader)
    g.step(*standbys)
    g.step(leader)  # the leader sees them following: S = standbys


def test_a_replacement_under_a_dead_standbys_name_does_not_inherit_its_acknowledgements(
        sync1: Group, etcd: EtcdClient) -> None:
    """S = {b, c}, K = 1. Write w (offset 20) is acknowledged by b only; c is at 15. b's
    machine is lost; the operator starts a new b on an empty directory before the primary's
    next step noticed b's member key missing (or the old key had not expired yet: a crash
    leaves it for up to a TTL). Nothing changes in S: the name b is live again, so the
    primary never narrows S, and promotion counts the new b as a member of S. The primary
    dies: b (empty) and c are both live and fresh, |S| - K + 1 = 2 -- c wins at 15 and w,
    acknowledged, is gone from the group."""
    g = sync1
    g.add("a", offset=20)
    g.add("b", offset=10)
    g.add("c", offset=10)
    _lead_with_standbys(g, "a", "b", "c")
    st = read_group(etcd, g.group)
    assert st.sync is not None and st.sync.members == ("b", "c")
    g.ctl("b").offset = 20  # b acknowledged w
    g.ctl("c").offset = 15
    g.step("b", "c")
    g.kill("b")  # lost for good
    g.add("b", offset=0, port=7001)  # its replacement: an empty directory, the same name
    g.step("b")  # it follows a (and would full-resync; a dies first)
    g.step("a")
    st = read_group(etcd, g.group)
    assert st.sync is not None and st.sync.members == ("b", "c")  # the name stayed in S
    g.kill("a")
    for _ in range(3):
        g.step("b", "c")
    promoted = [n for n, e in g.nodes.items() if e.role == PRIMARY]
    assert promoted == [], (
        f"{promoted} promoted although only the lost b held the acknowledged write w "
        f"(offsets: b={g.ctl('b').offset}, c={g.ctl('c').offset}, w at 20)")


def test_raising_sync_replicas_one_node_at_a_time_never_promotes_a_node_without_a_write(
        etcd_url: str, group: str, etcd: EtcdClient) -> None:
    """The runbook changes K by restarting the nodes one by one, replicas first. Three
    nodes, K = 1 -> 2. S = {b, c}; w (offset 20) is acknowledged by c only (K = 1). b and
    c are restarted with K = 2 (their data intact), then the primary a (still K = 1) goes:
    c (fresh, highest) takes over and writes the sync key {a, b} with *its* K = 2, so a
    failover now needs |S| - K + 1 = 1 live member. c dies before b loaded c's data: b alone
    is promoted at 15 -- w is lost. With the K the writes were acknowledged with (1), 2
    live members would be needed, and the group would wait for a or c."""
    g = Group(etcd_url, group, ttl=4, safety_margin=1.0, sync_mode=True, sync_replicas=1)
    try:
        g.add("a", offset=20)
        g.add("b", offset=10)
        g.add("c", offset=10)
        _lead_with_standbys(g, "a", "b", "c")
        g.ctl("b").offset = 15
        g.ctl("c").offset = 20  # c acknowledged w; b did not get it
        g.step("b", "c")
        # Replicas first: b and c restart with --sync-replicas 2 (same data, same names),
        # quickly enough that the primary's steps never see their member keys missing.
        g.cfg = {**g.cfg, "sync_replicas": 2}
        for name, offset, port in (("b", 15, 7001), ("c", 20, 7002)):
            g.kill(name)
            g.add(name, offset=offset, port=port)
            g.step(name)
        g.step("a")
        st = read_group(etcd, g.group)
        assert st.sync is not None and st.sync.members == ("b", "c") and st.sync.k == 1
        g.kill("a")  # the primary is restarted last: it goes
        g.step("b", "c")
        g.step("b", "c")
        assert g.nodes["c"].role == PRIMARY  # the right choice: c holds w
        st = read_group(etcd, g.group)
        assert st.sync is not None and st.sync.members == ("a", "b")
        g.kill("c")  # before b followed c and loaded its data
        for _ in range(3):
            g.step("b")
        assert g.nodes["b"].role == REPLICA, (
            f"b promoted at offset {g.ctl('b').offset} without w (offset 20), acknowledged "
            f"by c under K = 1; the sync key says K = {st.sync.k}")
    finally:
        g.close()


@pytest.mark.parametrize("returns", [True, False], ids=["old-primary-returns", "replaced"])
def test_a_leader_raises_the_sync_keys_k_to_its_own_once_k_standbys_hold_every_write(
        etcd_url: str, group: str, etcd: EtcdClient, returns: bool) -> None:
    """The other side of the previous test: a leader with K = 2 that took over a key of
    K = 1 keeps K = 1 (more members needed) only until two standbys hold every write made
    so far; then the key says K = 2, and one live member of S is enough again."""
    g = Group(etcd_url, group, ttl=4, safety_margin=1.0, sync_mode=True, sync_replicas=1)
    try:
        g.add("a", offset=20)
        g.add("b", offset=10)
        g.add("c", offset=10)
        _lead_with_standbys(g, "a", "b", "c")
        g.cfg = {**g.cfg, "sync_replicas": 2}
        for name, port in (("b", 7001), ("c", 7002)):  # restarted with K = 2
            g.kill(name)
            g.add(name, offset=20 if name == "b" else 10, port=port)
            g.step(name)
        g.step("a")
        g.kill("a")
        for _ in range(3):
            g.step("b", "c")
        leader = next(n for n in ("b", "c") if g.nodes[n].role == PRIMARY)
        st = read_group(etcd, g.group)
        assert st.sync is not None and st.sync.k == 1, "took over a K = 1 key: keeps K = 1"
        other = "c" if leader == "b" else "b"
        if returns:
            # The old primary comes back (K = 2 too) and follows: nobody in S is gone.
            g.add("a", offset=20, port=7000)
            g.step("a", other)
            g.step(leader)
            third = "a"
        else:
            # The old primary is lost (S drops it) and a new node d joins.
            g.add("d", offset=20)
            g.step("d", other)
            g.step(leader)
            third = "d"
        g.ctl(leader).caught_up = {other}
        g.step(leader)
        st = read_group(etcd, g.group)
        assert st.sync is not None and st.sync.k == 1, "one standby holding everything: K = 1"
        g.ctl(leader).caught_up = {other, third}
        g.step(leader)
        st = read_group(etcd, g.group)
        assert st.sync is not None and st.sync.k == 2, st.sync
        assert sorted(st.sync.members) == sorted([other, third])
    finally:
        g.close()


def test_the_old_primary_that_holds_every_acknowledged_write_may_take_back_the_lead(
        sync1: Group, etcd: EtcdClient) -> None:
    """Two nodes, K = 1 (a primary and its sync standby). The standby b dies: S = {b} cannot
    shrink below K, so from then on a acknowledges nothing -- every acknowledged write is
    on a. a's lease then lapses once (a pause of its election thread past the TTL, or
    etcd unreachable for a moment): a fences itself and the leader key goes. a is live,
    healthy and holds every write it ever acknowledged (sync.leader of the current term),
    yet it is not in S, so 0 of the 1 members of S are live and the group stays without a
    primary until b comes back -- for ever if b's machine is lost. (Every write of the
    current term is on the term's leader plus K of S, so S + {sync.leader} with K + 1 keeps
    the |S| - K + 1 rule sound.)"""
    g = sync1
    a = g.add("a", offset=30)
    g.add("b", offset=30)
    _lead_with_standbys(g, "a", "b")
    st = read_group(etcd, g.group)
    assert st.sync is not None and st.sync.members == ("b",) and st.sync.leader == "a"
    g.kill("b")
    g.step("a")
    assert a.role == PRIMARY
    assert a.lease is not None
    etcd.lease_revoke(a.lease)  # the lease lapsed (expiry, done at once here)
    for _ in range(4):
        g.step("a")
    assert a.role == PRIMARY, a.status().promotion_blocked


def test_a_restarted_old_primary_is_not_taken_for_one_that_holds_every_write(
        sync1: Group, etcd: EtcdClient) -> None:
    """The rule above counts the old primary only while its process lives: what it
    acknowledged may have been in its page cache only (appendfsync everysec) and gone with a
    machine crash, while its sync standby has it durably. Two nodes, K = 1: b dies, then a's
    process restarts on its directory (same position, a new process): a must wait for b."""
    g = sync1
    a = g.add("a", offset=30)
    g.add("b", offset=30)
    _lead_with_standbys(g, "a", "b")
    term = a.term
    assert read_group(etcd, g.group).members["a"].led == term
    g.kill("b")
    g.kill("a")
    a2 = g.add("a", offset=30)
    g.ctl("a").record_term = term  # its records survive the restart
    for _ in range(4):
        g.step("a")
    assert a2.role != PRIMARY
    st = read_group(etcd, g.group)
    assert st.members["a"].led == 0
    why = a2.status().promotion_blocked
    assert why is not None and "0 of the 1 members of the sync set [b] are live" in why, why


def test_a_takeover_whose_reply_was_lost_still_sets_led(
        sync1: Group, etcd: EtcdClient) -> None:
    """(Adversarial review of the `led` rule.) The takeover txn commits but its reply is lost
    (EtcdUnavailable: 'whether the request took effect is unknown'). The next step finds our
    own leader key on our lease and _lead() promotes -- but led_term is set only in _take_over,
    so led stays 0. Then the review15b scenario (2 nodes, K = 1, standby dies, lease lapses
    once) blocked for ever. _lead() now sets led when it finds our key on our lease."""
    g = sync1
    a = g.add("a", offset=30)
    g.add("b", offset=30)
    real_txn = a.client.txn
    keys = GroupKeys(g.group)
    lost = []

    def txn(compare, success, failure=()):  # type: ignore[no-untyped-def]
        res = real_txn(compare, success, failure)
        if not lost and any(isinstance(op, Put) and op.key == keys.leader for op in success):
            lost.append(res)
            raise EtcdUnavailable("reply lost (the txn committed)")
        return res

    a.client.txn = txn  # type: ignore[method-assign]
    g.step("a")  # takeover commits, reply lost
    assert lost and lost[0].succeeded
    assert a.role != PRIMARY
    _lead_with_standbys(g, "a", "b")
    assert a.role == PRIMARY
    assert a.led_term == 1
    st = read_group(etcd, g.group)
    assert st.sync is not None and st.sync.members == ("b",) and st.sync.leader == "a"
    assert st.members["a"].led == st.sync.term == 1
    g.kill("b")
    g.step("a")
    assert a.role == PRIMARY
    assert a.lease is not None
    etcd.lease_revoke(a.lease)
    for _ in range(4):
        g.step("a")
    assert a.role == PRIMARY, a.status().promotion_blocked


def test_a_second_process_under_the_old_primarys_name_does_not_use_its_led(
        sync1: Group, etcd: EtcdClient) -> None:
    """(Adversarial review of the `led` rule.) 2 nodes, K = 1, S = {b}. a1 leads term 1; w (offset
    30) acked by b; b dies. a1 is paused (VM freeze) past its lease; the orchestrator,
    seeing a dead, starts a2 under the same name on a's directory from another machine
    (unsynced tail lost: offset 25). a1 resumes, re-grants a lease and publishes members/a
    with led = 1 (offset 30, fresh). Interleaving: a2 publishes its own key (led = 0), a1's
    put lands, a2 reads the group: 'a' is eligible (led == sync.term == term) and best ->
    a2, whose name is 'a', takes over at offset 25. The member key is per name, led is per
    process: a node that is a candidate only as the sync key's leader takes over only if its
    own process led."""
    g = sync1
    a1 = g.add("a", offset=30)
    g.add("b", offset=30)
    _lead_with_standbys(g, "a", "b")
    g.ctl("a").record_term = 1
    g.kill("b")
    g.step("a")
    assert a1.role == PRIMARY and a1.led_term == 1
    assert a1.lease is not None
    etcd.lease_revoke(a1.lease)  # paused past its lease
    a2 = g.add("a2-process", offset=25, port=7000)  # placeholder, replaced below
    g.nodes.pop("a2-process").client.close()
    a2 = Election(EtcdClient(g.url), MemoryNodeControl(offset=25, record_term=1),
                  ElectionConfig(g.group, "a", "127.0.0.1", 7000, **g.cfg))
    g.nodes["a#2"] = a2
    for _ in range(2):
        a2.step()
    assert a2.role == REPLICA
    a1.step()  # LeaseExpired: fenced
    # a1's step: new lease; sees vacancy at term 1; publishes fresh (led = 1); decides it
    # is best; its takeover txn is in flight (deferred here) while a2 steps.
    deferred = []
    real_take_over = a1._take_over
    a1._take_over = lambda st: deferred.append(st)  # type: ignore[method-assign]
    a1.step()
    assert deferred, a1.status().promotion_blocked
    a2._renew()
    a2._publish(a2._my_member())
    a1._publish(a1._my_member())  # a1's member put (its next step) lands in between
    a2._act()
    real_take_over(deferred[0])  # a1's txn arrives: the term moved, it fails
    assert a2.role != PRIMARY, "a2 (offset 25, no w) promoted on a1's led"


def test_a_restarted_former_leader_in_the_next_sync_set_holds_w_from_its_disk(
        sync1: Group, etcd: EtcdClient) -> None:
    """(Adversarial review, 2026-12-02; HIGH.) S = {b, c}, K = 1. w (offset 20) is
    acknowledged by b. a's machine crashes; b (fresh, highest) takes term 2 with S2 = {a, c}
    (old S + old leader a, minus b); b dies before anyone copied w. The pool {a, c} needs
    both, and promotes the higher: that is safe only because a holds w. It used not to: a
    acknowledged from its page cache under appendfsync everysec, restarted at offset 15,
    and a node without w was promoted. Now a sync primary's reply waits for its own fsync
    (test_server_review15's power-loss test), so a restarts at 20 and is the one promoted."""
    g = sync1
    g.add("a", offset=20)
    g.add("b", offset=10)
    g.add("c", offset=10)
    _lead_with_standbys(g, "a", "b", "c")
    for n in ("a", "b", "c"):
        g.ctl(n).record_term = 1
    g.ctl("b").offset = 20  # b acknowledged w
    g.ctl("c").offset = 15
    g.step("b", "c")
    g.kill("a")  # machine crash
    for _ in range(3):
        g.step("b", "c")
    assert g.nodes["b"].role == PRIMARY  # the right choice
    assert ("make_durable", 20) in g.ctl("b").calls  # before it took over (below)
    st = read_group(etcd, g.group)
    assert st.sync is not None and st.sync.members == ("a", "c") and st.sync.term == 2
    g.add("a", offset=20, port=7000)  # restarted: w was on its disk before it was acked
    g.ctl("a").record_term = 1
    g.step("a", "c")
    g.kill("b")  # before c got w
    for _ in range(4):
        g.step("a", "c")
    promoted = [n for n, e in g.nodes.items() if e.role == PRIMARY]
    assert promoted == ["a"], f"{promoted} promoted; only a holds w (offset 20)"


def test_a_takeover_puts_the_position_it_won_on_disk_first(
        sync1: Group, etcd: EtcdClient) -> None:
    """The position that makes a standby eligible may count records it applied but has not
    fsynced; as primary, and then as the old primary in the next sync set, it is trusted
    to hold them all. So it fsyncs before its takeover transaction, and a disk that fails
    the fsync keeps it from taking over at all."""
    g = sync1
    g.add("a", offset=20)
    g.add("b", offset=20)
    g.add("c", offset=15)
    _lead_with_standbys(g, "a", "b", "c")
    g.ctl("b").disk_failed = True
    g.kill("a")
    for _ in range(4):
        for n in ("b", "c"):
            try:
                g.step(n)
            except StorageError:
                assert n == "b"
    assert g.nodes["b"].role != PRIMARY
    assert any(c[0] == "make_durable" for c in g.ctl("b").calls)
    assert all(c[0] != "promote" for c in g.ctl("b").calls)
    # c (at 15) is not promoted either: b, live and ahead, may hold acknowledged writes.
    assert g.nodes["c"].role != PRIMARY
    assert read_group(etcd, g.group).leader is None
    g.ctl("b").disk_failed = False
    for _ in range(3):
        g.step("b", "c")
    assert g.nodes["b"].role == PRIMARY
    calls = [c[0] for c in g.ctl("b").calls]
    assert calls.index("promote") > max(i for i, c in enumerate(calls) if c == "make_durable")


def _role(c: redis.Redis) -> str:
    return str(c.info("failover")["failover_role"])


def test_a_standby_wiped_by_its_full_resync_is_not_promoted_end_to_end(
        servers: Callable[..., ServerThread], etcd_url: str, group: str) -> None:
    """Three servers, K = 2: every acknowledged write is on all three. n1 (primary) stops;
    P (n2 or n3) takes over with S = {n1, Q}, K = 2, so one live member of S suffices. The
    other standby Q follows P and, P having a new replication id, resyncs fully: it wipes
    its data (SYNCING) and loads P's snapshot, publishing (0, 0). P stops during that load.
    Q is live, fresh, and alone enough (|S| - K + 1 = 1): it is promoted with nothing --
    the writes acknowledged by all three nodes are gone from the group (n1's and P's disks
    hold them; returning, they resync from Q, their data copied to lost/)."""
    common: dict[str, Any] = dict(etcd=etcd_url, group=group, failover_ttl=4,
                                  failover_safety_margin=1.0, sync_replicas=2,
                                  sync_replicas_timeout=10.0)
    n1 = servers(node_name="n1", **common)
    r1 = n1.client()
    wait_until(lambda: _role(r1) == "primary", 15, "n1 elected")
    n2 = servers(node_name="n2", **common)
    n3 = servers(node_name="n3", **common)
    wait_until(lambda: r1.info("failover")["failover_sync_members"] == ["n2", "n3"], 30,
               "n2 and n3 in the sync set")
    wait_until(lambda: r1.info("replication")["shaledb_good_replicas"] == 2, 30,
               "both standbys acknowledging")
    keys = 20000
    value = "v" * 500  # about 10 MB: Q's load of P's snapshot takes a while
    for start in range(0, keys, 1000):
        with r1.pipeline(transaction=False) as p:
            for i in range(start, start + 1000):
                p.set(f"k{i}", value)
            assert all(p.execute()), "a write was not acknowledged by K = 2 standbys"
    assert r1.dbsize() == keys
    r1.close()
    n1.stop()  # resigns
    r2, r3 = n2.client(), n3.client()
    wait_until(lambda: "primary" in (_role(r2), _role(r3)), 30, "n2 or n3 elected")
    (p_srv, p_cli), (q_srv, q_cli) = (((n2, r2), (n3, r3)) if _role(r2) == "primary"
                                      else ((n3, r3), (n2, r2)))
    assert q_srv.server is not None
    repl = q_srv.server.replication
    until = time.monotonic() + 30
    while not repl.loading:  # Q resyncs fully from P (a new replication id)
        assert time.monotonic() < until, "Q never started a full resync from P"
        time.sleep(0.001)
    p_cli.close()
    p_srv.stop()  # resigns during Q's load
    assert repl.loading, "the load finished before P stopped: the window was missed"
    until = time.monotonic() + 12  # three TTLs
    while time.monotonic() < until:
        if _role(q_cli) == "primary":
            assert q_cli.dbsize() == keys, (
                f"Q was promoted with {q_cli.dbsize()} of the {keys} acknowledged keys")
        time.sleep(0.2)
    q_cli.close()


def test_many_member_keys_do_not_hide_the_term_and_sync_keys(
        sync1: Group, etcd: EtcdClient) -> None:
    """read_group read the group's prefix with one range of MAX_MEMBERS + 3 keys, in key
    order: leader, members/..., sync, term. With more than MAX_MEMBERS member keys (stale
    keys of crashed processes last a TTL; a misconfigured fleet sharing a group name) the
    sync and term keys are silently cut off: the leader reads term 0, decides that someone
    bumped the term ("term 0 is newer than ours"), fences and steps down, and no node can
    take over (its compare on the term key fails): no primary until the keys go. Now one
    transaction reads those three keys by name and the members in a bounded range."""
    from shaledb.server.cluster.group import MAX_MEMBERS, GroupKeys

    g = sync1
    a = g.add("a")
    g.add("b")
    _lead_with_standbys(g, "a", "b")
    assert a.role == PRIMARY
    lease = etcd.lease_grant(30)
    try:
        keys = GroupKeys(g.group)
        for i in range(MAX_MEMBERS):
            etcd.put(keys.member(f"stale{i:03d}"), b"{}", lease=lease)
        g.step("a", "b")
        assert a.role == PRIMARY, a.last_error
    finally:
        etcd.lease_revoke(lease)
