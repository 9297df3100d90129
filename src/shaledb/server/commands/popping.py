"""What the pop-from-many and blocking commands of lists and sorted sets share (LMPOP ZMPOP
BLMPOP BZMPOP, BLPOP BZPOPMIN ...): the ``numkeys key [key ...] END [COUNT n]`` arguments,
the key finder that reads them, the blocking timeout as Redis parses it, and blocking
itself (or, inside MULTI, answering as a timeout would, as Redis)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

from ..errors import CommandError
from ..keyspace.keyspace import KeyspaceTxn
from . import SYNTAX, Context, parse_float, parse_int

#: The largest timeout a blocking command accepts, in seconds.
TIMEOUT_MAX: Final = 10**10


def numkeys_finder(first: int) -> Callable[[list[bytes]], list[bytes]]:
    """The keys of ``numkeys key [key ...]`` at ``argv[first]`` (for ACL and COMMAND)."""
    def keys(argv: list[bytes]) -> list[bytes]:
        try:
            n = int(argv[first])
        except (ValueError, IndexError):
            return []
        return argv[first + 1:first + 1 + n] if n > 0 else []
    return keys


def mpop_args(argv: list[bytes], first: int, ends: tuple[bytes, bytes]
              ) -> tuple[list[bytes], bool, int]:
    """``numkeys key [key ...] END [COUNT count]`` from ``argv[first]`` on, END one of
    ``ends``: (keys, whether END is ``ends[0]``, count)."""
    numkeys = parse_int(argv[first], "numkeys should be greater than 0")
    if numkeys <= 0:
        raise CommandError("numkeys should be greater than 0")
    where_at = first + 1 + numkeys
    if where_at >= len(argv):
        raise CommandError(SYNTAX)
    where = argv[where_at].upper()
    if where not in ends:
        raise CommandError(SYNTAX)
    count, counted = 1, False
    i = where_at + 1
    while i < len(argv):
        if argv[i].upper() == b"COUNT" and i + 1 < len(argv) and not counted:
            count = parse_int(argv[i + 1], "count should be greater than 0")
            if count <= 0:
                raise CommandError("count should be greater than 0")
            counted = True
            i += 2
        else:
            raise CommandError(SYNTAX)
    return argv[first + 1:where_at], where == ends[0], count


def block_timeout(arg: bytes) -> float:
    """A blocking command's timeout in seconds (0: forever), as Redis reads it."""
    try:
        t = parse_float(arg)
    except CommandError:
        raise CommandError("timeout is not a float or out of range") from None
    if t < 0:
        raise CommandError("timeout is negative")
    if not math.isfinite(t) or t > TIMEOUT_MAX:
        raise CommandError("timeout is out of range")
    return t


def block(ctx: Context, keys: list[bytes], timeout: float,
          attempt: Callable[[KeyspaceTxn, bytes], Any], timeout_reply: Any) -> Any:
    """Nothing to pop now: block (or, inside MULTI, answer as a timeout would)."""
    if ctx.in_exec:
        return timeout_reply
    return ctx.services.blocking.block(ctx.client, ctx.db, keys, timeout, attempt,
                                       timeout_reply)


__all__ = ["TIMEOUT_MAX", "block", "block_timeout", "mpop_args", "numkeys_finder"]
