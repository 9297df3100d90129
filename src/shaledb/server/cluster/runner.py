"""Failover beside a running server: the election thread, the server's NodeControl adapter,
and the group reads that SENTINEL answers from.

``shaledb serve --etcd URL --group NAME --node-name NAME`` builds one
:class:`FailoverRunner`; the server starts it once it listens and closes it first on
shutdown (resigning: the lease is revoked so another node takes over at once).

The write fence: :meth:`ServerNodeControl.is_writable` is what the server's turn commit
asks before every write batch (``TurnCommit.fence`` in exec/dispatch.py), so a node writes
only while it holds the leader key and before its deadline; otherwise the writes of the turn
are answered ``-READONLY`` (redis-py's Sentinel client then re-asks for the primary).

WIRING FOR THE LEAD (branch ``repl``): the adapter's role changes only record the role here
and log; each place marked ``TODO(repl)`` must call the replication layer
(``SHALEDB.ROLE PRIMARY term`` / ``SHALEDB.ROLE REPLICA host port term``, the sync-standby
gate, the replication offset and the term of the newest record) on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

from .control import StaleTermError
from .election import Election, ElectionConfig
from .etcd import EtcdClient
from .group import GroupState, read_group

log = logging.getLogger("shaledb.failover")

class ServerNodeControl:
    """The server as the election drives it. Thread-safe: the election calls it from its
    thread; the write path reads :meth:`is_writable` on the event loop."""

    def __init__(self, offset: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._offset = offset
        self._clock = clock
        self._lock = threading.Lock()
        self.role = "replica"
        self.term = 0
        #: Monotonic time before which this node may write (0: never).
        self.deadline = 0.0
        self.primary: tuple[str, int] | None = None
        self.standbys: list[tuple[str, int]] = []

    def _check_term(self, term: int) -> None:
        if term < self.term:
            raise StaleTermError(f"term {term} is older than this node's term {self.term}")

    def promote(self, term: int) -> None:
        with self._lock:
            self._check_term(term)
            self.role, self.term, self.primary = "primary", term, None
        # TODO(repl): SHALEDB.ROLE PRIMARY term -- stop replicating, stamp new records with
        # `term`, persist it.
        log.warning("failover: this node is now the primary of term %d", term)

    def renew_lease(self, deadline: float) -> None:
        self.deadline = deadline  # one float store: read without the lock by is_writable

    def fence(self) -> None:
        self.deadline = 0.0

    def demote_to(self, host: str, port: int, term: int) -> None:
        with self._lock:
            self._check_term(term)
            self.deadline = 0.0
            self.role, self.term, self.primary = "replica", term, (host, port)
        # TODO(repl): SHALEDB.ROLE REPLICA host port term -- replicate from host:port,
        # refusing a stream with an older term; keep (under lost/) any unacknowledged
        # records past the fork point.
        log.warning("failover: replicating from %s:%d (term %d)", host, port, term)

    def set_sync_standbys(self, standbys: list[tuple[str, int]]) -> None:
        with self._lock:
            self.standbys = list(standbys)
        # TODO(repl): only acknowledgements of these replicas count towards sync-replicas.

    def replication_offset(self) -> int:
        # TODO(repl): the replication offset; until then the engine's last sequence number.
        return self._offset()

    def last_term(self) -> int:
        # TODO(repl): the term of the newest record held; until then the role's term.
        return self.term

    def is_writable(self) -> bool:
        return self.role == "primary" and self._clock() < self.deadline


class FailoverRunner:
    """The election of this node plus reads of its group for SENTINEL."""

    def __init__(self, url: str, config: ElectionConfig, control: ServerNodeControl,
                 timeout: float = 2.0) -> None:
        self.group = config.group
        self.control = control
        self.election = Election(EtcdClient(url, timeout=timeout), control, config)
        #: A second client: SENTINEL reads must not queue behind an election step.
        self._reader = EtcdClient(url, timeout=timeout)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="shaledb-sentinel")
        self._inflight: asyncio.Future[GroupState] | None = None

    def start(self) -> None:
        self.election.start()

    def close(self) -> None:
        self.election.close(resign=True)
        self.election.client.close()
        self._pool.shutdown(wait=True)
        self._reader.close()

    def read_state(self) -> asyncio.Future[GroupState]:
        """The group as etcd holds it now, read off the event loop. Requests that arrive
        while a read is in flight share it (one read at a time, however many clients)."""
        pending = self._inflight
        if pending is not None and not pending.done():
            return pending
        loop = asyncio.get_running_loop()
        fut = asyncio.wrap_future(self._pool.submit(read_group, self._reader, self.group),
                                  loop=loop)
        self._inflight = fut
        return fut
