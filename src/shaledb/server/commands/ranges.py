"""Ordered ranges, which Redis lacks: ``KRANGE min max [LIMIT count] [REV]``.

ShaleDB keeps keys sorted (bytewise), so a range of keys is one engine scan. KRANGE returns
the keys of the selected database between ``min`` and ``max`` with their values, as a flat
array ``[key1, value1, key2, value2, ...]``, in ascending key order (descending with REV;
``min`` and ``max`` keep their meaning). The bounds use ZRANGEBYLEX's syntax: ``[key``
includes ``key``, ``(key`` excludes it, ``-`` and ``+`` are the open ends. ``LIMIT`` caps the
number of pairs; it defaults to, and may not exceed, the server's ``krange-max-limit``
(10,000), which bounds the size of one reply. To page, continue from ``(lastkey``.
"""

from __future__ import annotations

from typing import Any

from ..errors import CommandError
from . import SYNTAX, CommandFamily, Context, parse_int

FAMILY = CommandFamily()
command = FAMILY.command


def parse_bound(arg: bytes, upper: bool) -> tuple[bytes | None, bool]:
    """(key, inclusive) of a lex bound; key None is an open end."""
    if arg == b"-":
        return (None, True) if not upper else (b"", False)
    if arg == b"+":
        return (None, True) if upper else (None, False)
    if arg[:1] == b"[":
        return arg[1:], True
    if arg[:1] == b"(":
        return arg[1:], False
    raise CommandError("min or max not valid string range item")


@command("krange", -3, "readonly", "read keyspace slow")
def krange(ctx: Context, argv: list[bytes]) -> Any:
    """KRANGE min max [LIMIT count] [REV] -> [key, value, ...]"""
    max_limit = ctx.server.config.krange_max_limit
    limit, reverse = max_limit, False
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"REV":
            reverse = True
            i += 1
        elif opt == b"LIMIT" and i + 1 < len(argv):
            limit = parse_int(argv[i + 1])
            if limit < 0:
                raise CommandError("LIMIT must be >= 0")
            if limit > max_limit:
                raise CommandError(f"LIMIT exceeds krange-max-limit ({max_limit})")
            i += 2
        else:
            raise CommandError(SYNTAX)
    lo_key, lo_incl = parse_bound(argv[1], False)
    hi_key, hi_incl = parse_bound(argv[2], True)
    if argv[1] == b"+" or argv[2] == b"-":
        return []
    # The engine scans [lo, hi): the key right after k in byte order is k + b"\0".
    lo = None if lo_key is None else (lo_key if lo_incl else lo_key + b"\x00")
    hi = None if hi_key is None else (hi_key + b"\x00" if hi_incl else hi_key)
    out: list[bytes] = []
    if limit == 0 or (lo is not None and hi is not None and lo >= hi):
        return out
    for key, entry in ctx.txn.scan(ctx.db, lo, hi, reverse=reverse):
        out.append(key)
        out.append(entry.value)
        if len(out) >= 2 * limit:
            break
    return out
