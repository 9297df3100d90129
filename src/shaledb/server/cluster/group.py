"""The keys of a replication group in etcd, and a read-only view of them.

Under ``/shaledb/<group>/`` (values are JSON, docs/format.md "Failover keys in etcd"):

- ``leader``: ``{"node", "host", "port", "term"}`` on the leader's lease; created only if
  absent (a transaction), so at most one node holds it.
- ``term``: the decimal term counter; bumped by the same transaction that creates ``leader``
  (compare-and-swap on its previous value), so terms only grow.
- ``sync``: ``{"term", "leader", "k", "members"}``, written by the leader (sync mode):
  the replicas whose acknowledgements may count towards a write's K.
- ``members/<node>``: ``{"host", "port", "offset", "term", "role", "following",
  "healthy", "vacant", "led"}`` on each node's lease, refreshed every election step.
  ``vacant``: the term counter at which the node last saw the leader key absent (0:
  never); the position (``term``, ``offset``) was read after that, so it covers every
  write the node acknowledged to that term's primary (sync-mode promotion waits for such
  positions). ``led``: the term this process took the leader key in (0: none since it
  started).

:func:`read_group` reads them all with one transaction; SENTINEL and ``shaledb cluster
status`` answer from it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Final

from ...errors import InvalidArgument
from .etcd import EtcdClient, Get, GetPrefix, KeyValue

ROOT: Final = "/shaledb"
#: Group and node names: what fits a key segment and a Sentinel master name.
NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(f"{kind} name {name!r} must be 1-64 characters of letters, "
                              "digits, '_', '.', '-'")
    return name


@dataclasses.dataclass(frozen=True)
class GroupKeys:
    """The etcd keys of one group."""

    group: str

    def __post_init__(self) -> None:
        check_name("group", self.group)

    @property
    def prefix(self) -> bytes:
        return f"{ROOT}/{self.group}/".encode()

    @property
    def leader(self) -> bytes:
        return self.prefix + b"leader"

    @property
    def term(self) -> bytes:
        return self.prefix + b"term"

    @property
    def sync(self) -> bytes:
        return self.prefix + b"sync"

    @property
    def members_prefix(self) -> bytes:
        return self.prefix + b"members/"

    def member(self, node: str) -> bytes:
        return self.members_prefix + check_name("node", node).encode()


@dataclasses.dataclass(frozen=True)
class LeaderInfo:
    node: str
    host: str
    port: int
    term: int
    lease: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"node": self.node, "host": self.host, "port": self.port,
                           "term": self.term}).encode()


@dataclasses.dataclass(frozen=True)
class MemberInfo:
    node: str
    host: str
    port: int
    offset: int
    term: int
    role: str
    following: str | None
    healthy: bool
    lease: int = 0
    #: The term counter at which this node saw the leader key absent (0: never); its
    #: position was read after that (module docstring).
    vacant: int = 0
    #: The term this process led (took the leader key in) since it started (0: none).
    #: A leader's own copy of what it acknowledged can be in the page cache only
    #: (appendfsync everysec); a restarted process may have lost it, so only a process that
    #: led the sync key's term and never restarted counts as holding that term's writes.
    led: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"host": self.host, "port": self.port, "offset": self.offset,
                           "term": self.term, "role": self.role,
                           "following": self.following, "healthy": self.healthy,
                           "vacant": self.vacant, "led": self.led}).encode()

    @property
    def position(self) -> tuple[int, int]:
        """What promotion compares: the term, then the offset within it."""
        return (self.term, self.offset)


@dataclasses.dataclass(frozen=True)
class SyncInfo:
    term: int
    leader: str
    k: int
    members: tuple[str, ...]

    def to_json(self) -> bytes:
        return json.dumps({"term": self.term, "leader": self.leader, "k": self.k,
                           "members": sorted(self.members)}).encode()


def _obj(kv: KeyValue) -> dict[str, Any] | None:
    try:
        v = json.loads(kv.value)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def parse_leader(kv: KeyValue) -> LeaderInfo | None:
    v = _obj(kv)
    try:
        if v is None:
            return None
        return LeaderInfo(str(v["node"]), str(v["host"]), int(v["port"]), int(v["term"]),
                          kv.lease)
    except (KeyError, TypeError, ValueError):
        return None


def parse_member(node: str, kv: KeyValue) -> MemberInfo | None:
    v = _obj(kv)
    try:
        if v is None:
            return None
        following = v.get("following")
        return MemberInfo(node, str(v["host"]), int(v["port"]), int(v["offset"]),
                          int(v["term"]), str(v["role"]),
                          None if following is None else str(following),
                          bool(v["healthy"]), kv.lease, int(v.get("vacant", 0)),
                          int(v.get("led", 0)))
    except (KeyError, TypeError, ValueError):
        return None


def parse_sync(kv: KeyValue) -> SyncInfo | None:
    v = _obj(kv)
    try:
        if v is None:
            return None
        return SyncInfo(int(v["term"]), str(v["leader"]), int(v["k"]),
                        tuple(str(m) for m in v["members"]))
    except (KeyError, TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class GroupState:
    """Everything etcd holds about a group at one revision."""

    group: str
    leader: LeaderInfo | None
    #: The term counter (0: no leader was ever elected).
    term: int
    term_raw: bytes | None
    sync: SyncInfo | None
    members: dict[str, MemberInfo]
    revision: int

    def replicas(self) -> list[MemberInfo]:
        """Members other than the leader, by name."""
        lead = self.leader.node if self.leader else None
        return [m for n, m in sorted(self.members.items()) if n != lead]

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (``shaledb cluster status --json``)."""
        return {
            "group": self.group, "term": self.term, "revision": self.revision,
            "leader": None if self.leader is None else dataclasses.asdict(self.leader),
            "sync": None if self.sync is None else dataclasses.asdict(self.sync),
            "members": {n: dataclasses.asdict(m) for n, m in sorted(self.members.items())},
        }


#: Most members read from etcd for one group (a bound on one status read).
MAX_MEMBERS: Final = 256


def read_group(client: EtcdClient, group: str) -> GroupState:
    """The group's keys, read in one request (one consistent revision): the leader, sync
    and term keys each by name, and at most MAX_MEMBERS member keys. One bounded range over
    the whole prefix let more member keys than that (stale keys of crashed processes, or a
    misconfigured fleet sharing the group's name) push the sync and term keys, which sort
    after ``members/``, out of the read: the leader then saw term 0 and stepped down."""
    keys = GroupKeys(group)
    res = client.txn([], [Get(keys.leader), Get(keys.sync), Get(keys.term),
                          GetPrefix(keys.members_prefix, MAX_MEMBERS)])
    kvs = [kv for r in res.ranges for kv in r]
    leader: LeaderInfo | None = None
    term = 0
    term_raw: bytes | None = None
    sync: SyncInfo | None = None
    members: dict[str, MemberInfo] = {}
    revision = 0
    for kv in kvs:
        revision = max(revision, kv.mod_revision)
        if kv.key == keys.leader:
            leader = parse_leader(kv)
        elif kv.key == keys.term:
            term_raw = kv.value
            try:
                term = int(kv.value)
            except ValueError:
                term = 0
        elif kv.key == keys.sync:
            sync = parse_sync(kv)
        elif kv.key.startswith(keys.members_prefix):
            name = kv.key[len(keys.members_prefix):].decode(errors="replace")
            m = parse_member(name, kv)
            if m is not None:
                members[name] = m
    return GroupState(group, leader, term, term_raw, sync, members, revision)
