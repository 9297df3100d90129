"""Dispatch: from a request (a list of byte strings) to a reply.

For every request, in this order: look the command up (``-ERR unknown command``), check its
arity, check authentication (``-NOAUTH``) and the user's ACL permissions for the command and
its keys (``-NOPERM``; commands flagged ``no-auth`` -- AUTH, HELLO, QUIT, RESET -- are open
to every user, so a client can always log in as someone else), queue it when the client is
inside MULTI, else run its handler in the keyspace transaction the connection passes in. A
handler error takes back every write the command buffered.

The write commands of every client served in one event-loop turn share that transaction, so
they become one write batch (one WAL record) committed at the end of the turn
(:class:`TurnCommit`). Before any command without the ``write`` flag runs, the buffered
writes are committed: reads, EXEC and WATCH only ever see committed state. A write command
may read buffered writes (SETNX, INCR), so every command run while writes are buffered --
whether it wrote or not -- has its reply wait for their commit; if the commit fails, those
replies, and only those, are turned into errors (:class:`WriteGroup`).

Every command that runs is timed and counted (:mod:`shaledb.server.admin.stats`, one call) and,
when slow enough, logged (:mod:`shaledb.server.admin.slowlog`); a refused one counts as rejected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any, Final, Protocol

from ...errors import (
    DescriptorsExhaustedError,
    InvalidArgument,
    ReadOnlyError,
    ShaleError,
    StorageError,
)
from ..admin.stats import ServerStats
from ..errors import FENCED_MESSAGE, AuthRequiredError, CommandError, wrong_arity
from ..keyspace.keyspace import Keyspace
from ..net.protocol import QUEUED
from .blocking import BlockingQueue, Waiter
from .client import ClientState
from .context import Command, Context, Services
from .deferred import Deferred
from .replication import READ_HELD, READ_VIEW

#: Commands a RESP2 client may run while subscribed (Redis' processCommand).
#: Commands that read no keys: they run without settling the turn's buffered writes (INFO's
#: keyspace and replication figures are those of the committed state).
NO_DATA: Final = frozenset(("ping", "echo", "info", "time"))

SUBSCRIBED_OK: Final = frozenset((
    "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
    "ping", "quit", "reset"))


def subscribed_mode_error(name: str) -> CommandError:
    """Redis 7's error for another command from a RESP2 client in subscribed mode."""
    return CommandError(f"Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / "
                        f"PING / QUIT / RESET are allowed in this context")


class TurnWaiter(Protocol):
    """A connection whose replies wait for the commit at the end of the turn."""

    def turn_committed(self) -> None: ...


log = logging.getLogger("shaledb.server")

#: Commands that run at once even inside MULTI (they control the transaction itself).
_NOT_QUEUED: Final = frozenset((b"exec", b"discard", b"multi", b"watch", b"quit", b"reset"))


def unknown_command(argv: list[bytes]) -> CommandError:
    """Redis' error for a command it does not know."""
    name = argv[0][:128].decode("utf-8", "replace")
    args = "".join(f"'{a[:128].decode('utf-8', 'replace')}' " for a in argv[1:20])
    return CommandError(f"unknown command '{name}', with args beginning with: {args}")


def engine_error(exc: ShaleError) -> CommandError:
    """The reply for an engine error met while running a command."""
    if isinstance(exc, CommandError):
        return exc  # the keyspace's own refusal (READONLY on a replica): as it is
    if isinstance(exc, DescriptorsExhaustedError):
        # Nothing was written and the database stays writable: the client may retry.
        return CommandError(f"the server is out of file descriptors; nothing was written, "
                            f"retry the command ({exc})", prefix="TRYAGAIN")
    if isinstance(exc, (ReadOnlyError, StorageError)):
        return CommandError(f"the database refuses writes: {exc}", prefix="MISCONF")
    if isinstance(exc, InvalidArgument):
        return CommandError(str(exc))
    return CommandError(f"{type(exc).__name__}: {exc}")


def internal_error(cmd: Command, argv: list[bytes], exc: Exception) -> CommandError:
    """The reply for a bug in a command handler. Caught at this boundary on purpose: the
    command's buffered writes are taken back (they would otherwise be committed with the
    other clients' writes of the turn), the client gets an error instead of a dropped
    connection, and the traceback goes to the log."""
    log.error("internal error in command %r (%d arguments)", cmd.name, len(argv),
              exc_info=exc)
    return CommandError(f"internal error in '{cmd.name}' ({type(exc).__name__}); the "
                        "command had no effect, see the server log")


def _allowed_while_busy(cmd: Command, argv: list[bytes]) -> bool:
    """What runs while a script is past busy-reply-threshold: SCRIPT KILL, FUNCTION KILL,
    SHUTDOWN NOSAVE, and the keyless commands Redis flags ``allow-busy`` (AUTH, HELLO,
    MULTI ...). Everything else gets ``-BUSY``."""
    name = cmd.name
    if name in ("script", "function"):
        return len(argv) > 1 and argv[1].lower() in (b"kill", b"stats")
    if name == "shutdown":
        return any(a.lower() == b"nosave" for a in argv[1:])
    return "allow-busy" in cmd.flags and cmd.first_key == 0 and cmd.key_finder is None


#: The error of writes refused by the failover fence (Redis' READONLY: clients that follow
#: a Sentinel, like redis-py's, reconnect to the primary on it).
class TurnCommit:
    """The writes of one event-loop turn, from every client, as one keyspace transaction.

    Redis appends the writes of all clients served in one loop iteration to its AOF before
    it sends their replies; this is the same shape. Each connection runs its requests into
    the one shared keyspace transaction and parks its replies here (:meth:`hold`); the first
    one schedules :meth:`commit` at the end of the turn (``loop.call_soon`` runs after the
    I/O callbacks of this turn). One commit -- one write batch, one WAL record -- then
    settles every parked batch and their connections send the replies, one send per
    connection. A command that must see committed state (anything without the
    ``write`` flag) commits the turn first, at once.
    """

    __slots__ = ("txn", "stats", "_loop", "_open", "_waiting", "_scheduled", "commits",
                 "blocking", "frozen", "fence")

    def __init__(self, keyspace: Keyspace, loop: asyncio.AbstractEventLoop,
                 stats: ServerStats | None = None,
                 blocking: BlockingQueue | None = None) -> None:
        self.txn = keyspace.begin()
        #: Clients blocked on keys: served once a commit made their keys ready.
        self.blocking = blocking
        #: Where the error replies of a failed commit are counted.
        self.stats = stats
        self._loop = loop
        #: Groups with writes buffered in ``txn`` (their pending replies await the commit).
        self._open: list[WriteGroup] = []
        #: Connections whose replies wait for the commit, in the order they parked them.
        self._waiting: list[TurnWaiter] = []
        self._scheduled = False
        #: Commits that wrote (for tests and stats).
        self.commits = 0
        #: A script past busy-reply-threshold is still writing into ``txn`` from the Lua
        #: thread (exec/scripting.py): nothing is committed until it ends (the other
        #: clients' replies meanwhile, all -BUSY, are still released).
        self.frozen = False
        #: Automatic failover: whether this node may write now (it holds the leader lease
        #: and its deadline has not passed). Asked right before every commit, so no write
        #: becomes durable on a fenced primary, whatever command or script buffered it.
        self.fence: Callable[[], bool] | None = None

    def opened(self, group: WriteGroup) -> None:
        """``group`` buffered its first write in the shared transaction."""
        self._open.append(group)

    def hold(self, conn: TurnWaiter) -> None:
        """Send ``conn``'s parked replies after the commit at the end of this turn."""
        self._waiting.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.commit)

    def commit(self) -> None:
        """Commit the buffered writes of every client as one batch; when that fails, the
        commands that made them answer the engine's error instead of their reply. Then
        release the parked replies."""
        self._scheduled = False
        if self.frozen:
            waiting, self._waiting = self._waiting, []
            for conn in waiting:
                conn.turn_committed()
            return
        groups, self._open = self._open, []
        error = self._commit_txn()
        for group in groups:
            group.settle(error)
        blocking = self.blocking
        if error is None and blocking is not None:
            # Clients blocked on keys this commit wrote pop now, in the order they blocked,
            # and their writes commit as one more batch before their replies go. A woken
            # BLMOVE's push may wake others: each round serves at least one waiter or
            # ends, so this ends.
            while blocking.ready:
                served = blocking.serve(self.txn)
                if self.stats is not None:  # an attempt's error is an error reply too
                    for w, reply in served:
                        if isinstance(reply, CommandError):
                            self.stats.error_reply(reply.prefix)
                            # ... and a failed call of the blocked command (client.cmd:
                            # a blocked client ran nothing since).
                            unit = self.stats.commands.get(w.client.cmd)
                            if unit is not None:
                                unit.failed += 1
                blocking.resolve(served, self._commit_txn())
        waiting, self._waiting = self._waiting, []
        for conn in waiting:
            conn.turn_committed()


    def settle_reply(self, reply: Any) -> Any:
        """Commit the buffered writes now; ``reply`` (of the command that made them: a
        script that ran past the busy threshold), or the commit's error."""
        group = WriteGroup(self)
        group.replies.append(reply)
        if self.txn.dirty:
            group.add_pending(0)
        self.commit()
        return group.replies[0]

    def _commit_txn(self) -> CommandError | None:
        """Commit the shared transaction (when dirty); the error its commands answer when
        that fails."""
        if not self.txn.dirty:
            return None
        fence = self.fence
        if fence is not None and not fence():
            self.txn.undo(0)
            return CommandError(FENCED_MESSAGE, prefix="READONLY")
        try:
            self.txn.commit()
            self.commits += 1
        except ShaleError as exc:
            return engine_error(exc)
        except Exception as exc:  # noqa: BLE001 - a bug: still answer every client
            # Without this the parked replies were never released: the clients of the
            # turn waited forever (met through a nonce check of the encryption branch).
            log.error("internal error committing the writes of a turn", exc_info=exc)
            self.txn.undo(0)  # never apply them later with another turn's writes
            return CommandError(
                f"internal error while committing the writes ({type(exc).__name__}); "
                "whether they were applied is unknown: read the keys back; see the "
                "server log")
        return None


class WriteGroup:
    """The replies of one batch of requests of one connection, and the positions of those
    that depend on the commit of the shared transaction."""

    __slots__ = ("turn", "txn", "pending", "replies", "protocols", "wrote")

    def __init__(self, turn: TurnCommit) -> None:
        self.turn = turn
        self.txn = turn.txn
        #: Indexes in ``replies`` of commands whose writes are buffered in ``txn``.
        self.pending: list[int] = []
        self.replies: list[Any] = []
        #: The RESP version each reply is encoded in (HELLO changes it mid-pipeline).
        self.protocols: list[int] = []
        #: Whether writes of this group were committed (their replies wait for an fsync
        #: under ``appendfsync always``).
        self.wrote = False

    def add_pending(self, index: int) -> None:
        """Reply ``index`` depends on writes buffered in the shared transaction."""
        if not self.pending:
            self.turn.opened(self)
        self.pending.append(index)

    def commit(self) -> None:
        """Commit the shared transaction now (settling this group and every other)."""
        self.turn.commit()

    def settle(self, error: CommandError | None) -> None:
        """The shared transaction was committed (``error`` None) or failed."""
        if error is None:
            self.wrote = self.wrote or bool(self.pending)
        else:
            for i in self.pending:
                self.replies[i] = error
            if self.turn.stats is not None and self.pending:
                self.turn.stats.error_reply(error.prefix, len(self.pending))
        self.pending.clear()


class Route:
    """What :meth:`Dispatcher.execute` asks of a command on every call, worked out once
    from its flags and categories when the table is given (sets and tuples of words are
    not searched per request)."""

    __slots__ = ("key", "cmd", "min_args", "max_args", "open", "reads", "no_data",
                 "monitored", "subscribed_ok", "queued", "skip_slowlog", "fast", "plain")

    def __init__(self, key: bytes, cmd: Command) -> None:
        #: The command's key in the table (its lower-case name).
        self.key = key
        self.cmd = cmd
        #: Arity as a range of argument counts (name included).
        self.min_args = cmd.arity if cmd.arity >= 0 else -cmd.arity
        self.max_args = cmd.arity if cmd.arity >= 0 else MAX_ARGS
        #: Flagged ``no-auth``: open to every client, logged in or not.
        self.open = "no-auth" in cmd.flags
        #: Must see committed state: settles the turn's buffered writes first. Not the
        #: commands that read no data: a batch that committed holds its replies, so a PING
        #: or INFO in the turn of another client's write waited for its fsync, and in sync
        #: mode for its acknowledgements (-NOREPLICAS past the timeout; review 15c).
        self.no_data = cmd.name in NO_DATA
        self.reads = ("write" not in cmd.flags or "dangerous" in cmd.categories) \
            and not self.no_data
        #: Shown to MONITOR.
        self.monitored = "admin" not in cmd.categories
        self.subscribed_ok = cmd.name in SUBSCRIBED_OK
        #: Queued inside MULTI (all but the commands that control the transaction).
        self.queued = cmd.name.encode() not in _NOT_QUEUED
        self.skip_slowlog = "skip-slowlog" in cmd.flags
        self.fast = "fast" in cmd.flags
        #: No subcommands: the command's name is its statistics and ACL unit.
        self.plain = not cmd.subcommands


#: More arguments than any request can have (the reader's MAX_MULTIBULK is 1,048,576).
MAX_ARGS: Final = 1 << 62


class Dispatcher:
    """Runs requests against a command table (built by :mod:`shaledb.server.commands`, given
    by the server); handlers get ``services``, not the server."""

    def __init__(self, services: Services, table: dict[bytes, Command]) -> None:
        self.services = services
        self.table = table
        self.stats = services.command_stats
        self.pubsub = services.pubsub
        services.blocking.on_served = self._served
        #: Routes by the command name as sent (built on first use from the table, at most
        #: two spellings a command up front: lower and upper case, so most requests need no
        #: ``lower()`` copy); checked against the table on every use, which may change.
        self._routes: dict[bytes, Route] = {}
        for name, cmd in table.items():
            route = Route(name, cmd)
            self._routes[name] = route
            self._routes[name.upper()] = route

    def _route(self, name: bytes) -> Route | None:
        """The route of command ``name`` (any case) as the table says now, or None."""
        key = name.lower()
        cmd = self.table.get(key)
        if cmd is None:
            return None
        route = self._routes.get(key)
        if route is None or route.cmd is not cmd:  # (other spellings are not cached)
            route = Route(key, cmd)
            self._routes[key] = self._routes[key.upper()] = route
        return route

    def execute(self, client: ClientState, argv: list[bytes], group: WriteGroup) -> None:
        """Run ``argv`` and append its reply to ``group.replies`` (an error reply is a
        CommandError instance)."""
        replies = group.replies
        route = self._routes.get(argv[0])
        if route is None or self.table.get(route.key) is not route.cmd:
            route = self._route(argv[0])
        in_multi = client.multi is not None
        error: CommandError | None = None
        cmd: Command | None = None
        if route is None:
            error = unknown_command(argv)
        else:
            cmd = route.cmd
            if not route.min_args <= len(argv) <= route.max_args:
                error = wrong_arity(cmd.name)
            elif self.services.scripts.busy and not _allowed_while_busy(cmd, argv):
                error = self.services.scripts.busy_error()
            elif not route.open:
                if not client.authenticated:
                    error = AuthRequiredError("Authentication required.")
                elif not client.user.unrestricted:
                    # Redis logs a denial queued inside MULTI with the multi context.
                    error = self.services.acl.check(
                        client, cmd, argv, "toplevel" if client.multi is None else "multi")
            if (client.subscribed and error is None and client.resp == 2
                    and not route.subscribed_ok):
                error = subscribed_mode_error(cmd.name)
        restricted = False
        if error is not None or cmd is None:
            pass
        elif self.services.replication.restricted:
            restricted = True
            error = self._replication_refusal(cmd)
        if error is not None:
            self.stats.reject(cmd, argv, error.prefix)
            if in_multi:
                client.multi_error = True
                if cmd is not None and cmd.name == "exec":
                    # Redis' execCommandAbort: a refused EXEC (BUSY, NOPERM ...) discards
                    # the transaction and says why; the client leaves MULTI.
                    client.multi = None
                    client.multi_error = False
                    self.services.watches.unwatch_all(client)
                    error = CommandError("Transaction discarded because of: "
                                         f"{error.prefix} {error}", prefix="EXECABORT")
            replies.append(error)
            group.protocols.append(client.resp)
            return
        assert route is not None and cmd is not None
        client.cmd = cmd.name if route.plain else self.services.acl.index.unit(cmd, argv)
        if in_multi and route.queued:
            queued = self._queue(client, cmd, argv)
            if queued is not QUEUED:
                self.stats.error_reply(queued.prefix)
            replies.append(queued)
            group.protocols.append(client.resp)
            return
        txn = group.txn
        # Reads see only committed state, and FLUSHDB/FLUSHALL (@dangerous) commit by
        # themselves: settle the buffered writes (of every client) before them.
        if route.reads and txn.dirty:
            group.commit()
        run = txn
        if restricted:
            # sync-replicas: no reply may show a write the replicas have not acknowledged
            # (Replication.sync_read): a plain read runs at the acknowledged snapshot, other
            # reads hold their reply until what they read is acknowledged.
            how = self.services.replication.sync_read(client, cmd)
            if how == READ_VIEW:
                run = self.services.replication.view_txn()
            elif how == READ_HELD:
                group.wrote = True
        mark = txn.mark()
        start = perf_counter_ns()
        try:
            reply = cmd.handler(Context(client, self.services, run), argv)
        except CommandError as exc:
            txn.undo(mark)
            reply = exc
        except ShaleError as exc:
            txn.undo(mark)
            reply = engine_error(exc)
        except Exception as exc:  # noqa: BLE001 - see internal_error
            txn.undo(mark)
            reply = internal_error(cmd, argv, exc)
        nanos = perf_counter_ns() - start
        deferred = type(reply) is Deferred
        self.stats.record(cmd, argv, nanos,
                          reply.prefix if isinstance(reply, CommandError) else None)
        config = self.services.config
        # Logged (and timed) unless it blocked: then when it is served (_served), as Redis.
        if (0 <= config.slowlog_log_slower_than <= nanos // 1000 and not route.skip_slowlog
                and not (deferred and reply.blocking)):
            self.services.slowlog.add(argv, nanos // 1000, client.addr, client.name,
                                      config.slowlog_max_len)
        if 0 < config.latency_monitor_threshold <= nanos // 1_000_000:
            self.stats.latency.add("fast-command" if route.fast else "command",
                                   nanos // 1_000_000)
        if deferred and reply.blocking:
            self.services.blocking.name_command(client, argv)
        if self.pubsub.monitors and route.monitored:
            self.pubsub.feed_monitors(client, client.db, argv)
        # A write command that wrote nothing (SETNX finding the key, GETEX, INCR failing)
        # may still have read writes of other clients buffered in the turn: its reply waits
        # for their commit (and fsync) like theirs, and turns into the commit's error.
        if not deferred and txn.dirty and not group.turn.frozen and not route.no_data:
            # (A script past busy-reply-threshold returns a Deferred while its writes are
            # still buffered: it commits them itself when it ends.)
            group.add_pending(len(replies))
        replies.append(reply)
        group.protocols.append(client.resp)

    def _replication_refusal(self, cmd: Command) -> CommandError | None:
        """-LOADING during a replica's full resync (but for the commands Redis flags
        ``loading``), -READONLY for a write on a replica, -NOREPLICAS for a write while
        fewer than sync-replicas replicas are connected."""
        repl = self.services.replication
        if repl.loading and "loading" not in cmd.flags:
            return CommandError("ShaleDB is loading the dataset from its primary (full "
                                "resync); retry shortly", prefix="LOADING")
        if "write" in cmd.flags:
            return repl.write_refusal()
        return None

    def _account(self, client: ClientState, cmd: Command, argv: list[bytes], nanos: int,
                 reply: Any) -> None:
        """Count one call; log it in the slow log when it took long enough."""
        self.stats.record(cmd, argv, nanos,
                          reply.prefix if isinstance(reply, CommandError) else None)
        slower = self.services.config.slowlog_log_slower_than
        # A command that blocked is logged when it is served (_served), as Redis.
        blocked = type(reply) is Deferred and reply.blocking
        if 0 <= slower <= nanos // 1000 and "skip-slowlog" not in cmd.flags and not blocked:
            self.services.slowlog.add(argv, nanos // 1000, client.addr, client.name,
                                    self.services.config.slowlog_max_len)
        threshold = self.services.config.latency_monitor_threshold
        if 0 < threshold <= nanos // 1_000_000:
            self.stats.latency.add("fast-command" if "fast" in cmd.flags else "command",
                                   nanos // 1_000_000)

    def _served(self, waiter: Waiter, nanos: int) -> None:
        """A blocked command was served: the slow log names it as sent (BLPOP, not the LPOP
        it became), with the time its serving took."""
        slower = self.services.config.slowlog_log_slower_than
        if waiter.argv and 0 <= slower <= nanos // 1000:
            client = waiter.client
            self.services.slowlog.add(waiter.argv, nanos // 1000, client.addr, client.name,
                                      self.services.config.slowlog_max_len)

    def _queue(self, client: ClientState, cmd: Command, argv: list[bytes]) -> Any:
        assert client.multi is not None
        if "no-multi" in cmd.flags:  # SAVE, SHUTDOWN: their reply cannot wait inside EXEC
            client.multi_error = True
            return CommandError("Command not allowed inside a transaction")
        client.multi_bytes += sum(len(a) for a in argv) + 32 * len(argv)
        limit = self.services.config.max_multi_bytes
        if client.multi_bytes > limit:
            client.multi_error = True
            client.multi.clear()  # the transaction is aborted: free what it held
            return CommandError(
                f"MULTI queue exceeds max-multi-bytes ({limit}); the transaction will abort")
        if not client.multi_error:
            client.multi.append(argv)
        return QUEUED

    def writes(self, argv: list[bytes]) -> bool:
        """Whether the (queued, so known) command ``argv`` may write."""
        return "write" in self.table[argv[0].lower()].flags

    def run_in_exec(self, ctx: Context, argv: list[bytes], acl_context: str = "multi"
                    ) -> Any:
        """Run one queued command inside EXEC, in EXEC's keyspace transaction. A failing
        command's own buffered writes are dropped; the others' stay."""
        cmd = self.table[argv[0].lower()]
        client = ctx.client
        # Checked again: an ACL change between queueing and EXEC applies, as in Redis; and a
        # command queued after the ACL DELUSER that logged this client out does not run.
        if "no-auth" not in cmd.flags and not (client.authenticated
                                               and client.user.unrestricted):
            denied = (self.services.acl.check(client, cmd, argv, acl_context)
                      if client.authenticated
                      else AuthRequiredError("Authentication required."))
            if denied is not None:
                self.stats.reject(cmd, argv, denied.prefix)
                return denied
        if self.services.replication.restricted:
            refused = self._replication_refusal(cmd)
            if refused is not None:
                self.stats.reject(cmd, argv, refused.prefix)
                return refused
        mark = ctx.txn.mark()
        start = perf_counter_ns()
        try:
            reply = cmd.handler(Context(ctx.client, self.services, ctx.txn, True), argv)
        except CommandError as exc:
            ctx.txn.undo(mark)
            reply = exc
        except ShaleError:
            raise  # the engine refused: EXEC as a whole fails (Dispatcher.execute)
        except Exception as exc:  # noqa: BLE001 - see internal_error
            ctx.txn.undo(mark)
            reply = internal_error(cmd, argv, exc)
        self._account(ctx.client, cmd, argv, perf_counter_ns() - start, reply)
        if self.pubsub.monitors and "admin" not in cmd.categories:
            self.pubsub.feed_monitors(client, client.db, argv)
        return reply
