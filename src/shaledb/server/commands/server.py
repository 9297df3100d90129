"""Server administration: CONFIG SAVE BGSAVE LASTSAVE SHUTDOWN (all @admin, as in Redis;
SAVE and BGSAVE @slow @dangerous, LASTSAVE @fast @dangerous, as Redis 7 files them), and
ShaleDB's SCRUB (@admin too: a pass reads the whole database)."""

from __future__ import annotations

import asyncio
from typing import Any

from ..admin.settings import config_get, config_set
from ..errors import CommandError
from ..exec.deferred import Deferred
from ..net.protocol import OK, Status
from . import SYNTAX, CommandFamily, Context, wrong_arity

FAMILY = CommandFamily()
command = FAMILY.command

_ADMIN = "admin slow dangerous"

CONFIG_HELP = (
    "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET <pattern>",
    "    Return parameters matching the glob-like <pattern> and their values.",
    "SET <directive> <value>",
    "    Set the configuration <directive> to <value> (several pairs: all or none).",
    "RESETSTAT",
    "    Reset statistics reported by the INFO command.",
    "REWRITE",
    "    Not supported: edit the TOML config file (see the error for why).",
    "HELP",
    "    Print this help.",
)

#: Why CONFIG REWRITE is refused (Redis rewrites redis.conf in place).
REWRITE_UNSUPPORTED = (
    "CONFIG REWRITE is not supported: ShaleDB's config file is TOML written by you "
    "(comments, tables, the password kept in SHALEDB_REQUIREPASS), and the server does not "
    "rewrite it. Copy the settings you changed (CONFIG GET) into the file yourself.")


@command("config", -2, "noscript loading stale", _ADMIN, subcommands={
    "get": _ADMIN, "set": _ADMIN, "resetstat": _ADMIN, "rewrite": _ADMIN, "help": "slow"})
def config(ctx: Context, argv: list[bytes]) -> Any:
    """CONFIG GET pattern [pattern ...] | SET name value [name value ...] | RESETSTAT |
    REWRITE | HELP"""
    sub = argv[1].lower()
    n = len(argv)
    if sub == b"get" and n >= 3:
        return config_get(ctx.services, argv[2:])
    if sub == b"set" and n >= 4 and n % 2 == 0:
        config_set(ctx.services, list(zip(argv[2::2], argv[3::2], strict=True)))
        return OK
    if sub == b"resetstat" and n == 2:
        server = ctx.services
        server.stats.clear()
        server.command_stats.reset()
        ks = server.keyspace
        ks.hits = ks.misses = ks.expired_keys = 0
        return OK
    if sub == b"rewrite" and n == 2:
        raise CommandError(REWRITE_UNSUPPORTED)
    if sub == b"help" and n == 2:
        return [Status(line.encode()) for line in CONFIG_HELP]
    if sub in (b"get", b"set", b"resetstat", b"rewrite", b"help"):
        raise wrong_arity("config|" + sub.decode())
    raise CommandError(f"unknown subcommand '{argv[1].decode('utf-8', 'replace')}'. "
                       "Try CONFIG HELP.")


@command("save", 1, "noscript no-multi", _ADMIN)
def save(ctx: Context, argv: list[bytes]) -> Any:
    """SAVE: checkpoint (memtable flushed to a table, WAL fsynced), then, when a backup
    repository is configured, a backup into it (exec/backups.py). The reply waits for both;
    other clients do not (unlike Redis' SAVE, which blocks the server)"""
    server = ctx.services
    if server.bgsave_in_progress:
        raise CommandError("Background save already in progress")
    backups = server.backups
    loop = asyncio.get_running_loop()
    result: asyncio.Future[Any] = loop.create_future()
    done = server.checkpoints.save(lastsave=not backups.configured)

    def backed_up(job: asyncio.Future[Any]) -> None:
        exc = job.exception()
        if exc is not None:
            result.set_exception(exc)
        else:
            result.set_result(OK)

    def checkpointed(job: asyncio.Future[None]) -> None:
        exc = job.exception()
        if exc is not None:
            result.set_exception(exc)
        elif not backups.configured:
            result.set_result(OK)
        else:
            try:
                backups.save().add_done_callback(backed_up)
            except CommandError as err:  # a BGSAVE started meanwhile, or shutdown
                result.set_exception(err)

    done.add_done_callback(checkpointed)
    return Deferred(result)


@command("bgsave", -1, "noscript", _ADMIN)
def bgsave(ctx: Context, argv: list[bytes]) -> Any:
    """BGSAVE [SCHEDULE]: start a backup into the configured repository in the background
    (an error when none is configured)"""
    if len(argv) > 2 or (len(argv) == 2 and argv[1].lower() != b"schedule"):
        raise CommandError(SYNTAX)
    return Status(ctx.services.backups.bgsave(schedule=len(argv) == 2))


@command("lastsave", 1, "loading stale fast", "admin fast dangerous")
def lastsave(ctx: Context, argv: list[bytes]) -> Any:
    """LASTSAVE -> unix time of the last successful backup (of the last checkpoint when no
    backup repository is configured)"""
    return ctx.services.last_save_time


@command("shutdown", -1, "admin noscript loading stale no-multi allow-busy", _ADMIN)
def shutdown(ctx: Context, argv: list[bytes]) -> Any:
    """SHUTDOWN [NOSAVE|SAVE] [NOW] [FORCE] [ABORT]: graceful shutdown (as SIGTERM); SAVE
    checkpoints first and refuses to stop if that fails (unless FORCE). No reply on
    success: the connection closes."""
    opts = {a.lower() for a in argv[1:]}
    if len(opts) != len(argv) - 1 or not opts <= {b"nosave", b"save", b"now", b"force",
                                                  b"abort"}:
        raise CommandError(SYNTAX)
    if b"abort" in opts:
        if len(opts) > 1:
            raise CommandError(SYNTAX)
        # Redis' ABORT cancels a shutdown waiting for replicas; ours never waits.
        raise CommandError("No shutdown in progress.")
    if {b"save", b"nosave"} <= opts:
        raise CommandError(SYNTAX)
    # Without SAVE nothing is lost either: closing the database fsyncs the WAL (the
    # equivalent of Redis' AOF), so NOSAVE only skips the memtable flush.
    return Deferred(ctx.services.shutdown_on_request(save=b"save" in opts,
                                                   force=b"force" in opts))


SCRUB_HELP = (
    "SCRUB <subcommand> [<arg> ...]. Subcommands are:",
    "NOW",
    "    Start a background scrub pass (a rate-limited re-read and check of the whole",
    "    database) now, whatever scrub-interval says.",
    "STATUS",
    "    Return the state of the scrub and what the last completed pass found.",
    "STOP",
    "    Stop the running pass (the schedule goes on).",
    "HELP",
    "    Print this help.",
)


@command("scrub", -2, "admin noscript loading stale", _ADMIN, subcommands={
    "now": _ADMIN, "status": _ADMIN, "stop": _ADMIN, "help": "slow"})
def scrub(ctx: Context, argv: list[bytes]) -> Any:
    """SCRUB NOW | STATUS | STOP | HELP: the background scrub (scrub.py)"""
    sub = argv[1].lower()
    n = len(argv)
    scrubber = ctx.services.scrubber
    if sub == b"now" and n == 2:
        if not scrubber.alive:
            raise CommandError("the scrub thread is not running"
                               + (f" ({scrubber.status().thread_error}); restart the server"
                                  if scrubber.status().thread_error else ""))
        if not scrubber.request():
            raise CommandError("Scrub already in progress")
        return Status(b"Scrub started")
    if sub == b"status" and n == 2:
        status = scrubber.status()
        reply: dict[bytes, Any] = {name.encode(): _reply_value(value)
                                   for name, value in status.fields()}
        last = status.last
        reply[b"problems"] = [p.encode("utf-8", "replace")
                              for p in (last.problems if last is not None else ())]
        return reply
    if sub == b"stop" and n == 2:
        if not scrubber.stop_pass():
            raise CommandError("No scrub in progress")
        return OK
    if sub == b"help" and n == 2:
        return [Status(line.encode()) for line in SCRUB_HELP]
    if sub in (b"now", b"status", b"stop", b"help"):
        raise wrong_arity("scrub|" + sub.decode())
    raise CommandError(f"unknown subcommand '{argv[1].decode('utf-8', 'replace')}'. "
                       "Try SCRUB HELP.")


def _reply_value(value: Any) -> Any:
    """An INFO field value as a reply: integers stay integers, the rest is text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value).encode("utf-8", "replace")
