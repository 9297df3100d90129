"""Dispatch: from a request (a list of byte strings) to a reply.

For every request, in this order: look the command up (``-ERR unknown command``), check its
arity, check authentication (``-NOAUTH``), queue it when the client is inside MULTI, else run
its handler inside a fresh keyspace transaction and commit that transaction's writes as one
batch. An error raised by a handler discards every write the command buffered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ..errors import InvalidArgument, ReadOnlyError, ShaleError, StorageError
from .commands import Command, Context, build_table, wrong_arity
from .errors import AuthRequiredError, CommandError
from .protocol import QUEUED

if TYPE_CHECKING:
    from .connection import ClientState
    from .server import Server

#: Commands that run at once even inside MULTI (they control the transaction itself).
_NOT_QUEUED: Final = frozenset((b"exec", b"discard", b"multi", b"watch", b"quit", b"reset"))


def unknown_command(argv: list[bytes]) -> CommandError:
    """Redis' error for a command it does not know."""
    name = argv[0][:128].decode("utf-8", "replace")
    args = "".join(f"'{a[:128].decode('utf-8', 'replace')}' " for a in argv[1:20])
    return CommandError(f"unknown command '{name}', with args beginning with: {args}")


def engine_error(exc: ShaleError) -> CommandError:
    """The reply for an engine error met while running a command."""
    if isinstance(exc, (ReadOnlyError, StorageError)):
        return CommandError(f"the database refuses writes: {exc}", prefix="MISCONF")
    if isinstance(exc, InvalidArgument):
        return CommandError(str(exc))
    return CommandError(f"{type(exc).__name__}: {exc}")


class Dispatcher:
    """Runs requests for one server against its command table."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.table: dict[bytes, Command] = build_table()

    def execute(self, client: ClientState, argv: list[bytes]) -> Any:
        """The reply to ``argv`` (an error reply is a CommandError instance)."""
        cmd = self.table.get(argv[0].lower())
        in_multi = client.multi is not None
        error: CommandError | None = None
        if cmd is None:
            error = unknown_command(argv)
        elif not cmd.arity_ok(len(argv)):
            error = wrong_arity(cmd.name)
        elif not client.authenticated and "no-auth" not in cmd.flags:
            error = AuthRequiredError("Authentication required.")
        if error is not None:
            if in_multi:
                client.multi_error = True
            return error
        assert cmd is not None
        if in_multi and cmd.name.encode() not in _NOT_QUEUED:
            return self._queue(client, argv)
        server = self.server
        txn = server.keyspace.begin()
        try:
            reply = cmd.handler(Context(client, server, txn), argv)
            txn.commit()
        except CommandError as exc:
            return exc
        except ShaleError as exc:
            return engine_error(exc)
        return reply

    def _queue(self, client: ClientState, argv: list[bytes]) -> Any:
        assert client.multi is not None
        client.multi_bytes += sum(len(a) for a in argv) + 32 * len(argv)
        limit = self.server.config.max_multi_bytes
        if client.multi_bytes > limit:
            client.multi_error = True
            client.multi.clear()  # the transaction is aborted: free what it held
            return CommandError(
                f"MULTI queue exceeds max-multi-bytes ({limit}); the transaction will abort")
        if not client.multi_error:
            client.multi.append(argv)
        return QUEUED

    def run_in_exec(self, ctx: Context, argv: list[bytes]) -> Any:
        """Run one queued command inside EXEC, in EXEC's keyspace transaction. A failing
        command's own buffered writes are dropped; the others' stay."""
        cmd = self.table[argv[0].lower()]
        mark = ctx.txn.savepoint()
        try:
            return cmd.handler(Context(ctx.client, self.server, ctx.txn), argv)
        except CommandError as exc:
            ctx.txn.restore(mark)
            return exc
