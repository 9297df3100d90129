"""Leader election with self-fencing, on etcd (Patroni-like).

Every node runs one :class:`Election`. Each :meth:`Election.step` (every ``interval``
seconds, on the election's own thread):

1. renews the node's lease (granting one if it has none), noting the monotonic time the
   renewal was *sent*: etcd counts the TTL from when it received it, which is later, so
   ``sent + TTL`` is never after the moment etcd may expire the lease;
2. publishes ``members/<node>`` (address, replication position, role) on that lease;
3. reads the group (one range request) and acts:

   - it holds the leader key: the lease renewal extends the write deadline to
     ``sent + TTL - safety_margin`` (:meth:`NodeControl.renew_lease`); in sync mode it
     grows the ``sync`` set with the replicas now following it (published *before* their
     acknowledgements may count, :meth:`NodeControl.set_sync_standbys`);
   - another node holds it: a primary fences itself and demotes; a replica that follows
     someone else (or an older term) re-points with :meth:`NodeControl.demote_to`;
   - nobody holds it: a primary fences itself at once; a node that may be promoted (below)
     tries one transaction: *leader absent and term unchanged* -> create the leader key on its
     lease, bump the term (and write the new ``sync`` set). Only one node can win it.

Invariants:

- **Fencing.** A primary accepts writes only before its deadline, checked by the write path
  against the monotonic clock (:mod:`.control`), so a stalled primary (SIGSTOP, partition
  from etcd, a pause of the election thread) is read-only before its lease can expire and
  before any other node can take over. A failed renewal never extends the deadline.
- **Terms only grow**: the term counter is bumped by compare-and-swap in the same
  transaction that creates the leader key; a node never accepts a role change with an older
  term than it has seen (:class:`~.control.StaleTermError`).
- **Promotion (async mode)**: only the member with the highest position (term of its newest
  record, then offset; ties: the smallest name) among the live members.
- **Promotion (sync mode)**: let ``S`` and ``K`` be the last ``sync`` key. The leader
  acknowledges a write only after K members of S hold it durably; a member is added to the
  key before its acknowledgements count, and removed (it has no member key any more) only
  after the leader stopped counting it and K of the rest acknowledged every write up to
  the last sequence at that moment (:meth:`NodeControl.narrow_sync_standbys`). So any
  ``|S| - K + 1`` members of S include one that holds every acknowledged write. The leader
  of the key's term holds every one of them too (it made this term's, and was promoted
  holding the earlier ones), so any ``|S| - K + 1`` members of ``S + {leader}`` also
  include one -- if its process has run since it led (``led`` in its member key: its own
  copy may be in the page cache only, lost with a machine). A node may be promoted only if
  it is in ``S + {leader}``, at least
  ``|S| - K + 1`` members of that set are live (their member keys exist), and it has the
  highest *fresh* position among them. A new leader
  starts its ``sync`` set as the old one plus the old leader, minus itself: everyone who
  may hold writes acknowledged before stays a candidate. Without a ``sync`` key no write
  was ever acknowledged in sync mode, and the async rule applies.
- **Fresh positions** (sync mode). A position published at a member's last step can be
  older than writes the member acknowledged since: a primary cut off from etcd acknowledges
  until its deadline, up to ``safety_margin`` before its key expires, and a step comes
  every ``interval`` (> margin with the defaults). So a node that sees the leader key
  absent at term counter T records ``vacant = T`` and publishes its position read *after*
  that read (then reads the group again). The leader key is gone only after the old
  primary's write deadline (fencing above; a resigning primary fences first), so no write
  is acknowledged after it: a position with ``vacant`` = the current term covers every write
  its member acknowledged. Promotion compares fresh positions only, and waits until every
  live member of S has published one; after one TTL of waiting (a member that stopped
  stepping has lost its key by then) it decides among the fresh ones if there are at least
  ``|S| - K + 1``. Otherwise nobody is promoted, and the reason is in
  :attr:`Election.promotion_blocked` (INFO ``failover_promotion_blocked``, the log, and
  ``shaledb cluster status``). While the leader key is absent a node steps four times as
  often, so the wait costs a fraction of an interval.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from ...errors import InvalidArgument
from .control import NodeControl, StaleTermError
from .etcd import (
    Compare,
    EtcdClient,
    EtcdError,
    LeaseExpired,
    Put,
)
from .group import (
    GroupKeys,
    GroupState,
    LeaderInfo,
    MemberInfo,
    SyncInfo,
    check_name,
    read_group,
)

log = logging.getLogger("shaledb.failover")

#: Roles an election reports.
PRIMARY: Final = "primary"
REPLICA: Final = "replica"


@dataclasses.dataclass(frozen=True)
class ElectionConfig:
    """One node's part in a group."""

    group: str
    node: str
    #: The address clients and replicas reach this node at (published in etcd).
    host: str
    port: int
    #: Lease TTL in seconds: a dead primary is replaced after at most about this long.
    ttl: int = 10
    #: Seconds before the lease's earliest possible expiry at which the primary stops
    #: writing; covers clock-rate drift between this node and etcd, and the time to stop.
    safety_margin: float = 2.0
    #: Seconds between steps (None: a third of ``ttl - safety_margin``).
    interval: float | None = None
    #: Sync mode: promotion follows the ``sync`` key's rule (module docstring).
    sync_mode: bool = False
    #: K of sync mode: how many replicas must hold a write before it is acknowledged.
    sync_replicas: int = 1

    def __post_init__(self) -> None:
        check_name("group", self.group)
        check_name("node", self.node)
        if self.ttl < 2:
            raise InvalidArgument("failover lease TTL must be at least 2 seconds")
        if not 0 < self.safety_margin < self.ttl:
            raise InvalidArgument("failover safety margin must be between 0 and the TTL")
        if self.step_interval <= 0 or self.step_interval * 2 > self.ttl - self.safety_margin:
            raise InvalidArgument("failover interval must be positive and at most half of "
                                  "TTL minus the safety margin (two renewals per lease)")
        if self.sync_replicas < 1:
            raise InvalidArgument("sync replicas must be at least 1 in sync mode")
        if not 0 < self.port < 65536:
            raise InvalidArgument("failover port must be 1-65535 (the advertised port)")

    @property
    def step_interval(self) -> float:
        if self.interval is not None:
            return self.interval
        return (self.ttl - self.safety_margin) / 3


@dataclasses.dataclass(frozen=True)
class ElectionStatus:
    role: str
    term: int
    leader: str | None
    lease: int | None
    #: Seconds left before the primary's write deadline (None unless primary).
    deadline_in: float | None
    last_error: str | None
    sync_members: tuple[str, ...]
    #: Why no member may be promoted now (None: a leader exists or one may be promoted).
    promotion_blocked: str | None = None


def best_candidate(pool: list[MemberInfo]) -> MemberInfo:
    """The highest position (term, then offset); ties: the smallest name."""
    return min(pool, key=lambda m: (-m.term, -m.offset, m.node))


def promotion_pool(state: GroupState, sync_mode: bool,
                   waited: bool = False) -> tuple[list[MemberInfo], str | None]:
    """The members promotion chooses among while the leader key is absent, or ``([],
    why)`` nobody may be promoted now (module docstring). ``waited``: the vacancy has
    lasted a TTL, so members that published no fresh position are not waited for any
    more. ``shaledb cluster status`` asks the same (sync mode = a ``sync`` key exists)."""
    live = [m for m in state.members.values() if m.healthy]
    if not (sync_mode and state.sync is not None):
        return live, None if live else "no live, healthy member"
    sync = state.sync
    need = len(sync.members) - sync.k + 1
    # The leader of the sync key's term made every write acknowledged in it, and held every
    # earlier one when it was promoted: with it, each acknowledged write is on K + 1 members
    # of S + {leader}, and any |S| - K + 1 of those include one that holds it. So the old
    # primary is a candidate too (review15b: with 2 nodes and K = 1 a primary whose lease
    # lapsed once waited for its dead standby for ever) -- while its process lives.
    # Only the process that led it: a restart may have lost its unsynced tail (``led``).
    eligible = set(sync.members)
    leader_note = ""
    old = state.members.get(sync.leader)
    if sync.term == state.term and old is not None and old.led == sync.term:
        eligible.add(sync.leader)
        leader_note = f" and its leader {sync.leader}"
    pool = [m for m in live if m.node in eligible]
    if not pool or len(pool) < need:
        # (No commas: INFO clients split values at them.)
        return [], (f"{len(pool)} of the {len(eligible)} members of the sync set "
                    f"[{' '.join(sync.members)}]{leader_note} are live and healthy but "
                    f"{max(need, 1)} are needed (K={sync.k}) for one of them to provably "
                    "hold every acknowledged write: bring a member of the sync set back")
    fresh = [m for m in pool if m.vacant == state.term]
    if len(fresh) < len(pool) and not (waited and len(fresh) >= need):
        stale = sorted(m.node for m in pool if m.vacant != state.term)
        return [], (f"waiting for {' '.join(stale)} (sync set) to publish a position read "
                    f"after the leader key went (term {state.term}): the last published one "
                    "may miss writes it acknowledged")
    # A member at (0, 0) holds nothing now: it is loading a full resync (which wiped what it
    # acknowledged) or its directory is new (a replacement under an old name). It counts
    # like a dead member: the |S| - K + 1 rule holds for members that keep their data.
    holding = [m for m in fresh if m.position != (0, 0)]
    if len(holding) < need:
        empty = sorted(m.node for m in fresh if m.position == (0, 0))
        return [], (f"{' '.join(empty)} (sync set) hold nothing (loading a full resync or a "
                    f"new directory): {len(holding)} members hold data but {max(need, 1)} are "
                    f"needed (K={sync.k}) for one of them to provably hold every acknowledged "
                    "write: bring a member of the sync set back")
    return holding, None


class Election:
    """The election state machine of one node (``step()`` by hand, or ``start()`` a
    thread that steps every ``config.step_interval`` seconds until ``close()``)."""

    def __init__(self, client: EtcdClient, control: NodeControl, config: ElectionConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.control = control
        self.config = config
        self.keys = GroupKeys(config.group)
        self.clock = clock
        self.role: str = REPLICA
        #: The highest term this node has seen (led or followed).
        self.term = 0
        self.lease: int | None = None
        #: Monotonic time before which etcd cannot have expired the lease.
        self.lease_valid_until = 0.0
        #: The primary's write deadline (0: not writable).
        self.deadline = 0.0
        #: (node, term) of the leader this node replicates from.
        self.following: tuple[str, int] | None = None
        self.sync_members: frozenset[str] = frozenset()
        #: The term this process took the leader key in, last (0: never): MemberInfo.led.
        self.led_term = 0
        #: The K this term's ``sync`` key states: at most the K older writes were
        #: acknowledged with (the old key's), raised to ours once K of S hold them all.
        self._sync_k = config.sync_replicas
        self._standbys: list[str] | None = None
        #: The term counter at which this node last saw the leader key absent (0: never),
        #: and when (monotonic): every position it publishes since was read after that.
        self.vacant_term = 0
        self._vacant_since = 0.0
        #: Why nobody may be promoted now (None: a leader exists, or someone may take over).
        self.promotion_blocked: str | None = None
        #: Test seam (:meth:`hold_published_position`): the (offset, term, vacant) the
        #: member key keeps while held.
        self._held: tuple[int, int, int] | None = None
        self._published: MemberInfo | None = None
        self.last_error: str | None = None
        self.last_state: GroupState | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return (f"Election(group={self.config.group!r}, node={self.config.node!r}, "
                f"role={self.role}, term={self.term})")

    # -- the step ------------------------------------------------------------------------

    def step(self) -> None:
        """One round: renew, publish, read, act. Never raises for etcd trouble (recorded in
        ``last_error``; the fence deadline keeps running)."""
        with self._lock:
            try:
                self._step()
            except EtcdError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("failover %s/%s: %s", self.config.group, self.config.node,
                            self.last_error)
            self._check_deadline()

    def _check_deadline(self) -> None:
        if self.role == PRIMARY and self.clock() >= self.deadline:
            # The renewal did not come back in time: the lease may be about to expire.
            self._lose("lease not renewed within TTL minus the safety margin")

    def _renew(self) -> bool:
        sent = self.clock()
        try:
            if self.lease is None:
                self.lease = self.client.lease_grant(self.config.ttl)
                granted = self.config.ttl
            else:
                granted = self.client.lease_keepalive(self.lease)
        except LeaseExpired:
            self.lease = None
            if self.role == PRIMARY:
                self._lose("lease expired in etcd")
            self.last_error = "lease expired in etcd"
            return False
        self.lease_valid_until = sent + granted
        return True

    def _my_member(self) -> MemberInfo:
        following = self.following[0] if self.following else None
        offset, term, vacant = (self.control.replication_offset(), self.control.last_term(),
                                self.vacant_term)
        if self._held is not None:
            offset, term, vacant = self._held
        return MemberInfo(self.config.node, self.config.host, self.config.port,
                          offset, term, self.role, following, self.last_error is None,
                          vacant=vacant, led=self.led_term)

    def _publish(self, member: MemberInfo) -> None:
        assert self.lease is not None
        self.client.put(self.keys.member(self.config.node), member.to_json(),
                        lease=self.lease)
        self._published = member

    def hold_published_position(self, hold: bool) -> None:
        """Test seam: while held, the member key keeps the position (and ``vacant``) it
        published last, as if this node's next step had not come yet; the lease, role and
        leader it publishes still change."""
        with self._lock:
            if not hold:
                self._held = None
            elif self._held is None:
                last = self._published or self._my_member()
                self._held = (last.offset, last.term, last.vacant)

    def _step(self) -> None:
        if not self._renew():
            return
        published = self._my_member()
        self._publish(published)
        self._act()
        mine = self._my_member()
        if mine != published:
            # Role, leader or vacancy changed: tell the group now rather than a step later.
            self._publish(mine)

    def _act(self) -> None:
        state = read_group(self.client, self.config.group)
        self.last_state = state
        self.last_error = None
        leader = state.leader
        if state.term > self.term and not (leader and leader.node == self.config.node
                                           and leader.lease == self.lease):
            self.term = max(self.term, state.term)
        if leader is not None:
            self._set_blocked(None)
        if leader is not None and leader.node == self.config.node \
                and leader.lease == self.lease:
            self._lead(state, leader)
        elif leader is not None:
            if self.role == PRIMARY:
                self._lose(f"{leader.node} leads term {leader.term}")
            if leader.node != self.config.node:
                self._follow(leader)
            # else: our own key from an earlier run, on its old lease: it expires by itself.
        else:
            if self.role == PRIMARY:
                self._lose("the leader key is gone")
            state = self._note_vacancy(state)
            if state.leader is None and self._may_take_over(state):
                self._take_over(state)

    def _note_vacancy(self, state: GroupState) -> GroupState:
        """The leader key is absent at ``state.term``: from now on this node's published
        positions are fresh for that term. In sync mode, publish one at once and read the
        group again (the module docstring's "Fresh positions")."""
        if self.vacant_term == state.term:
            return state
        self.vacant_term = state.term
        self._vacant_since = self.clock()
        if not (self.config.sync_mode and state.sync is not None):
            return state
        self._publish(self._my_member())
        state = read_group(self.client, self.config.group)
        self.last_state = state
        return state

    def _set_blocked(self, reason: str | None) -> None:
        if reason != self.promotion_blocked and reason is not None:
            log.warning("failover %s/%s: no member may be promoted: %s", self.config.group,
                        self.config.node, reason)
        self.promotion_blocked = reason

    def _lead(self, state: GroupState, leader: LeaderInfo) -> None:
        if state.term != leader.term:
            # Someone bumped the term while our key stands: treat ourselves as stale.
            self._lose(f"term {state.term} is newer than ours ({leader.term})")
            return
        self.deadline = self.lease_valid_until - self.config.safety_margin
        if self.role != PRIMARY:
            self.control.promote(leader.term)
            self.role = PRIMARY
            # Our key on our lease: this process took it (a takeover whose reply was lost).
            self.led_term = leader.term
        self.control.renew_lease(self.deadline)
        if self.config.sync_mode:
            self._grow_sync(state, leader)

    def _grow_sync(self, state: GroupState, leader: LeaderInfo) -> None:
        followers = {m.node for m in state.members.values()
                     if m.following == self.config.node and m.node != self.config.node}
        new = self.sync_members | followers
        if state.sync is not None and state.sync.term == leader.term \
                and state.sync.leader == self.config.node:
            # Keep what etcd holds (after a fence and re-promotion our memory of it was
            # cleared): the set shrinks only through the guarded step below.
            new |= set(state.sync.members)
            self._sync_k = state.sync.k
        counted = self.sync_members
        if new != self.sync_members:
            # Published before the new members' acknowledgements may count.
            if not self._publish_sync(leader, new):
                return
            self.sync_members = frozenset(new)
            counted = self.sync_members
        else:
            # Shrink: drop the members that are gone (no member key) once the rest still
            # hold every acknowledged write on K of them -- otherwise a dead standby would
            # block every later failover (|S| - K + 1 live members of S needed).
            dead = frozenset(n for n in self.sync_members if n not in state.members)
            keep = self.sync_members - dead
            if dead and len(keep) >= self.config.sync_replicas:
                # First locally: from now on only ``keep``'s acknowledgements count, so a
                # write acknowledged later is on K of ``keep``; the answer says whether K of
                # them durably hold every write before. Only then is the smaller set
                # published (etcd's set stays a superset of the truth meanwhile).
                counted = keep
                self._standbys = sorted(keep)
                held = self.control.narrow_sync_standbys(sorted(keep))
                if held >= self.config.sync_replicas:
                    # K of ``keep`` hold every write: the key may state our K (below).
                    self._sync_k = self.config.sync_replicas
                    if not self._publish_sync(leader, keep):
                        return
                    log.warning("failover %s/%s: sync set without %s (gone): %s",
                                self.config.group, self.config.node, " ".join(sorted(dead)),
                                " ".join(sorted(keep)) or "(empty)")
                    self.sync_members = keep
            elif not dead and self._sync_k < self.config.sync_replicas:
                # Raise the key's K to ours once K members of S hold every write so far
                # (later ones are acknowledged by K of S): any |S| - K + 1 then suffice.
                held = self.control.narrow_sync_standbys(sorted(self.sync_members))
                if held >= self.config.sync_replicas:
                    old_k = self._sync_k
                    self._sync_k = self.config.sync_replicas
                    if not self._publish_sync(leader, self.sync_members):
                        return
                    log.warning("failover %s/%s: sync set K %d -> %d", self.config.group,
                                self.config.node, old_k, self._sync_k)
        standbys = sorted(counted)
        if standbys != self._standbys:
            self.control.set_sync_standbys(standbys)
            self._standbys = standbys

    def _publish_sync(self, leader: LeaderInfo, members: set[str] | frozenset[str]) -> bool:
        """Write the ``sync`` key while our leader key stands (False: lost it, fenced)."""
        info = SyncInfo(leader.term, self.config.node, self._sync_k, tuple(sorted(members)))
        res = self.client.txn([Compare.value_is(self.keys.leader, leader.to_json()),
                               Compare(self.keys.leader, "LEASE", "EQUAL", self.lease or 0)],
                              [Put(self.keys.sync, info.to_json())])
        if not res.succeeded:
            self._lose("lost the leader key while publishing the sync set")
        return res.succeeded

    def _follow(self, leader: LeaderInfo) -> None:
        if self.following == (leader.node, leader.term):
            return
        try:
            self.control.demote_to(leader.host, leader.port, leader.term)
        except StaleTermError as exc:
            self.last_error = str(exc)
            return
        self.following = (leader.node, leader.term)
        self.term = max(self.term, leader.term)

    def _lose(self, reason: str) -> None:
        log.warning("failover %s/%s: stepping down as primary: %s", self.config.group,
                    self.config.node, reason)
        self.control.fence()
        self.role = REPLICA
        self.deadline = 0.0
        self.following = None
        self.sync_members = frozenset()
        self._standbys = None

    def candidates(self, state: GroupState) -> list[MemberInfo] | None:
        """The members promotion chooses among (None: nobody may be promoted now)."""
        waited = (self.vacant_term == state.term
                  and self.clock() - self._vacant_since >= self.config.ttl)
        pool, reason = promotion_pool(state, self.config.sync_mode, waited)
        self._set_blocked(reason)
        return pool or None

    def _may_take_over(self, state: GroupState) -> bool:
        pool = self.candidates(state)
        if not pool:
            return False
        if best_candidate(pool).node != self.config.node:
            return False
        # A candidate only as the sync key's leader, by a `led` this process never had:
        # another process under our name published it (a misconfiguration). Not us.
        sync = state.sync
        return not (self.config.sync_mode and sync is not None
                    and self.config.node not in sync.members and self.led_term != sync.term)

    def _take_over(self, state: GroupState) -> None:
        assert self.lease is not None
        new_term = max(state.term, self.term) + 1
        me = LeaderInfo(self.config.node, self.config.host, self.config.port, new_term)
        term_cmp = (Compare.absent(self.keys.term) if state.term_raw is None
                    else Compare.value_is(self.keys.term, state.term_raw))
        ops: list[Put] = [Put(self.keys.leader, me.to_json(), self.lease),
                          Put(self.keys.term, str(new_term).encode())]
        sync_members: frozenset[str] = frozenset()
        if self.config.sync_mode:
            old = set(state.sync.members) if state.sync else set()
            if state.sync is not None:
                old.add(state.sync.leader)
            old.discard(self.config.node)
            sync_members = frozenset(old)
            # Writes of older terms were acknowledged by the old key's K: a smaller K
            # than ours means more members are needed to be sure one holds them
            # (review15b: K raised node by node).
            sync_k = self.config.sync_replicas if state.sync is None \
                else min(state.sync.k, self.config.sync_replicas)
            ops.append(Put(self.keys.sync, SyncInfo(new_term, self.config.node, sync_k,
                                                    tuple(sorted(old))).to_json()))
        # The position that made this node eligible may count records applied but not yet
        # on disk; as primary (and later as the old primary in the next sync set) it is
        # trusted to hold them all: on disk first, or no takeover (review 15b).
        self.control.make_durable()
        res = self.client.txn([Compare.absent(self.keys.leader), term_cmp], ops)
        if not res.succeeded:
            return  # another node won; the next step follows it
        self.term = new_term
        self.led_term = new_term
        self.sync_members = sync_members
        if self.config.sync_mode:
            self._sync_k = sync_k
        self._standbys = None
        self.following = None
        self.deadline = self.lease_valid_until - self.config.safety_margin
        try:
            self.control.promote(new_term)
        except StaleTermError as exc:
            # Cannot happen with growing terms; never write under a term we do not hold.
            self.last_error = str(exc)
            self.client.delete(self.keys.leader)
            return
        self.role = PRIMARY
        self.control.renew_lease(self.deadline)
        if self.config.sync_mode:
            standbys = sorted(sync_members)
            self.control.set_sync_standbys(standbys)
            self._standbys = standbys
        log.warning("failover %s/%s: promoted to primary of term %d", self.config.group,
                    self.config.node, new_term)

    # -- status and the thread ---------------------------------------------------------------

    def status(self) -> ElectionStatus:
        if self.role == PRIMARY:
            leader: str | None = self.config.node
        elif self.following is not None:
            leader = self.following[0]
        else:
            leader = None
        left = self.deadline - self.clock() if self.role == PRIMARY else None
        return ElectionStatus(self.role, self.term, leader, self.lease, left,
                              self.last_error, tuple(sorted(self.sync_members)),
                              self.promotion_blocked)

    def start(self) -> None:
        """Step every ``config.step_interval`` seconds on a thread until :meth:`close`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"shaledb-failover-{self.config.node}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # recorded: the thread must not die silently
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("failover step failed")
            # Without a leader, step four times as often: a takeover waits for the sync
            # set's fresh positions, and every node publishes its own at its next step.
            leaderless = (self.role != PRIMARY and self.last_state is not None
                          and self.last_state.leader is None)
            self._stop.wait(self.config.step_interval / (4 if leaderless else 1))

    def close(self, resign: bool = True) -> None:
        """Stop stepping; with ``resign``, fence and revoke the lease so another node can
        take over at once instead of after the TTL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.client.timeout * 4 + self.config.ttl)
            self._thread = None
        with self._lock:
            if self.role == PRIMARY:
                self._lose("shutting down")
            if resign and self.lease is not None:
                try:
                    self.client.lease_revoke(self.lease)
                except EtcdError as exc:
                    log.warning("failover: could not revoke the lease: %s", exc)
                self.lease = None
