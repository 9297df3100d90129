"""Clients blocked on keys (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN, BZPOPMAX,
BZMPOP; later XREAD BLOCK), and waking them when a committed write makes a key ready.

A blocking command that finds nothing to pop registers its client here with an *attempt*
(a closure that runs the command again, on one key, in a given keyspace transaction) and
returns the :class:`~shaledb.server.exec.deferred.Deferred` this queue resolves; the
connection then runs nothing more of that client until it is resolved. Every committed
write reports its keys through the keyspace's ``on_write`` (as WATCH's does): a key with
waiters becomes *ready*. :class:`~shaledb.server.exec.dispatch.TurnCommit`, once its batch
is committed, calls :meth:`BlockingQueue.serve` in the (now empty) shared transaction: the
waiters of each ready key are tried in the order they blocked (first blocked, first
served, as Redis), each until one finds nothing; their writes are committed as one more
batch, and only then are their replies released (behind an fsync under ``appendfsync
always``: :class:`~shaledb.server.exec.deferred.Written`). So a client is woken only by a
committed push, never by one inside an EXEC that has not run yet, and its pop is durable
like any write. A push inside MULTI wakes at EXEC's commit; a blocking command inside MULTI
never blocks (the handler answers as for a timeout). DEL, expiry or a type change of the
key wake nobody (an attempt that finds no list leaves the client blocked); SWAPDB and
FLUSHDB make every key of the database ready (a list swapped in serves its waiters).

Bounds: one waiter per client (a blocked client runs no other command), each listed under
at most its command's keys; a waiter leaves every list when it is served, times out, or its
client disconnects (:meth:`cancel`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from ..errors import CommandError
from ..keyspace.keyspace import KeyspaceTxn
from .client import ClientState
from .deferred import Deferred, Written

log = logging.getLogger("shaledb.server")


class _NotReady:
    def __repr__(self) -> str:
        return "NOT_READY"


#: What an attempt returns when its key still has nothing for it (the client stays blocked).
NOT_READY: Final = _NotReady()

#: An attempt: ``attempt(txn, key) -> reply`` or NOT_READY; a CommandError it raises is the
#: client's reply (BRPOPLPUSH onto a key of another type), its own writes taken back.
Attempt = Callable[[KeyspaceTxn, bytes], Any]


class Waiter:
    """One blocked client."""

    __slots__ = ("client", "db", "keys", "attempt", "future", "timer", "timeout_reply", "argv")

    def __init__(self, client: ClientState, db: int, keys: list[bytes], attempt: Attempt,
                 future: asyncio.Future[Any], timeout_reply: Any) -> None:
        self.client = client
        self.db = db
        self.keys = keys
        self.attempt = attempt
        self.future = future
        self.timer: asyncio.TimerHandle | None = None
        self.timeout_reply = timeout_reply
        #: The blocked command as the client sent it (the slow log names it when served).
        self.argv: list[bytes] = []

    def __repr__(self) -> str:
        return f"<Waiter client={self.client.id} db={self.db} keys={len(self.keys)}>"


class BlockingQueue:
    """(db, key) -> the clients blocked on it, in the order they blocked."""

    def __init__(self) -> None:
        self._queues: dict[tuple[int, bytes], collections.deque[Waiter]] = {}
        #: Keys with waiters written since the last :meth:`serve`, in the order written.
        self._ready: dict[tuple[int, bytes], None] = {}
        self._by_client: dict[int, Waiter] = {}
        #: Clients served, timed out (for INFO and tests).
        self.served = 0
        self.timeouts = 0
        #: Called with each served waiter and how long its attempt ran (ns): the dispatcher
        #: logs the original command in the slow log then, as Redis does on unblocking.
        self.on_served: Callable[[Waiter, int], None] | None = None

    def name_command(self, client: ClientState, argv: list[bytes]) -> None:
        """Remember the command ``client`` is blocked in (for :attr:`on_served`)."""
        w = self._by_client.get(client.id)
        if w is not None:
            w.argv = argv

    def __len__(self) -> int:
        """Blocked clients."""
        return len(self._by_client)

    def is_blocked(self, client: ClientState) -> bool:
        return client.id in self._by_client

    @property
    def ready(self) -> bool:
        """Whether a committed write made a key with waiters ready."""
        return bool(self._ready)

    def block(self, client: ClientState, db: int, keys: list[bytes], timeout: float,
              attempt: Attempt, timeout_reply: Any) -> Deferred:
        """Block ``client`` on ``keys`` of ``db`` for ``timeout`` seconds (0: forever); the
        Deferred resolves to an attempt's reply, or to ``timeout_reply``."""
        loop = asyncio.get_running_loop()
        if client.id in self._by_client:  # cannot be: a blocked client runs nothing
            raise CommandError("the client is already blocked")
        w = Waiter(client, db, list(dict.fromkeys(keys)), attempt, loop.create_future(),
                   timeout_reply)
        for k in w.keys:
            self._queues.setdefault((db, k), collections.deque()).append(w)
        self._by_client[client.id] = w
        if timeout > 0:
            w.timer = loop.call_later(timeout, self._timed_out, w)
        return Deferred(w.future, blocking=True)

    def _remove(self, w: Waiter) -> None:
        self._by_client.pop(w.client.id, None)
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        for k in w.keys:
            q = self._queues.get((w.db, k))
            if q is not None:
                try:
                    q.remove(w)
                except ValueError:
                    pass
                if not q:
                    del self._queues[(w.db, k)]
                    self._ready.pop((w.db, k), None)

    def _timed_out(self, w: Waiter) -> None:
        w.timer = None
        self._remove(w)
        self.timeouts += 1
        if not w.future.done():
            w.future.set_result(w.timeout_reply)

    def cancel(self, client: ClientState) -> None:
        """``client`` disconnected: forget its waiter (nothing will be sent)."""
        w = self._by_client.get(client.id)
        if w is not None:
            self._remove(w)
            if not w.future.done():
                w.future.cancel()

    def unblock(self, client_id: int, error: CommandError | None) -> bool:
        """CLIENT UNBLOCK: answer ``client_id``'s blocked command now, as its timeout would
        (``error`` None) or with ``error``; whether it was blocked."""
        w = self._by_client.get(client_id)
        if w is None:
            return False
        self._remove(w)
        if not w.future.done():
            w.future.set_result(w.timeout_reply if error is None else error)
        return True

    def touch(self, keys: Iterable[tuple[int, bytes]]) -> None:
        """``keys`` were written by a commit (the keyspace's ``on_write``)."""
        if not self._queues:
            return
        queues, ready = self._queues, self._ready
        for k in keys:
            if k in queues:
                ready[k] = None

    def touch_db(self, db: int | None) -> None:
        """Database ``db`` (None: all) was flushed or swapped: every key of it with waiters
        is ready (a list swapped in serves them; an attempt on a missing key changes
        nothing)."""
        for k in self._queues:
            if db is None or k[0] == db:
                self._ready[k] = None

    def serve(self, txn: KeyspaceTxn) -> list[tuple[Waiter, Any]]:
        """Run the attempts of the waiters of every ready key in ``txn``, in the order they
        blocked, each key until one finds nothing; the served waiters leave the queue. The
        caller commits ``txn`` and then :meth:`resolve`\\ s them."""
        served: list[tuple[Waiter, Any]] = []
        ready, self._ready = self._ready, {}
        for k in ready:
            q = self._queues.get(k)
            while q:
                w = q[0]
                mark = txn.mark()
                start = time.perf_counter_ns()
                try:
                    reply = w.attempt(txn, k[1])
                except CommandError as exc:
                    txn.undo(mark)
                    reply = exc
                except Exception as exc:  # noqa: BLE001 - a bug: answer, keep the others
                    txn.undo(mark)
                    log.error("internal error waking a blocked client", exc_info=exc)
                    reply = CommandError(f"internal error waking the blocked command "
                                         f"({type(exc).__name__}); it had no effect, see "
                                         "the server log")
                if reply is NOT_READY:
                    txn.undo(mark)
                    break
                self._remove(w)
                self.served += 1
                served.append((w, reply))
                if self.on_served is not None:
                    self.on_served(w, time.perf_counter_ns() - start)
        return served

    @staticmethod
    def resolve(served: list[tuple[Waiter, Any]], error: CommandError | None) -> None:
        """Release the replies of ``served`` once their writes are committed (``error``:
        the commit failed, and each gets that error instead)."""
        for w, reply in served:
            if not w.future.done():
                w.future.set_result(error if error is not None else Written(reply))


__all__ = ["NOT_READY", "Attempt", "BlockingQueue", "Waiter"]
