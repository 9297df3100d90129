"""What the failover code needs from a node: the :class:`NodeControl` protocol.

The election (:mod:`.election`) drives replication only through these calls, so it can be
tested against :class:`MemoryNodeControl`; the server's adapter
(:class:`~.runner.ServerNodeControl`) runs them on the replication layer in-process (what
``SHALEDB.ROLE PRIMARY term`` / ``SHALEDB.ROLE REPLICA host port term`` run).

Fencing contract (docs/design.md, "Failover with etcd"): a primary accepts a write only while
``time.monotonic()`` is below the last deadline given to :meth:`NodeControl.renew_lease`; the
election computes that deadline from the *send* time of the lease renewal that etcd granted,
minus a safety margin, so the primary stops writing before etcd can let another node take
over -- even when the election thread itself is stalled (SIGSTOP, a long GC pause): the check
is made by the write path against the monotonic clock, not by a timer that might not run.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Protocol

from shaledb.errors import StorageError


class StaleTermError(Exception):
    """A role change named a term older than one the node has already seen."""


class NodeControl(Protocol):
    """The node as the election sees it. Calls come from the election's thread."""

    def promote(self, term: int) -> None:
        """Become the primary of ``term`` (writes allowed only until the lease deadline).
        Raises StaleTermError if the node has seen a newer term."""

    def renew_lease(self, deadline: float) -> None:
        """Writes are allowed until ``deadline`` (``time.monotonic()`` seconds)."""

    def fence(self) -> None:
        """Stop accepting writes now (the lease may have expired)."""

    def demote_to(self, host: str, port: int, term: int) -> None:
        """Stop accepting writes and replicate from ``host:port``, the primary of ``term``.
        Raises StaleTermError if the node has seen a newer term."""

    def set_sync_standbys(self, standbys: list[str]) -> None:
        """Sync mode: only acknowledgements of the replicas of these node names (as each
        announced itself in its replication handshake, one link per name) may count towards
        the K a write waits for (the election published them in etcd first)."""

    def narrow_sync_standbys(self, standbys: list[str]) -> int:
        """Sync mode, before members leave the sync set: from now on only these standbys'
        acknowledgements count (as :meth:`set_sync_standbys`); returns how many of them
        have durably acknowledged every write made before the first call that narrowed
        to this set (every write acknowledged before counted the old set)."""

    def replication_offset(self) -> int:
        """How far this node's copy of the replication stream goes."""

    def make_durable(self) -> None:
        """fsync everything this node holds (its position may count applied, unsynced
        records). Raises the engine's error when the disk fails."""

    def last_term(self) -> int:
        """The term of the newest record this node holds (0: none). Offsets of two nodes
        compare only within one history, so promotion compares (last_term, offset)."""

    def is_writable(self) -> bool:
        """Whether a write arriving now would be accepted."""


@dataclasses.dataclass
class MemoryNodeControl:
    """An in-memory node: the role, term and write deadline the election gave it, and a log
    of the calls (for tests, and the state behind the server's adapter)."""

    offset: int = 0
    record_term: int = 0
    clock: Callable[[], float] = time.monotonic
    role: str = "replica"
    term: int = 0
    deadline: float = 0.0
    primary: tuple[str, int] | None = None
    standbys: list[str] = dataclasses.field(default_factory=list)
    #: The standbys that hold every write so far (what narrow_sync_standbys counts).
    caught_up: set[str] = dataclasses.field(default_factory=set)
    calls: list[tuple[object, ...]] = dataclasses.field(default_factory=list)
    #: make_durable raises (a disk that fails its fsync).
    disk_failed: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def _check_term(self, term: int) -> None:
        if term < self.term:
            raise StaleTermError(f"term {term} is older than this node's term {self.term}")

    def promote(self, term: int) -> None:
        with self.lock:
            self._check_term(term)
            self.calls.append(("promote", term))
            self.role, self.term, self.primary = "primary", term, None

    def renew_lease(self, deadline: float) -> None:
        with self.lock:
            self.deadline = deadline

    def fence(self) -> None:
        with self.lock:
            self.calls.append(("fence",))
            self.deadline = 0.0

    def demote_to(self, host: str, port: int, term: int) -> None:
        with self.lock:
            self._check_term(term)
            self.calls.append(("demote_to", host, port, term))
            self.role, self.term, self.primary = "replica", term, (host, port)
            self.deadline = 0.0

    def set_sync_standbys(self, standbys: list[str]) -> None:
        with self.lock:
            self.calls.append(("set_sync_standbys", tuple(standbys)))
            self.standbys = list(standbys)

    def narrow_sync_standbys(self, standbys: list[str]) -> int:
        with self.lock:
            self.calls.append(("narrow_sync_standbys", tuple(standbys)))
            self.standbys = list(standbys)
            return len(self.caught_up & set(standbys))

    def replication_offset(self) -> int:
        return self.offset

    def make_durable(self) -> None:
        with self.lock:
            self.calls.append(("make_durable", self.offset))
            if self.disk_failed:
                raise StorageError("fsync failed (MemoryNodeControl.disk_failed)")

    def last_term(self) -> int:
        return self.record_term

    def is_writable(self) -> bool:
        with self.lock:
            return self.role == "primary" and self.clock() < self.deadline
