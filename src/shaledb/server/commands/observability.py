"""Observability commands: INFO and SLOWLOG."""

from __future__ import annotations

from typing import Any

from ..admin.info import info_text
from ..admin.slowlog import SLOWLOG_HELP
from ..errors import CommandError
from ..net.protocol import OK, Status, Verbatim
from . import CommandFamily, Context, parse_int, wrong_arity

FAMILY = CommandFamily()
command = FAMILY.command

_SLOWLOG_CATEGORIES = "admin slow dangerous"


@command("info", -1, "loading stale sentinel", "slow dangerous")
def info(ctx: Context, argv: list[bytes]) -> Any:
    """INFO [section ...]"""
    sections = [a.decode("latin-1") for a in argv[1:]]
    return Verbatim(info_text(ctx.services, sections).encode("utf-8", "replace"))


@command("slowlog", -2, "admin loading stale", _SLOWLOG_CATEGORIES,
         subcommands={sub: _SLOWLOG_CATEGORIES for sub in ("get", "len", "reset", "help")})
def slowlog(ctx: Context, argv: list[bytes]) -> Any:
    """SLOWLOG GET [count] | LEN | RESET | HELP"""
    sub = argv[1].lower()
    n = len(argv)
    log = ctx.services.slowlog
    if sub == b"get" and n <= 3:
        count = 10
        if n == 3:
            count = parse_int(argv[2])
            if count < -1:
                raise CommandError("count should be greater than or equal to -1")
        return log.get(count)
    if sub == b"len" and n == 2:
        return len(log)
    if sub == b"reset" and n == 2:
        log.reset()
        return OK
    if sub == b"help" and n == 2:
        return [Status(line.encode()) for line in SLOWLOG_HELP]
    if sub in (b"get", b"len", b"reset", b"help"):
        raise wrong_arity("slowlog|" + sub.decode())
    raise CommandError(f"unknown subcommand '{argv[1].decode('utf-8', 'replace')}'. "
                       "Try SLOWLOG HELP.")
