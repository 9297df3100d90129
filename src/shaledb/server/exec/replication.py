"""Replication (issue 15): a primary streams its committed write groups to its replicas.

What travels is the engine's own committed write groups (``shaledb.engine.replication``: the
WAL record payloads, with their sequence numbers), not the commands that made them: a replica
holds the same engine entries as its primary (DUMP of every key is byte-identical), and a
group -- a turn's writes, an EXEC, a script -- is applied as one engine write, so it is never
half visible on a replica. The stream's framing is docs/format.md, "Replication stream".

Primary side (:class:`ReplicaFeed`, one asyncio task per replica): ``SHALEDB.PSYNC replid
offset term`` either continues from ``offset`` (the primary's sequence number the replica
has) when this primary's replid matches and its backlog still holds every group after it,
or starts a full resync: a snapshot of the whole database is streamed in bounded chunks
(read in a worker thread, at most :data:`SNAPSHOT_WINDOW` bytes unsent at a time), then the
groups committed after the snapshot's sequence number. A replica that falls behind the
backlog is disconnected with a log line; it reconnects and resyncs. Unsent output is
bounded per link (the feeder waits at :data:`SNAPSHOT_WINDOW` / :data:`TAIL_WINDOW`; a
giant group goes out in :data:`TAIL_READ` slices) and for all links together
(``repl-total-output-limit``: the link furthest behind is dropped); at most
``max-replicas`` links are fed. The replica acknowledges (``REPLCONF ACK offset``) after
an fsync of what it applied: WAIT and ``sync-replicas`` count those.

Replica side (:class:`Replication`'s link task): connect (TLS when ``master-tls``),
authenticate (``masteruser`` / ``masterauth``), PSYNC, apply, acknowledge; on any error,
reconnect with backoff (50 ms doubling to 5 s). Its own replication state -- status, term,
the primary's replid and the offset applied -- is one engine entry (:data:`STATE_KEY`,
docs/format.md) written in the same engine write as every group it applies, so the offset is
exactly what the data holds, also across a crash. A full resync first marks the state
SYNCING (durably), wipes the data and loads the snapshot; clients get ``-LOADING`` until it
is complete. A crash meanwhile leaves SYNCING: the next start wipes the half-loaded data
(nothing half-visible) and a replica resyncs fully.

Terms (for automatic failover): every group frame carries the primary's term; a replica
refuses a primary whose term is lower than its own, a primary refuses a replica whose term
is higher than its own (it is the stale one). ``SHALEDB.ROLE`` sets role and term at once.

Everything here runs on the event loop except the snapshot reads (a worker thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import secrets
import ssl
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import crc32c as _crc32c
import msgpack

import shaledb

from ...engine.replication import (
    OP_DELETE,
    OP_PUT,
    ReplicationBacklog,
    decode_group,
    group_span,
)
from ..admin.config import parse_replicaof
from ..errors import FENCED_MESSAGE, NOREPLICAS_MESSAGE, READONLY_MESSAGE, CommandError
from .durability import SyncGroup

if TYPE_CHECKING:
    from ..admin.config import ServerConfig
    from ..keyspace.keyspace import Keyspace, KeyspaceTxn
    from .client import ClientState
    from .command import CommandSpec

log = logging.getLogger("shaledb.server.replication")

#: The engine key of this node's replication state (under the server's metadata prefix).
STATE_KEY: Final = b"\xffrepl"
#: Version byte of the state record (2 added the data term; version 1 is still read).
STATE_VERSION: Final = 2
_STATE_V1: Final = struct.Struct(">BBQQ")
_STATE: Final = struct.Struct(">BBQQQ")
#: Status byte of the state record.
STATUS_PRIMARY: Final = 0
STATUS_REPLICA: Final = 1
STATUS_SYNCING: Final = 2

#: Version of the replication stream (docs/format.md); SHALEDB.PSYNC names it.
STREAM_VERSION: Final = 1
FRAME_SNAPSHOT: Final = 0x53  # "S": a chunk of the snapshot: msgpack [key, value, ...]
FRAME_END: Final = 0x45  # "E": the snapshot is complete: u64 sequence
FRAME_GROUP: Final = 0x47  # "G": u64 term + one engine write group payload
FRAME_HEARTBEAT: Final = 0x48  # "H": u64 the primary's last sequence
_U64: Final = struct.Struct(">Q")

#: Snapshot bytes per frame, and most snapshot bytes unsent to one replica at a time.
SNAPSHOT_CHUNK: Final = 256 * 1024
SNAPSHOT_WINDOW: Final = 4 * 1024 * 1024
#: Most group bytes taken from the backlog per read, and most unsent output to a replica
#: before the feeder waits (the backlog holds the rest; past it the replica resyncs).
TAIL_READ: Final = 1024 * 1024
TAIL_WINDOW: Final = 8 * 1024 * 1024
#: Largest frame a replica accepts (a group is at most a WAL record; a chunk is 256 KiB).
MAX_FRAME: Final = 1 << 30
#: Seconds between heartbeats (the replica answers each with an ACK).
HEARTBEAT: Final = 1.0
#: A replica whose last ACK is older than this is not "good" for sync-replicas (seconds,
#: Redis' min-replicas-max-lag default).
MAX_LAG: Final = 10.0
#: Reconnect backoff of a replica (seconds).
BACKOFF_MIN: Final = 0.05
BACKOFF_MAX: Final = 5.0
#: Most REPLCONF listening-port values kept for clients yet to send SHALEDB.PSYNC.
MAX_PENDING_PORTS: Final = 1024
#: sync_read's answers (see there).
READ_LATEST: Final = 0
READ_VIEW: Final = 1
READ_HELD: Final = 2
#: The reads a sync-replicas primary serves from the visible snapshot: point reads of a
#: key's entry, a string's bytes, a hash field, a set member, a list element or a sorted
#: set score (KeyspaceView reads them at a snapshot; every other read command holds its
#: reply until what it read is acknowledged instead).
VIEW_COMMANDS: Final = frozenset((
    "get", "mget", "strlen", "getrange", "getbit", "bitcount", "bitpos",
    "exists", "type", "ttl", "pttl", "expiretime", "pexpiretime",
    "hget", "hmget", "hexists", "hstrlen", "hlen", "sismember", "smismember", "scard",
    "llen", "lindex", "zscore", "zmscore", "zcard"))
#: Commands without the write flag that may read and write data: a sync-replicas primary
#: holds their reply until what they read is acknowledged, like a @read command's.
SCRIPTS_AND_EXEC: Final = frozenset((
    "exec", "eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"))
#: Keys deleted per write while a full resync wipes a replica's old data.
WIPE_BATCH: Final = 1000

crc32c = _crc32c.crc32c


class ReplicationError(Exception):
    """The replication link failed (the message says why; it is shown in INFO)."""


class _Dropped(Exception):
    """A feeder's link was dropped to stay under repl-total-output-limit (logged)."""


def encode_state(status: int, term: int, offset: int, replid: str,
                 data_term: int | None = None) -> bytes:
    """The state record. ``data_term``: the term of the primary whose stream ``offset``
    counts in (default ``term``); failover compares nodes by (data_term, offset)."""
    return (_STATE.pack(STATE_VERSION, status, term, offset,
                        term if data_term is None else data_term) + replid.encode("ascii"))


def decode_state(raw: bytes | None) -> tuple[int, int, int, str, int]:
    """(status, term, offset, replid, data_term) of a state record; a node without one is
    a primary of term 0. A version 1 record (no data term) reads its term as the data
    term."""
    if raw is None:
        return STATUS_PRIMARY, 0, 0, "", 0
    if len(raw) >= _STATE.size and raw[0] == STATE_VERSION:
        _, status, term, offset, data_term = _STATE.unpack_from(raw)
        return status, term, offset, raw[_STATE.size:].decode("ascii", "replace"), data_term
    if len(raw) >= _STATE_V1.size and raw[0] == 1:
        _, status, term, offset = _STATE_V1.unpack_from(raw)
        return status, term, offset, raw[_STATE_V1.size:].decode("ascii", "replace"), term
    raise shaledb.CorruptionError(f"the replication state record ({len(raw)} bytes) is "
                                  f"not of version 1 or {STATE_VERSION}")


def frame(kind: int, body: bytes) -> bytes:
    """One stream frame as a RESP bulk string: kind byte, body, CRC32C of both (LE)."""
    head = bytes((kind,)) + body
    data = head + crc32c(head).to_bytes(4, "little")
    return b"$%d\r\n%s\r\n" % (len(data), data)


class FeedConnection(Protocol):
    """What a feeder needs of the replica's client connection."""

    @property
    def closing(self) -> bool: ...
    @property
    def output_bytes(self) -> int: ...
    def send_raw(self, data: bytes) -> bool: ...
    def abort(self, message: bytes | None = None) -> None: ...
    def drop(self) -> None: ...


class ReplicationHost(Protocol):
    """The server as replication sees it."""

    config: ServerConfig
    port: int | None

    @property
    def db(self) -> shaledb.DB: ...
    @property
    def keyspace(self) -> Keyspace: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def connections(self) -> Mapping[int, Any]: ...


class ReplicaFeed:
    """One connected replica, on the primary."""

    __slots__ = ("client_id", "addr", "conn", "port", "ack", "ack_time", "state", "task",
                 "sent", "ip", "node", "bytes_out")

    def __init__(self, client_id: int, addr: str, conn: FeedConnection, port: int,
                 ip: str | None = None, node: str | None = None) -> None:
        self.client_id = client_id
        self.addr = addr
        self.conn = conn
        self.port = port
        #: The address the replica announced (REPLCONF ip-address), else its peer address:
        #: with ``port`` (its listening port), how a failover group's sync set names it.
        self.ip = ip if ip else addr.rsplit(":", 1)[0]
        #: The failover node name the replica announced (REPLCONF node-name): how a sync
        #: set names its standbys. One link per name (a newer link replaces an older one).
        self.node = node
        #: The last offset the replica acknowledged durably, and when (monotonic).
        self.ack = -1
        self.ack_time = time.monotonic()
        #: "wait_bgsave" (snapshot being sent), "online" (tailing).
        self.state = "wait_bgsave"
        self.task: asyncio.Task[None] | None = None
        #: The last sequence number sent.
        self.sent = 0
        #: Bytes of stream handed to the connection (minus its unsent output: how much of
        #: a snapshot the replica has read).
        self.bytes_out = 0

    def send(self, data: bytes) -> bool:
        """Hand ``data`` to the connection; whether it was taken."""
        self.bytes_out += len(data)
        return self.conn.send_raw(data)

    def behind(self) -> tuple[int, int, int]:
        """How far behind the replica is, comparable between links (larger: further):
        first by the stream it was handed and has not read (so a replica that stopped
        reading ranks above one that just connected), then a replica loading a snapshot
        above one tailing, then by how little it read (snapshot bytes, or the offset it
        acknowledged)."""
        unsent = self.conn.output_bytes
        if self.state == "online":
            return unsent, 0, -self.ack
        return unsent, 1, unsent - self.bytes_out


class _AckWaiter:
    __slots__ = ("target", "count", "future", "client_id", "standbys_only")

    def __init__(self, target: int, count: int, future: asyncio.Future[int],
                 client_id: int | None, standbys_only: bool = False) -> None:
        self.target = target
        self.count = count
        self.future = future
        #: Count only the failover group's sync standbys (a sync-replicas barrier).
        self.standbys_only = standbys_only
        #: The WAITing client (None: a sync-replicas barrier, which always has a timeout).
        self.client_id = client_id


class Replication:
    """The replication role and state of one server, both sides."""

    def __init__(self, host: ReplicationHost) -> None:
        self.host = host
        #: "master" or "slave" (Redis' words in INFO and ROLE).
        self.role = "master"
        self.term = 0
        #: This primary's replication id (a new one at every start and promotion: the
        #: offsets of another id's stream mean nothing here).
        self.replid = secrets.token_hex(20)
        #: The primary's replid and offset a replica has applied.
        self.master_replid = ""
        self.offset = 0
        self.master_host: str | None = None
        self.master_port = 0
        #: Replica link: "connect", "connecting", "sync", "connected".
        self.link_state = "connect"
        self.link_error = ""
        self.last_io = 0.0
        #: A full resync is loading: commands answer -LOADING.
        self.loading = False
        #: Bytes of the snapshot applied by the running (or last) full resync: past 0, this
        #: node's own data is gone and a crash leaves nothing of either (INFO, tests).
        self.sync_read_bytes = 0
        #: A newer term than this primary's was seen (a replica of a newer leader asked to
        #: sync): this node is a stale primary and takes no writes (0: not fenced).
        self.fenced_by = 0
        #: Automatic failover (cluster/runner.py): writes are allowed only before this
        #: ``time.monotonic()`` deadline, set from the election's lease renewals (0: not
        #: the elected primary). None: no failover, no lease. Part of the one write fence
        #: (:meth:`can_write`), with the role and the term.
        self.lease_deadline: float | None = None
        #: Automatic failover in sync mode: only acknowledgements of the replicas that
        #: announced these node names (one link per name) count towards sync-replicas; the
        #: election publishes them in etcd first. None: every replica counts.
        self.sync_standbys: frozenset[str] | None = None
        #: The term of the primary whose stream this node's data and offset belong to (a
        #: primary: the term it was promoted in; a replica loading a full resync: 0, it
        #: holds nothing). With the offset, what failover compares to choose whom to
        #: promote.
        self.data_term = 0
        #: The data is this node's own history (it was a primary, or never replicated), not
        #: yet replaced by a full resync: its position is its own last sequence number,
        #: also after it was made a replica.
        self.own_history = True
        self.feeds: dict[int, ReplicaFeed] = {}
        #: REPLCONF listening-port of clients that have not sent SHALEDB.PSYNC yet
        #: (bounded: the oldest entries go first).
        self.listening_ports: dict[int, int] = _BoundedPorts()
        #: REPLCONF ip-address of the same clients (bounded the same way).
        self.announced_ips: dict[int, str] = _BoundedIps()
        #: REPLCONF node-name of the same clients (bounded the same way).
        self.announced_nodes: dict[int, str] = _BoundedIps()
        self.backlog: ReplicationBacklog | None = None
        #: Primary-side counters (INFO): full syncs served, partial resyncs accepted and
        #: refused, replicas disconnected for falling behind.
        self.sync_full = 0
        self.sync_partial_ok = 0
        self.sync_partial_err = 0
        self.slow_replica_disconnections = 0
        #: Replicas dropped because the stream unsent to all of them together would have
        #: passed repl-total-output-limit, and PSYNCs refused past max-replicas.
        self.output_limit_disconnections = 0
        self.max_replicas_refused = 0
        #: Times a feeder read groups back from the WAL on disk (past the backlog).
        self.wal_reads = 0
        #: Replica-side counters.
        self.full_syncs_done = 0
        self.partial_syncs_done = 0
        self.groups_applied = 0
        #: sync-replicas: the highest sequence number sync-replicas replicas acknowledged
        #: and this node's own fsync covers (or committed before sync mode started), and a
        #: snapshot pinned there: the reads of :meth:`sync_read` see nothing past it (None:
        #: not in sync mode).
        self.visible = 0
        #: The sequence number the last successful fsync of the sync-replicas barrier
        #: covered (ReplicaSyncGroup): a read must not show a write the primary's disk may
        #: not hold (review 15c), nor one whose fsync failed.
        self.durable = 0
        self._visible_snap: shaledb.Snapshot | None = None
        #: The read-only keyspace transaction at that snapshot, reused until it moves.
        self._view: KeyspaceTxn | None = None
        #: Reads served from that snapshot, and read replies held for acknowledgements.
        self.view_reads = 0
        self.held_reads = 0
        self._waiters: list[_AckWaiter] = []
        self._commit_fut: asyncio.Future[None] | None = None
        self._loop_thread = 0
        self._link_task: asyncio.Task[None] | None = None
        #: Incremented by every role change: a link task of an older epoch applies nothing
        #: more (a cancellation can be lost in asyncio.wait_for, Python < 3.12).
        self._link_epoch = 0
        self._ack_task: asyncio.Task[None] | None = None
        self._acked = 0
        self._writer: asyncio.StreamWriter | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="shaledb-repl")
        self._stopping = False

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Attach the backlog, read the persisted state, start replicating when configured
        (on the event loop, after the keyspace is open)."""
        host = self.host
        cfg = host.config
        db = host.db
        self._loop_thread = threading.get_ident()
        self._commit_fut = host.loop.create_future()
        self.backlog = db.attach_replication(cfg.repl_backlog_size, self._on_commit)
        status, term, offset, replid, data_term = decode_state(db.get(STATE_KEY))
        self.term = term
        self.data_term = data_term
        self.own_history = status == STATUS_PRIMARY
        if cfg.etcd is not None:
            # Automatic failover: no write before the election grants a lease.
            self.lease_deadline = 0.0
            if cfg.sync_replicas > 0:
                # Sync mode: only the sync set's standbys count, and none until the
                # election has published them.
                self.sync_standbys = frozenset()
        if status == STATUS_SYNCING:
            # A full resync did not finish: what it loaded is neither the old data nor the
            # primary's. Nothing half-visible: wipe it (the next sync loads it all again).
            log.warning("a full resync from the primary was interrupted (crash or stop): "
                        "removing the partly loaded data; it is loaded again from the "
                        "primary")
            self._wipe_sync()
            db.put(STATE_KEY, encode_state(STATUS_REPLICA, term, 0, "", 0), sync=True)
            host.keyspace.reload()
            self.data_term = 0
            status = STATUS_REPLICA
        elif status == STATUS_REPLICA:
            self.master_replid, self.offset = replid, offset
        if cfg.etcd is not None and status == STATUS_REPLICA and cfg.replicaof is None:
            # Failover: a replica stays one (keeping its offset and the term it counts in,
            # which the election compares) until the election names its primary.
            self.role = "slave"
            host.keyspace.replica = True
        elif cfg.replicaof is not None:
            h, p = parse_replicaof(cfg.replicaof)
            self.become_replica(h, p, None)
        elif status != STATUS_PRIMARY and cfg.etcd is None:
            log.warning("this node was a replica (of primary %s at offset %d) and starts as "
                        "a primary: give --replicaof to keep it a replica", replid or "?",
                        offset)
        self.sync_mode_changed()

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._link_task, self._ack_task):
            if task is not None:
                task.cancel()
        for feed in list(self.feeds.values()):
            if feed.task is not None:
                feed.task.cancel()
        tasks = [t for t in (self._link_task, self._ack_task) if t is not None]
        tasks += [f.task for f in self.feeds.values() if f.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for w in self._waiters:
            if not w.future.done():
                w.future.set_result(self._count_acked(w.target))
        self._waiters.clear()
        if self._visible_snap is not None:
            self._visible_snap.close()
            self._visible_snap = None
            self._view = None
        if self.backlog is not None:  # started: the database is open
            try:
                self.host.db.attach_replication(None, None)
            except shaledb.ShaleError:
                pass
        self._executor.shutdown(wait=True)

    # -- role changes ------------------------------------------------------------------------
    def _check_term(self, term: int | None) -> None:
        if term is not None and term < self.term:
            raise CommandError(f"term {term} is older than this node's term {self.term}: "
                               "refused (a stale leader's order)", prefix="STALETERM")

    def become_replica(self, host: str, port: int, term: int | None) -> None:
        """Replicate ``host:port`` (REPLICAOF, SHALEDB.ROLE REPLICA): writes are refused
        from now on, the node's own replicas are dropped, the link task connects."""
        self._check_term(term)
        ks = self.host.keyspace
        ks.settle()  # the turn's buffered writes commit before the fence goes up
        if term is not None and term != self.term:
            self.term = term
            self._save_state(STATUS_REPLICA if self.role == "slave" else STATUS_PRIMARY)
        ks.replica = True
        self.role = "slave"
        self.fenced_by = 0
        self.master_host, self.master_port = host, port
        for feed in list(self.feeds.values()):
            feed.conn.abort()
            if feed.task is not None:
                feed.task.cancel()
        if self._link_task is not None:
            self._link_task.cancel()
        self.link_state = "connect"
        self.link_error = ""
        self._link_epoch += 1
        self._link_task = self.host.loop.create_task(self._link_loop(self._link_epoch))
        self.sync_mode_changed()
        log.info("replicating %s:%d (term %d)", host, port, self.term)

    def become_primary(self, term: int | None) -> None:
        """Stop replicating and accept writes (REPLICAOF NO ONE, SHALEDB.ROLE PRIMARY)."""
        self._check_term(term)
        if term is not None:
            self.term = term
        if self.fenced_by and (term is None or term < self.fenced_by):
            raise CommandError(f"a node of term {self.fenced_by} exists: promote this node "
                               f"with SHALEDB.ROLE PRIMARY and a term >= {self.fenced_by}",
                               prefix="STALETERM")
        self.fenced_by = 0
        was_replica = self.role == "slave"
        self._link_epoch += 1
        if self._link_task is not None:
            self._link_task.cancel()
            self._link_task = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.loading:
            # Promoted in the middle of a full resync: what was loaded is part of the
            # primary's data, which must never be served as a whole database.
            log.warning("promoted while loading a full resync: the partly loaded data is "
                        "removed; this primary starts empty")
            self._wipe_sync()
            self.master_replid, self.offset = "", 0
        self.loading = False
        self.role = "master"
        self.data_term = self.term
        self.own_history = True
        self.master_host = None
        self.link_state = "connect"
        if was_replica:
            # A new history starts here: offsets of the old primary's stream mean nothing
            # in this node's sequence numbers.
            self.replid = secrets.token_hex(20)
        self._save_state(STATUS_PRIMARY)
        ks = self.host.keyspace
        fenced = ks.replica and not was_replica
        ks.replica = False
        if was_replica or fenced:
            ks.reload()  # its purger and chunk ids take over from the old primary's
        self.sync_mode_changed()
        log.info("now a primary (term %d, replid %s)", self.term, self.replid)

    def _save_state(self, status: int) -> None:
        db = self.host.db
        offset = self.offset if status != STATUS_PRIMARY else 0
        replid = self.master_replid if status != STATUS_PRIMARY else self.replid
        db.apply_replicated([OP_PUT, STATE_KEY, 0, encode_state(
            status, self.term, offset, replid, self.data_term)], None, sync=True)

    # -- the write gate (dispatcher) ---------------------------------------------------------
    def write_refusal(self) -> CommandError | None:
        """Why a write command must be refused now, or None."""
        if self.role == "slave":
            return CommandError(READONLY_MESSAGE, prefix="READONLY")
        if self.fenced_by:
            return CommandError(f"this primary's term {self.term} is stale (a node of term "
                                f"{self.fenced_by} exists): it takes no writes",
                                prefix="READONLY")
        deadline = self.lease_deadline
        if deadline is not None and time.monotonic() >= deadline:
            return CommandError(FENCED_MESSAGE, prefix="READONLY")
        cfg = self.host.config
        if cfg.sync_replicas and cfg.sync_replicas_refuse \
                and self.good_replicas() < cfg.sync_replicas:
            return CommandError(NOREPLICAS_MESSAGE, prefix="NOREPLICAS")
        return None

    def can_write(self) -> bool:
        """The write fence: a primary, not fenced by a newer term, and (with automatic
        failover) before its lease deadline. The dispatcher (:meth:`write_refusal`), the
        turn's commit (``TurnCommit.fence``), the keyspace's background writers and the
        failover election all ask this one predicate. Any thread (plain reads)."""
        if self.role != "master" or self.fenced_by:
            return False
        deadline = self.lease_deadline
        return deadline is None or time.monotonic() < deadline

    def position(self) -> tuple[int, int]:
        """(data term, offset): how far this node's copy of its group's history goes, as
        failover compares nodes (offsets count in the data term's primary's sequence
        numbers). A primary, or a demoted one not yet resynced: the term it led and its
        last sequence number; a replica: the term of the stream it applied and its offset;
        loading a full resync: (0, 0). Any thread."""
        if self.loading:
            return 0, 0
        if self.role == "master" or self.own_history:
            # A demoted primary not yet resynced still holds its whole history, up to its
            # last sequence number in the term it led (more than its replicas: it must
            # rank above them).
            return self.data_term, self.host.db.last_sequence
        return self.data_term, self.offset

    def make_durable(self) -> None:
        """fsync everything this node applied, so :meth:`position` is on its disk (a
        takeover asks before it leads). Any thread."""
        self.host.db.sync()

    @property
    def restricted(self) -> bool:
        """Whether the dispatcher must ask :meth:`write_refusal` / check loading."""
        return (self.role == "slave" or self.loading or self.fenced_by > 0
                or self.lease_deadline is not None or self.host.config.sync_replicas > 0)

    def _counts(self, feed: ReplicaFeed, standbys_only: bool) -> bool:
        standbys = self.sync_standbys
        # A sync standby is who the link announced in its handshake (start_feed keeps one
        # link per node name), never the address it claims: any client can claim one; and
        # only a link that is streaming (its snapshot sent) counts.
        return not standbys_only or standbys is None or (
            feed.node is not None and feed.node in standbys and feed.state == "online")

    def good_replicas(self) -> int:
        """Replicas that acknowledged within MAX_LAG (with failover in sync mode: of the
        sync standbys only, as only theirs count for sync-replicas)."""
        now = time.monotonic()
        return sum(1 for f in self.feeds.values()
                   if f.state == "online" and now - f.ack_time <= MAX_LAG
                   and self._counts(f, True))

    # -- primary: feeding replicas -------------------------------------------------------------
    def _on_commit(self, last: int) -> None:
        """The engine committed a group (called on the writer's thread)."""
        if not self.feeds:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake()
        else:
            self.host.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        fut = self._commit_fut
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._commit_fut = self.host.loop.create_future()

    def start_feed(self, client: ClientState, replid: str, offset: int, term: int,
                   port: int) -> None:
        """SHALEDB.PSYNC from ``client``: answer it and stream to it from now on."""
        if self.role != "master":
            raise CommandError("this node is a replica; replicate its primary "
                               f"({self.master_host}:{self.master_port}) instead")
        if term > self.term:
            if self.host.config.etcd is not None:
                # Under --etcd the term authority is etcd and the lease is the fence: a term
                # a connection claims proves nothing (any @admin client can send one), so
                # it must not fence the elected primary. Its election re-reads etcd at
                # every step and steps down itself if a newer leader really exists.
                log.warning("a replica claiming term %d asked to sync from this primary "
                            "(term %d): refused; etcd decides who leads", term, self.term)
            elif term > self.fenced_by:
                # Without etcd the operator's SHALEDB.ROLE is the term authority, and this
                # is the only guard against two primaries: fence, until SHALEDB.ROLE
                # PRIMARY with a term >= this one (or REPLICA) lifts it.
                self.fenced_by = term
                ks = self.host.keyspace
                ks.settle()
                ks.replica = True  # the same fence as a replica's: no write path is open
                log.warning("a replica at term %d asked to sync from this primary (term %d): "
                            "a newer leader exists; this node refuses writes until it is "
                            "made a replica (SHALEDB.ROLE REPLICA) or a primary of a newer "
                            "term", term, self.term)
            if self.host.config.etcd is not None:
                raise CommandError(f"the replica's term {term} is newer than this primary's "
                                   f"({self.term}): refused; replicate the primary named by "
                                   "the group's leader key in etcd", prefix="STALETERM")
            raise CommandError(f"the replica's term {term} is newer than this primary's "
                               f"({self.term}): this node is a stale primary and must not "
                               "lead", prefix="STALETERM")
        conn = self.host.connections.get(client.id)
        if conn is None:
            raise CommandError("the connection is gone")
        limit = self.host.config.max_replicas
        if client.id not in self.feeds and len(self.feeds) >= limit:
            self.max_replicas_refused += 1
            log.warning("refused replica %s: %d replicas are connected (max-replicas %d)",
                        client.addr, len(self.feeds), limit)
            raise CommandError(f"max number of replicas reached (max-replicas {limit}): "
                               "remove a replica or raise max-replicas")
        old = self.feeds.pop(client.id, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        node = self.announced_nodes.pop(client.id, None)
        if node is not None:
            # One link per node: a node counts once towards sync-replicas however many
            # links claim its name. The newest replaces the older (a standby that restarts
            # or reconnects must not wait for its half-open old link to time out).
            for other in [f for f in self.feeds.values() if f.node == node]:
                log.warning("replica %s announced node name %r, which link %s had: closing "
                            "the older link", client.addr, node, other.addr)
                del self.feeds[other.client_id]
                other.conn.abort()
                if other.task is not None:
                    other.task.cancel()
        feed = ReplicaFeed(client.id, client.addr, conn, port,
                           self.announced_ips.pop(client.id, None), node)
        self.feeds[client.id] = feed
        # The stream replaces replies on this connection; ACKs are answered with nothing.
        client.reply_off = True
        feed.task = self.host.loop.create_task(self._feed(feed, replid, offset))

    def note_ack(self, client_id: int, offset: int) -> None:
        """REPLCONF ACK from a replica."""
        feed = self.feeds.get(client_id)
        if feed is None:
            return
        # Never more than was sent on this link: a forged or confused ACK must not count
        # the replica as holding writes it was never given (WAIT, sync-replicas).
        offset = min(offset, feed.sent)
        if offset > feed.ack:
            feed.ack = offset
        feed.ack_time = time.monotonic()
        if self._visible_snap is not None:
            self._advance_visible()
        if self._waiters:
            self._check_waiters()

    # -- sync-replicas reads ---------------------------------------------------------------------
    def sync_mode_changed(self) -> None:
        """sync-replicas or the role changed: a primary in sync mode pins the visible
        snapshot at its last sequence number (what was committed before sync mode began
        was acknowledged without replicas), anything else releases it."""
        want = self.host.config.sync_replicas > 0 and self.role == "master"
        snap = self._visible_snap
        self._view = None
        if want and snap is None:
            snap = self._visible_snap = self.host.db.snapshot()
            assert snap.sequence is not None
            self.visible = snap.sequence
            self.durable = max(self.durable, snap.sequence)
        elif not want and snap is not None:
            self._visible_snap = None
            snap.close()

    def local_synced(self, seq: int) -> None:
        """The sync-replicas barrier's fsync succeeded, covering every write up to ``seq``
        (the loop)."""
        if seq > self.durable:
            self.durable = seq
            if self._visible_snap is not None:
                self._advance_visible()

    def _advance_visible(self) -> None:
        """Move the visible snapshot to the highest sequence number sync-replicas counting
        replicas acknowledged and the local fsync covers (never back): a new snapshot
        there before the old one is released, so every version it reads is kept."""
        snap = self._visible_snap
        need = self.host.config.sync_replicas
        if snap is None or need <= 0:
            return
        acks = sorted((f.ack for f in self.feeds.values() if self._counts(f, True)),
                      reverse=True)
        if len(acks) < need:
            return
        seq = min(acks[need - 1], self.host.db.last_sequence, self.durable)
        if seq <= self.visible:
            return
        self._visible_snap = self.host.db.snapshot_at(seq)
        self._view = None
        self.visible = seq
        snap.close()

    def sync_read(self, client: ClientState, cmd: CommandSpec) -> int:
        """How ``cmd`` of ``client`` runs on a sync-replicas primary, so that
        no reply shows a write sync-replicas replicas have not acknowledged:
        :data:`READ_LATEST` (as usual: a write, whose reply waits for its own
        acknowledgements; or nothing is unacknowledged), :data:`READ_VIEW` (a plain read:
        at the visible snapshot, :meth:`view_txn`, without waiting), :data:`READ_HELD` (a
        read of the latest state -- EXEC, a script, a walk, or a client whose own write is
        not acknowledged yet, which must see it -- whose reply waits until everything
        committed so far is acknowledged, as a write's does)."""
        if self._visible_snap is None:
            return READ_LATEST
        name = cmd.name
        last = self.host.db.last_sequence
        if "write" in cmd.flags:
            client.sync_wrote = True
            # Its reply waits for what it read, as a held read's: a write that writes
            # nothing (SETNX finding the key, SADD of a member, EXPIRE of a missing key)
            # tells what it found with no write of its own to wait for (review 15c).
            return READ_LATEST if self.visible >= last else READ_HELD
        if name not in VIEW_COMMANDS:
            if name in SCRIPTS_AND_EXEC:
                client.sync_wrote = True  # they may write too
            elif "read" not in cmd.categories:
                return READ_LATEST  # PING, INFO, CONFIG, REPLCONF ...: no data
            if self.visible >= last:
                return READ_LATEST
            self.held_reads += 1
            return READ_HELD
        if client.sync_wrote:
            # Its writes are committed (a read commits the turn first): at or before now.
            client.sync_wrote = False
            client.sync_last_write = last
        if self.visible >= last:
            return READ_LATEST
        if self.visible >= client.sync_last_write:
            self.view_reads += 1
            return READ_VIEW
        self.held_reads += 1
        return READ_HELD

    def view_txn(self) -> KeyspaceTxn:
        """A read-only keyspace transaction at the visible snapshot (one per snapshot: its
        clock is set again for each command, as the shared transaction's)."""
        view = self._view
        if view is None:
            snap = self._visible_snap
            assert snap is not None
            view = self._view = self.host.keyspace.view(snap)
        else:
            view.mark()
        return view

    def acked_now(self) -> int:
        """How many replicas acknowledged every write so far."""
        return self._count_acked(self.host.db.last_sequence)

    def standbys_acked(self, target: int) -> int:
        """How many sync standbys acknowledged every write up to ``target`` (the loop)."""
        return self._count_acked(target, standbys_only=True)

    def _count_acked(self, target: int, standbys_only: bool = False) -> int:
        return sum(1 for f in self.feeds.values()
                   if f.ack >= target and self._counts(f, standbys_only))

    def _check_waiters(self) -> None:
        keep: list[_AckWaiter] = []
        for w in self._waiters:
            if w.future.done():
                continue
            n = self._count_acked(w.target, w.standbys_only)
            if n >= w.count:
                w.future.set_result(n)
            else:
                keep.append(w)
        self._waiters = keep

    def wait_acks(self, count: int, timeout: float | None, target: int | None = None,
                  client_id: int | None = None,
                  standbys_only: bool = False) -> asyncio.Future[int]:
        """A future of how many replicas acknowledged ``target`` (default: every write so
        far), done once ``count`` did or after ``timeout`` seconds (None: never).
        ``client_id``: the WAITing client; its waiter goes when it disconnects, so there
        are never more WAIT waiters than clients."""
        loop = self.host.loop
        conns = self.host.connections
        if any(w.client_id is not None and w.client_id not in conns for w in self._waiters):
            for w in self._waiters:
                if w.client_id is not None and w.client_id not in conns:
                    w.future.cancel()
            self._waiters = [w for w in self._waiters if not w.future.done()]
        if target is None:
            target = self.host.db.last_sequence
        fut: asyncio.Future[int] = loop.create_future()
        n = self._count_acked(target, standbys_only)
        if n >= count or timeout == 0:
            fut.set_result(n)
            return fut
        waiter = _AckWaiter(target, count, fut, client_id, standbys_only)
        self._waiters.append(waiter)
        if timeout is not None:
            def expire() -> None:
                if not fut.done():
                    fut.set_result(self._count_acked(target, standbys_only))
            handle = loop.call_later(timeout, expire)
            fut.add_done_callback(lambda _: handle.cancel())
        return fut

    async def _can_continue(self, replid: str, offset: int) -> bool:
        """Whether a replica at ``offset`` of ``replid`` can be fed from the backlog, or
        else from the WAL segments still on disk (read in the worker thread)."""
        backlog = self.backlog
        if replid != self.replid or backlog is None or offset < 0:
            return False
        if backlog.read(offset, 0) is not None:
            return True
        groups = await self.host.loop.run_in_executor(
            self._executor, self.host.db.wal_groups_after, offset, 1)
        return groups is not None

    async def _feed(self, feed: ReplicaFeed, replid: str, offset: int) -> None:
        conn = feed.conn
        snap: shaledb.Snapshot | None = None
        try:
            partial = await self._can_continue(replid, offset)
            if not partial and replid not in ("?", ""):
                self.sync_partial_err += 1
            if partial:
                self.sync_partial_ok += 1
                feed.send(b"+CONTINUE %s %d\r\n" % (self.replid.encode(), self.term))
                pos = offset
            else:
                self.sync_full += 1
                snap = self.host.db.snapshot()
                seq = snap.sequence
                assert seq is not None
                feed.send(b"+FULLRESYNC %s %d %d\r\n"
                          % (self.replid.encode(), seq, self.term))
                log.info("full resync of replica %s from sequence %d", feed.addr, seq)
                await self._send_snapshot(feed, snap)
                snap.close()
                snap = None
                feed.send(frame(FRAME_END, _U64.pack(seq)))
                pos = seq
            feed.state = "online"
            feed.sent = pos
            await self._tail(feed, pos)
        except asyncio.CancelledError:
            raise
        except _Dropped:
            pass  # logged and counted by _room
        except ReplicationError as exc:
            log.warning("replica %s: %s; disconnecting it", feed.addr, exc)
            conn.drop()
        except Exception:
            log.exception("feeding replica %s failed; disconnecting it", feed.addr)
            conn.drop()
        finally:
            if snap is not None:
                snap.close()
            if self.feeds.get(feed.client_id) is feed:
                del self.feeds[feed.client_id]
            if self._waiters:
                self._check_waiters()

    async def _send_snapshot(self, feed: ReplicaFeed, snap: shaledb.Snapshot) -> None:
        loop = self.host.loop
        it = snap.range(None, None, include_expired=True)
        conn = feed.conn
        while True:
            await self._wait_drained(feed, SNAPSHOT_WINDOW)
            data = await loop.run_in_executor(self._executor, _snapshot_chunk, it)
            if data is None:
                return
            if len(data) > TAIL_READ:
                # A chunk holding one large value (a list element or a hash field of up
                # to 64 MiB): in slices, as a giant group is.
                if not await self._send_large(feed, FRAME_SNAPSHOT, b"", data,
                                              SNAPSHOT_WINDOW):
                    raise _Dropped()
                continue
            out = frame(FRAME_SNAPSHOT, data)
            if not self._room(feed, len(out)):
                raise _Dropped()
            if conn.closing or not feed.send(out):
                raise ReplicationError("the replica disconnected during the snapshot")

    async def _wait_drained(self, feed: ReplicaFeed, window: int) -> None:
        """Wait until at most ``window`` bytes are unsent to ``feed``'s replica. A replica
        that reads nothing for repl-timeout seconds meanwhile is given up on."""
        conn = feed.conn
        timeout = self.host.config.repl_timeout
        last = conn.output_bytes
        since = time.monotonic()
        while last > window:
            if conn.closing:
                raise ReplicationError("the replica disconnected")
            await asyncio.sleep(0.005)
            now = time.monotonic()
            unsent = conn.output_bytes
            if unsent < last:
                since = now
            elif now - since > timeout:
                raise ReplicationError(f"it read nothing of the stream for {timeout:g} s "
                                       "(repl-timeout)")
            last = unsent

    def unsent_bytes(self) -> int:
        """Stream bytes handed to the replicas' connections and not sent yet, in total."""
        return sum(f.conn.output_bytes for f in self.feeds.values())

    def _room(self, feed: ReplicaFeed, size: int) -> bool:
        """Make room for ``size`` more bytes to ``feed`` under repl-total-output-limit: while
        the total unsent to all replicas would pass it, drop the link furthest behind
        (:meth:`ReplicaFeed.behind`; it resyncs when it reconnects). False when that was
        ``feed`` itself (its task must end: it is no longer fed)."""
        limit = self.host.config.repl_total_output_limit
        while True:
            total = self.unsent_bytes()
            if total + size <= limit or feed.client_id not in self.feeds:
                return feed.client_id in self.feeds
            victim = max(self.feeds.values(), key=ReplicaFeed.behind)
            self.output_limit_disconnections += 1
            log.warning("replica %s dropped: the replication stream unsent to all replicas "
                        "would pass repl-total-output-limit (%d bytes: %d unsent, %d more to "
                        "send), and it is the furthest behind; it resyncs when it "
                        "reconnects (raise repl-total-output-limit if this repeats)",
                        victim.addr, limit, total, size)
            del self.feeds[victim.client_id]
            victim.conn.drop()
            if victim is not feed and victim.task is not None:
                victim.task.cancel()

    async def _tail(self, feed: ReplicaFeed, pos: int) -> None:
        conn = feed.conn
        backlog = self.backlog
        assert backlog is not None
        cfg = self.host.config
        last_send = feed.ack_time = time.monotonic()  # its first ACK comes after its load
        while not conn.closing:
            if time.monotonic() - feed.ack_time > cfg.repl_timeout:
                # Gone without closing (a partition): whether it is sent to or not.
                log.warning("replica %s acknowledged nothing for %.0f s (repl-timeout): "
                            "disconnecting it", feed.addr, time.monotonic() - feed.ack_time)
                conn.drop()
                return
            slow = conn.output_bytes > TAIL_WINDOW
            # A slow replica: wait for it while the backlog holds what it was not sent.
            groups = None if slow and pos < backlog.first_seq else (
                [] if slow else backlog.read(pos, TAIL_READ))
            if slow and groups is not None:
                await asyncio.sleep(0.01)
            else:
                if groups is None and not slow:
                    # Further behind than the backlog: the WAL segments still on disk may
                    # hold the groups (read in the worker thread, bounded by TAIL_READ).
                    groups = await self.host.loop.run_in_executor(
                        self._executor, self.host.db.wal_groups_after, pos, TAIL_READ)
                    if groups is not None:
                        self.wal_reads += 1
                if groups is None:
                    self.slow_replica_disconnections += 1
                    log.warning("replica %s needs write groups after sequence %d that the "
                                "backlog (repl-backlog-size %d bytes) no longer holds%s: "
                                "disconnecting it; it will resync fully (raise "
                                "repl-backlog-size if this repeats)", feed.addr, pos,
                                backlog.limit,
                                "" if slow else " (nor the WAL segments on disk)")
                    conn.drop()
                    return
                if groups:
                    term = _U64.pack(self.term)
                    out: list[bytes] = []
                    for payload in groups:
                        if len(payload) > TAIL_READ:
                            # A giant group (one 100 MB SET): streamed in TAIL_READ slices,
                            # each once the link drained to TAIL_WINDOW, never buffered
                            # whole per replica.
                            if out and not self._send_groups(feed, out):
                                return
                            out = []
                            if not await self._send_large(feed, FRAME_GROUP, term,
                                                          payload, TAIL_WINDOW):
                                return
                        else:
                            out.append(frame(FRAME_GROUP, term + payload))
                        pos = group_span(payload)[1]
                    if out and not self._send_groups(feed, out):
                        return
                    feed.sent = pos
                    last_send = time.monotonic()
                    continue
                now = time.monotonic()
                if now - last_send >= HEARTBEAT:
                    conn.send_raw(frame(FRAME_HEARTBEAT, _U64.pack(pos)))
                    last_send = now
                fut = self._commit_fut
                assert fut is not None
                # (asyncio.wait never cancels the shared future on its timeout)
                await asyncio.wait((fut,), timeout=HEARTBEAT)

    def _send_groups(self, feed: ReplicaFeed, frames: list[bytes]) -> bool:
        """Send whole group frames in one write; False when the link was dropped to stay
        under repl-total-output-limit."""
        data = b"".join(frames)
        if not self._room(feed, len(data)):
            return False
        feed.send(data)
        return True

    async def _send_large(self, feed: ReplicaFeed, kind: int, prefix: bytes,
                          payload: bytes, window: int) -> bool:
        """One frame of ``kind`` (body ``prefix + payload``) in TAIL_READ slices, each once
        the link drained to ``window`` (the bytes are :func:`frame`'s, without building
        them whole); False when the link was dropped."""
        head = bytes((kind,)) + prefix
        crc = crc32c(payload, crc32c(head))
        n = len(head) + len(payload) + 4
        view = memoryview(payload)
        pieces: list[bytes | memoryview] = [b"$%d\r\n%s" % (n, head)]
        pieces += [view[i:i + TAIL_READ] for i in range(0, len(payload), TAIL_READ)]
        pieces.append(crc.to_bytes(4, "little") + b"\r\n")
        for piece in pieces:
            await self._wait_drained(feed, window)
            if not self._room(feed, len(piece)):
                return False
            if not feed.send(bytes(piece)):
                return False
        return True

    # -- replica: the link to the primary --------------------------------------------------------
    def _current(self, epoch: int) -> None:
        """Raise CancelledError when the link task of ``epoch`` was superseded."""
        if epoch != self._link_epoch or self.role != "slave" or self._stopping:
            raise asyncio.CancelledError()

    async def _link_loop(self, epoch: int) -> None:
        backoff = BACKOFF_MIN
        while self.role == "slave" and not self._stopping and epoch == self._link_epoch:
            try:
                await self._sync_once(epoch)
                backoff = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the link must outlive any failure
                expected = isinstance(exc, (OSError, EOFError, asyncio.IncompleteReadError,
                                            ReplicationError, ssl.SSLError, TimeoutError,
                                            shaledb.ShaleError))
                message = str(exc) or type(exc).__name__
                if not expected:
                    # Bad bytes that passed the checksum, or a bug: the link starts over.
                    message = f"{type(exc).__name__}: {message}"
                    log.error("replication link to %s:%d failed unexpectedly",
                              self.master_host, self.master_port, exc_info=exc)
                elif message != self.link_error:
                    log.warning("replication link to %s:%d: %s", self.master_host,
                                self.master_port, message)
                self.link_error = message
            finally:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
                if self._ack_task is not None:
                    self._ack_task.cancel()
                    self._ack_task = None
                if self.link_state != "connect":
                    self.link_state = "connect"
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _client_ssl(self) -> ssl.SSLContext | None:
        cfg = self.host.config
        if not cfg.master_tls:
            return None
        ctx = ssl.create_default_context(cafile=cfg.tls_ca_cert_file)
        ctx.check_hostname = False  # a replica names its primary by address
        if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
            ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
        return ctx

    async def _sync_once(self, epoch: int) -> None:
        cfg = self.host.config
        host, port = self.master_host, self.master_port
        assert host is not None
        self.link_state = "connecting"
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=self._client_ssl(), limit=1 << 16),
            cfg.repl_timeout)
        self._writer = writer
        if cfg.masterauth is not None:
            args = [b"AUTH"] + ([cfg.masteruser.encode()] if cfg.masteruser else []) \
                + [cfg.masterauth.encode()]
            writer.write(_command(args))
            line = await self._line(reader)
            if not line.startswith(b"+"):
                raise ReplicationError("authentication to the primary failed: "
                                       + line.decode("utf-8", "replace"))
        # With failover, the address published in etcd: the primary's sync set names its
        # standbys by it (a replica behind a forwarder is reached at another port).
        announce = [b"REPLCONF", b"listening-port",
                    b"%d" % (cfg.failover_announce_port or self.host.port or 0)]
        if cfg.etcd is not None and cfg.failover_announce_host:
            announce += [b"ip-address", cfg.failover_announce_host.encode()]
        elif cfg.etcd is not None:
            announce += [b"ip-address", cfg.host.encode()]
        if cfg.etcd is not None and cfg.node_name is not None:
            # Who this replica is: the primary's sync set names its standbys by node name.
            announce += [b"node-name", cfg.node_name.encode()]
        writer.write(_command(announce))
        line = await self._line(reader)
        if not line.startswith(b"+"):
            raise ReplicationError("the primary refused REPLCONF: "
                                   + line.decode("utf-8", "replace"))
        replid = self.master_replid or "?"
        writer.write(_command([b"SHALEDB.PSYNC", replid.encode(), b"%d" % self.offset,
                               b"%d" % self.term, b"%d" % STREAM_VERSION]))
        line = await self._line(reader)
        parts = line.split()
        if parts and parts[0] == b"+FULLRESYNC" and len(parts) == 4:
            term = int(parts[3])
            self._check_link_term(term)
            self.link_state = "sync"
            self._current(epoch)
            await self._full_sync(reader, parts[1].decode("ascii", "replace"),
                                  int(parts[2]), term, epoch)
        elif parts and parts[0] == b"+CONTINUE" and len(parts) == 3:
            term = int(parts[2])
            self._check_link_term(term)
            self.partial_syncs_done += 1
        else:
            raise ReplicationError("the primary refused to sync: "
                                   + line.decode("utf-8", "replace"))
        self.link_state = "connected"
        self.link_error = ""
        log.info("replication link to %s:%d up at offset %d", host, port, self.offset)
        await self._tail_primary(reader, writer, epoch)

    def _check_link_term(self, term: int) -> None:
        if term < self.term:
            raise ReplicationError(f"the primary's term {term} is older than this node's "
                                   f"term {self.term}: refusing its stream (a stale primary)")
        if term > self.term:
            self.term = term

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        line = await asyncio.wait_for(reader.readline(), self.host.config.repl_timeout)
        if not line:
            raise EOFError("the primary closed the connection")
        self.last_io = time.monotonic()
        return line.rstrip(b"\r\n")

    async def _frame(self, reader: asyncio.StreamReader, epoch: int) -> tuple[int, bytes]:
        head = await self._line(reader)
        if not head.startswith(b"$") or not head[1:].isdigit():
            raise ReplicationError("the primary sent something that is not a stream frame: "
                                   + head[:80].decode("utf-8", "replace"))
        n = int(head[1:])
        if not 5 <= n <= MAX_FRAME:
            raise ReplicationError(f"stream frame of {n} bytes is out of bounds")
        data = await asyncio.wait_for(reader.readexactly(n + 2), self.host.config.repl_timeout)
        self._current(epoch)  # nothing is applied for a superseded link
        self.last_io = time.monotonic()
        body = data[:n - 4]
        if crc32c(body) != int.from_bytes(data[n - 4:n], "little"):
            raise ReplicationError("stream frame checksum mismatch")
        return body[0], body[1:]

    def _wipe_sync(self) -> None:
        """Delete every entry but the state record (a full resync starts from nothing)."""
        db = self.host.db
        start: bytes | None = None
        while True:
            ops: list[Any] = []
            last: bytes | None = None
            for k, _ in db.range(start, None, limit=WIPE_BATCH, include_expired=True):
                last = k
                if k != STATE_KEY:
                    ops += (OP_DELETE, k, 0, b"")
            if last is None:
                return
            if ops:
                db.apply_replicated(ops, None)
            start = last + b"\x00"  # past the tombstones just written

    def _has_data(self) -> bool:
        db = self.host.db
        return any(k != STATE_KEY
                   for k, _ in db.range(None, None, limit=2, include_expired=True))

    def _keep_discarded(self) -> None:
        """A node with data of its own (a former primary, a standalone node) keeps a copy
        of what the full resync discards under lost/ (docs/operations.md): writes past the
        new primary's fork point were never acknowledged in sync mode, but nothing is
        thrown away unseen."""
        db = self.host.db
        if not self._has_data():
            return
        lost = os.path.join(db.path, "lost")
        os.makedirs(lost, mode=0o700, exist_ok=True)
        path = os.path.join(lost, f"replication-discarded-{int(time.time() * 1000)}.msgpack")
        count = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                packer = msgpack.Packer()
                with db.snapshot() as snap:
                    for k, v in snap.range(None, None, include_expired=True):
                        if k != STATE_KEY:
                            f.write(packer.pack([k, v]))
                            count += 1
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            # (a full disk): no partial copy is left behind -- the sync is retried, and
            # nothing was deleted, since the copy comes first.
            os.unlink(path)
            raise
        log.warning("full resync from the primary discards this node's data: a copy of its "
                    "%d entries is in %s", count, path)

    async def _full_sync(self, reader: asyncio.StreamReader, replid: str, seq: int,
                         term: int, epoch: int) -> None:
        db = self.host.db
        ks = self.host.keyspace
        status = decode_state(db.get(STATE_KEY))[0]
        self.loading = True
        if status == STATUS_PRIMARY:
            await self.host.loop.run_in_executor(self._executor, self._keep_discarded)
            self._current(epoch)
        db.put(STATE_KEY, encode_state(STATUS_SYNCING, self.term, 0, "", 0), sync=True)
        self.master_replid, self.offset, self.data_term = "", 0, 0
        self.own_history = False
        self.sync_read_bytes = 0
        self._wipe_sync()
        entries = 0
        while True:
            kind, body = await self._frame(reader, epoch)
            if kind == FRAME_SNAPSHOT:
                flat = msgpack.unpackb(body, raw=True, use_list=True)
                ops: list[Any] = []
                for i in range(0, len(flat), 2):
                    if flat[i] != STATE_KEY:
                        ops += (OP_PUT, flat[i], 0, flat[i + 1])
                if ops:
                    db.apply_replicated(ops, None)
                    entries += len(ops) // 4
                self.sync_read_bytes += len(body)
                await asyncio.sleep(0)  # other clients (answered -LOADING) get a turn
                self._current(epoch)
            elif kind == FRAME_END:
                (end,) = _U64.unpack(body)
                if end != seq:
                    raise ReplicationError(f"snapshot ended at {end}, announced {seq}")
                break
            else:
                raise ReplicationError(f"unexpected frame {kind:#x} during the snapshot")
        self.term = max(self.term, term)
        db.apply_replicated([OP_PUT, STATE_KEY, 0,
                             encode_state(STATUS_REPLICA, self.term, seq, replid, term)],
                            None, sync=True)
        self.master_replid, self.offset, self.data_term = replid, seq, term
        ks.reload()
        self.loading = False
        self.full_syncs_done += 1
        log.info("full resync done: %d entries at sequence %d", entries, seq)

    async def _tail_primary(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, epoch: int) -> None:
        db = self.host.db
        ks = self.host.keyspace
        while True:
            kind, body = await self._frame(reader, epoch)
            if kind == FRAME_GROUP:
                (term,) = _U64.unpack_from(body)
                self._check_link_term(term)
                first, ops, ms = decode_group(body[8:])
                if first != self.offset + 1:
                    self.master_replid = ""  # force a full resync next time
                    raise ReplicationError(f"the stream skipped from {self.offset} to "
                                           f"{first}: resyncing fully")
                last = first + len(ops) // 4 - 1
                mine = [x for i in range(0, len(ops), 4) if ops[i + 1] != STATE_KEY
                        for x in ops[i:i + 4]]
                mine += (OP_PUT, STATE_KEY, 0,
                         encode_state(STATUS_REPLICA, self.term, last, self.master_replid,
                                      term))
                ks.settle()
                db.apply_replicated(mine, ms)
                self.offset, self.data_term = last, term
                self.groups_applied += 1
                ks.note_replicated(mine)
                self._schedule_ack(writer)
            elif kind == FRAME_HEARTBEAT:
                self._schedule_ack(writer, force=True)
            else:
                raise ReplicationError(f"unexpected frame {kind:#x} in the stream")

    def _schedule_ack(self, writer: asyncio.StreamWriter, force: bool = False) -> None:
        if (self._ack_task is None or self._ack_task.done()) and (
                force or self.offset != self._acked):
            self._ack_task = self.host.loop.create_task(self._ack(writer))

    async def _ack(self, writer: asyncio.StreamWriter) -> None:
        """fsync what was applied, then acknowledge it (the primary's WAIT and sync mode
        count durable copies); groups applied meanwhile wait for the next round."""
        loop = self.host.loop
        while True:
            offset = self.offset
            await loop.run_in_executor(self._executor, self.host.db.sync)
            if writer.is_closing():
                return
            writer.write(_command([b"REPLCONF", b"ACK", b"%d" % offset]))
            self._acked = offset
            if self.offset == offset:
                return

    # -- observability ---------------------------------------------------------------------------
    def info_fields(self) -> list[tuple[str, Any]]:
        db = self.host.db
        backlog = self.backlog
        fields: list[tuple[str, Any]] = [("role", self.role)]
        now = time.monotonic()
        if self.role == "slave":
            fields += [
                ("master_host", self.master_host),
                ("master_port", self.master_port),
                ("master_link_status", "up" if self.link_state == "connected" else "down"),
                ("master_last_io_seconds_ago",
                 int(now - self.last_io) if self.last_io else -1),
                ("master_sync_in_progress", int(self.loading)),
                ("master_sync_read_bytes", self.sync_read_bytes if self.loading else 0),
                ("slave_read_repl_offset", self.offset),
                ("slave_repl_offset", self.offset),
                ("slave_priority", 100),
                ("slave_read_only", 1),
                ("replica_announced", 1),
                ("shaledb_master_link_error", self.link_error or "none"),
                ("shaledb_full_syncs_done", self.full_syncs_done),
                ("shaledb_partial_syncs_done", self.partial_syncs_done),
                ("shaledb_groups_applied", self.groups_applied),
            ]
        feeds = list(self.feeds.values())
        fields.append(("connected_slaves", len(feeds)))
        last = db.last_sequence
        for i, f in enumerate(feeds):
            ip = f.addr.rsplit(":", 1)[0]
            fields.append((f"slave{i}", f"ip={ip},port={f.port},state={f.state},"
                           f"offset={max(f.ack, 0)},lag={int(now - f.ack_time)}"))
        fields += [
            ("master_failover_state", "no-failover"),
            ("master_replid", self.replid if self.role == "master" else self.master_replid),
            ("master_replid2", "0" * 40),
            ("master_repl_offset", last if self.role == "master" else self.offset),
            ("second_repl_offset", -1),
            ("repl_backlog_active", int(backlog is not None)),
            ("repl_backlog_size", backlog.limit if backlog is not None else 0),
            ("repl_backlog_first_byte_offset",
             backlog.first_seq + 1 if backlog is not None else 0),
            ("repl_backlog_histlen", backlog.size if backlog is not None else 0),
            ("sync_full", self.sync_full),
            ("sync_partial_ok", self.sync_partial_ok),
            ("sync_partial_err", self.sync_partial_err),
            ("shaledb_slow_replica_disconnections", self.slow_replica_disconnections),
            ("shaledb_repl_output_bytes", self.unsent_bytes()),
            ("shaledb_repl_output_limit_disconnections", self.output_limit_disconnections),
            ("shaledb_max_replicas_refused", self.max_replicas_refused),
            ("shaledb_repl_waiters", sum(1 for w in self._waiters if not w.future.done())),
            ("shaledb_repl_wal_reads", self.wal_reads),
            ("shaledb_term", self.term),
            ("shaledb_fenced_by_term", self.fenced_by),
            ("shaledb_sync_replicas", self.host.config.sync_replicas),
            ("shaledb_good_replicas", self.good_replicas()),
            ("shaledb_sync_visible_offset", self.visible),
            ("shaledb_sync_view_reads", self.view_reads),
            ("shaledb_sync_held_reads", self.held_reads),
        ]
        return fields

    def health_reason(self) -> str | None:
        """Why /health is degraded by replication: a replica without a working link to its
        primary (for longer than a reconnect), or loading a full resync."""
        if self.role != "slave":
            return None
        if self.loading:
            return "replica: loading a full resync from its primary"
        if self.link_state != "connected" and self.link_error:
            return (f"replica: no link to its primary {self.master_host}:{self.master_port}: "
                    f"{self.link_error}")
        return None

    def role_reply(self) -> list[Any]:
        if self.role == "slave":
            state = {"connect": "connect", "connecting": "connecting", "sync": "sync",
                     "connected": "connected"}[self.link_state]
            return [b"slave", (self.master_host or "").encode(), self.master_port,
                    state.encode(), self.offset]
        return [b"master", self.host.db.last_sequence,
                [[f.addr.rsplit(":", 1)[0].encode(), str(f.port).encode(),
                  str(max(f.ack, 0)).encode()] for f in self.feeds.values()]]


class ReplicaSyncGroup(SyncGroup):
    """``sync-replicas K``: a write's reply waits until K replicas acknowledged it durably
    and this node's own fsync covers it, whatever ``appendfsync`` says (as PostgreSQL's
    synchronous_commit=on flushes locally, then waits for the standbys). Failover counts on
    it: a takeover puts the old primary in the next sync set, as a holder of every write it
    acknowledged -- true after a power loss only if those writes were on its disk (review
    15b: a primary acknowledging from its page cache lost them with its machine, and a node
    without them was promoted). The fsync runs while the replicas apply, so it costs little
    latency. A reply that waits longer than ``sync-replicas-timeout`` becomes -NOREPLICAS
    (the write is applied here)."""

    def __init__(self, db: shaledb.DB, loop: asyncio.AbstractEventLoop,
                 executor: concurrent.futures.Executor, replication: Replication) -> None:
        super().__init__(db, loop, executor)
        self._replication = replication

    def synced(self, seq: int) -> None:
        self._replication.local_synced(seq)

    def barrier(self) -> asyncio.Future[None]:
        repl = self._replication
        cfg = repl.host.config
        need = cfg.sync_replicas
        timeout = cfg.sync_replicas_timeout
        acks = repl.wait_acks(need, timeout, standbys_only=True)
        local = super().barrier()
        out: asyncio.Future[None] = self._loop.create_future()

        def check(_: object = None) -> None:
            if out.done() or not acks.done() or not local.done():
                return
            if local.exception() is not None:
                out.set_exception(local.exception())  # type: ignore[arg-type]
                return
            got = acks.result()
            deadline = repl.lease_deadline
            if got >= need and deadline is not None and time.monotonic() >= deadline:
                # Failover: past its write deadline this primary may be replaced already,
                # the new one chosen by positions read once the lease was gone -- maybe
                # before a standby applied this write. Never acknowledge it now.
                out.set_exception(CommandError(
                    f"{NOREPLICAS_MESSAGE} The write (or a write this reply read) was applied "
                    "on this primary but its failover lease ended before the replicas "
                    "acknowledged it: it may be lost in a failover", prefix="NOREPLICAS"))
            elif got < need:
                # (A held read's reply too: the writes it read are the ones waited for.)
                out.set_exception(CommandError(
                    f"{NOREPLICAS_MESSAGE} The write (or a write this reply read) was "
                    f"applied on this primary but only {got} of the {need} replicas "
                    f"(sync-replicas) acknowledged it within {timeout:g} s: it may be lost "
                    "in a failover", prefix="NOREPLICAS"))
            else:
                out.set_result(None)

        acks.add_done_callback(check)
        local.add_done_callback(check)
        return out


class _BoundedPorts(dict[int, int]):
    """A dict of at most MAX_PENDING_PORTS entries (oldest dropped)."""

    def __setitem__(self, key: int, value: int) -> None:
        if key not in self and len(self) >= MAX_PENDING_PORTS:
            del self[next(iter(self))]
        super().__setitem__(key, value)


class _BoundedIps(dict[int, str]):
    """REPLCONF ip-address values: at most MAX_PENDING_PORTS entries (oldest dropped)."""

    def __setitem__(self, key: int, value: str) -> None:
        if key not in self and len(self) >= MAX_PENDING_PORTS:
            del self[next(iter(self))]
        super().__setitem__(key, value)


def _snapshot_chunk(it: Iterator[tuple[bytes, bytes]]) -> bytes | None:
    """The next snapshot chunk (msgpack [key, value, ...], about SNAPSHOT_CHUNK bytes), or
    None at the end (a worker thread)."""
    flat: list[bytes] = []
    size = 0
    for k, v in it:
        if k == STATE_KEY:
            continue
        flat += (k, v)
        size += len(k) + len(v) + 10
        if size >= SNAPSHOT_CHUNK:
            break
    if not flat:
        return None
    return bytes(msgpack.packb(flat, use_bin_type=True))


def _command(args: list[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


__all__ = ["STATE_KEY", "STREAM_VERSION", "ReplicaSyncGroup", "Replication",
           "ReplicationError", "decode_state", "encode_state", "frame"]
