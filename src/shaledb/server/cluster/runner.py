"""Failover beside a running server: the election thread, the server's NodeControl adapter,
and the group reads that SENTINEL answers from.

``shaledb serve --etcd URL --group NAME --node-name NAME`` builds one
:class:`FailoverRunner`; the server starts it once it listens and closes it first on
shutdown (resigning: the lease is revoked so another node takes over at once).

The write fence is replication's (``Replication.can_write``): role primary, not fenced by a
newer term, and before the lease deadline this adapter stores from the election's renewals.
The dispatcher, the turn's commit (``TurnCommit.fence``), the keyspace's background writers
(active expiry, the purger) and :meth:`ServerNodeControl.is_writable` all ask it, so a node
writes only while it holds the leader key and before its deadline; otherwise writes are
answered ``-READONLY`` (redis-py's Sentinel client then re-asks for the primary).

Role changes run the replication layer in-process (``Replication.become_primary`` /
``become_replica``, what ``SHALEDB.ROLE`` calls) on the server's event loop; the election
thread waits for them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Final, Protocol

from ..errors import CommandError
from .control import StaleTermError
from .election import Election, ElectionConfig
from .etcd import EtcdClient
from .group import GroupState, read_group

log = logging.getLogger("shaledb.failover")

class ReplicationControl(Protocol):
    """What the adapter drives of the server's replication (``exec/replication.py``)."""

    lease_deadline: float | None
    sync_standbys: frozenset[str] | None

    def become_primary(self, term: int | None) -> None: ...
    def become_replica(self, host: str, port: int, term: int | None) -> None: ...
    def can_write(self) -> bool: ...
    def position(self) -> tuple[int, int]: ...
    def make_durable(self) -> None: ...
    def standbys_acked(self, target: int) -> int: ...


#: Seconds the election thread waits for a role change on the event loop.
ROLE_CHANGE_TIMEOUT: Final = 30.0


class ServerNodeControl:
    """The server as the election drives it. Thread-safe: the election calls it from its
    thread; role changes run on the event loop (``loop``), the fence is read anywhere."""

    def __init__(self, replication: ReplicationControl,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._repl = replication
        self._loop = loop
        self._lock = threading.Lock()
        self.role = "replica"
        self.term = 0
        self.primary: tuple[str, int] | None = None
        self.standbys: list[str] = []
        #: The set the sync standbys were narrowed to, and the last sequence then: every
        #: write acknowledged before the narrowing is at or below it.
        self._narrowed: tuple[frozenset[str], int] | None = None

    @property
    def deadline(self) -> float:
        """Monotonic time before which this node may write (0: never)."""
        return self._repl.lease_deadline or 0.0

    def _check_term(self, term: int) -> None:
        if term < self.term:
            raise StaleTermError(f"term {term} is older than this node's term {self.term}")

    def _on_loop(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the event loop and wait for it; a refused term (-STALETERM)
        becomes StaleTermError."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                call()
                done.set_result(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the election thread
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        try:
            done.result(ROLE_CHANGE_TIMEOUT)
        except CommandError as exc:
            if exc.prefix == "STALETERM":
                raise StaleTermError(str(exc)) from exc
            raise

    def promote(self, term: int) -> None:
        with self._lock:
            self._check_term(term)
            # The lease deadline comes with the renew_lease that follows: no write before.
            self._repl.lease_deadline = 0.0
            if self._repl.sync_standbys is not None:
                # Sync mode: the new term's standbys come from the election (after etcd
                # holds them); until then no acknowledgement counts.
                self._repl.sync_standbys = frozenset()
            self._on_loop(lambda: self._repl.become_primary(term))
            self.role, self.term, self.primary = "primary", term, None
        log.warning("failover: this node is now the primary of term %d", term)

    def renew_lease(self, deadline: float) -> None:
        self._repl.lease_deadline = deadline  # one float store: the fence reads it lock-free

    def fence(self) -> None:
        self._repl.lease_deadline = 0.0

    def demote_to(self, host: str, port: int, term: int) -> None:
        with self._lock:
            self._check_term(term)
            self._repl.lease_deadline = 0.0
            self._on_loop(lambda: self._repl.become_replica(host, port, term))
            self.role, self.term, self.primary = "replica", term, (host, port)
        log.warning("failover: replicating from %s:%d (term %d)", host, port, term)

    def set_sync_standbys(self, standbys: list[str]) -> None:
        with self._lock:
            self.standbys = list(standbys)
            # One reference store, read on the event loop by the sync-replicas barrier.
            self._repl.sync_standbys = frozenset(standbys)

    def narrow_sync_standbys(self, standbys: list[str]) -> int:
        with self._lock:
            self.standbys = list(standbys)
            counted: concurrent.futures.Future[int] = concurrent.futures.Future()
            repl = self._repl

            def run() -> None:
                # On the loop, where barriers resolve: every barrier resolved after the
                # narrowing counts only ``standbys``, and every write acknowledged before
                # it is at or below the last sequence then (kept while the set stays
                # narrowed: under a steady load no standby is ever at the newest sequence).
                try:
                    narrowed = frozenset(standbys)
                    if self._narrowed is None or self._narrowed[0] != narrowed \
                            or repl.sync_standbys != narrowed:
                        repl.sync_standbys = narrowed
                        self._narrowed = (narrowed, repl.position()[1])
                    counted.set_result(repl.standbys_acked(self._narrowed[1]))
                except BaseException as exc:  # noqa: BLE001 - handed to the election thread
                    counted.set_exception(exc)

            self._loop.call_soon_threadsafe(run)
            return counted.result(ROLE_CHANGE_TIMEOUT)

    def replication_offset(self) -> int:
        return self._repl.position()[1]

    def make_durable(self) -> None:
        self._repl.make_durable()

    def last_term(self) -> int:
        return self._repl.position()[0]

    def is_writable(self) -> bool:
        return self._repl.can_write()


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
