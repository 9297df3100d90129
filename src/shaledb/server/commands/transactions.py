"""MULTI EXEC DISCARD WATCH UNWATCH, with Redis' semantics.

Commands after MULTI are checked (name, arity) and queued; EXEC runs them back to back on the
event loop, where no other client's command can run in between, and commits all their writes
as one write batch, so the transaction is atomic for other clients and across a crash. A
command that fails inside EXEC gets its error in the reply array and leaves no writes; the
others still apply (Redis does the same). A queueing error aborts the transaction
(``-EXECABORT``). WATCH makes EXEC fail with a null reply when a watched key was written
(by anyone, this client included) or expired after the WATCH.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from ..errors import CommandError
from ..net.protocol import NULL_ARRAY, OK
from . import CommandFamily, Context

FAMILY = CommandFamily()
command = FAMILY.command

_FLAGS = "noscript loading stale fast allow-busy"


@command("multi", 1, _FLAGS, "fast transaction")
def multi(ctx: Context, argv: list[bytes]) -> Any:
    """MULTI: start queueing commands"""
    client = ctx.client
    if client.multi is not None:
        raise CommandError("MULTI calls can not be nested")
    client.multi = []
    client.multi_bytes = 0
    client.multi_error = False
    return OK


@command("discard", 1, _FLAGS, "fast transaction")
def discard(ctx: Context, argv: list[bytes]) -> Any:
    """DISCARD: drop the queued commands and every WATCH"""
    client = ctx.client
    if client.multi is None:
        raise CommandError("DISCARD without MULTI")
    client.multi = None
    ctx.services.watches.unwatch_all(client)
    return OK


@command("exec", 1, "noscript loading stale skip-slowlog", "slow transaction")
def exec_(ctx: Context, argv: list[bytes]) -> Any:
    """EXEC: run the queued commands atomically -> their replies, or null when a watched
    key changed"""
    client, server = ctx.client, ctx.services
    queued = client.multi
    if queued is None:
        raise CommandError("EXEC without MULTI")
    client.multi = None
    aborted = client.multi_error
    dirty = client.dirty_cas or any(
        0 < exp <= ctx.txn.now for exp in client.watched.values())
    server.watches.unwatch_all(client)
    if aborted:
        raise CommandError("Transaction discarded because of previous errors.",
                           prefix="EXECABORT")
    if dirty:
        return NULL_ARRAY
    # The replies are charged to the output limit one by one. Past it the client is
    # disconnected and gets none, but every queued write still runs, as in Redis (EXEC runs
    # whole before the limit is enforced): the transaction stays all-or-nothing.
    out = ctx.array()
    dispatcher = server.dispatcher
    # Its SCANs share one time budget (keys.SCAN_TIME_BUDGET) from here: each alone stops
    # after 50 ms, but 100 of them queued held the loop for 5 s.
    client.exec_started = perf_counter()
    try:
        for request in queued:
            if client.output_overflow:
                if dispatcher.writes(request):
                    dispatcher.run_in_exec(ctx, request)
                continue
            client.output_budget = out.budget - out.size
            reply = dispatcher.run_in_exec(ctx, request)
            if not client.output_overflow and not out.add(reply):
                ctx.overflow()
    finally:
        client.exec_started = None
    client.output_budget = out.budget
    return None if client.output_overflow else out.done()


@command("watch", -2, _FLAGS, "fast transaction", (1, -1, 1))
def watch(ctx: Context, argv: list[bytes]) -> Any:
    """WATCH key [key ...]"""
    client, server = ctx.client, ctx.services
    if client.multi is not None:
        raise CommandError("WATCH inside MULTI is not allowed")
    limit = server.config.max_watched_keys
    new = {(ctx.db, k) for k in argv[1:]} - client.watched.keys()
    if len(client.watched) + len(new) > limit:
        raise CommandError(f"too many watched keys (max-watched-keys is {limit})")
    for key in argv[1:]:
        e = ctx.txn.lookup(ctx.db, key)
        server.watches.watch(client, ctx.db, key, 0 if e is None else e.expire_ms)
    return OK


@command("unwatch", 1, _FLAGS, "fast transaction")
def unwatch(ctx: Context, argv: list[bytes]) -> Any:
    """UNWATCH: forget every watched key"""
    ctx.services.watches.unwatch_all(ctx.client)
    return OK
