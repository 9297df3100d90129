"""Ordered ranges and batch writes, which Redis lacks: ``KRANGE``, ``KDELRANGE``, ``KBATCH``.

ShaleDB keeps keys sorted (bytewise), so a range of keys is one engine scan. KRANGE returns
the keys of the selected database between ``min`` and ``max`` with their values, as a flat
array ``[key1, value1, key2, value2, ...]``, in ascending key order (descending with REV;
``min`` and ``max`` keep their meaning). The bounds use ZRANGEBYLEX's syntax: ``[key``
includes ``key``, ``(key`` excludes it, ``-`` and ``+`` are the open ends. ``LIMIT`` caps the
number of pairs; it defaults to, and may not exceed, the server's ``krange-max-limit``
(10,000), which bounds the size of one reply. To page, continue from ``(lastkey``.

``KDELRANGE min max [LIMIT count]`` deletes the live keys between ``min`` and ``max`` (the
same bounds), at most ``count`` of them (same default and maximum), as one atomic write, and
returns how many it deleted: repeat until it returns less than the limit to empty a large
range. ``KBATCH op [op ...]`` with ``op`` = ``SET key value [PX ms]`` or ``DEL key`` applies
every operation as one atomic write batch (one WAL record), or none when any argument is
invalid, and returns the number of operations. Both address keys their arguments do not
list, so ACL users need ``allkeys`` for them, as for KRANGE.
"""

from __future__ import annotations

import itertools
from typing import Any

from ..errors import CommandError
from . import SYNTAX, CommandFamily, Context, parse_int
from .strings import check_size, expire_at

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


def scan_bounds(lo_arg: bytes, hi_arg: bytes) -> tuple[bytes | None, bytes | None] | None:
    """The engine scan ``[lo, hi)`` of two lex bounds; None when the range is empty."""
    lo_key, lo_incl = parse_bound(lo_arg, False)
    hi_key, hi_incl = parse_bound(hi_arg, True)
    if lo_arg == b"+" or hi_arg == b"-":
        return None
    # The engine scans [lo, hi): the key right after k in byte order is k + b"\0".
    lo = None if lo_key is None else (lo_key if lo_incl else lo_key + b"\x00")
    hi = None if hi_key is None else (hi_key + b"\x00" if hi_incl else hi_key)
    if lo is not None and hi is not None and lo >= hi:
        return None
    return lo, hi


def parse_limit(ctx: Context, argv: list[bytes], i: int) -> int:
    """The count after ``LIMIT`` at ``argv[i]``, checked against krange-max-limit."""
    max_limit = ctx.services.config.krange_max_limit
    limit = parse_int(argv[i])
    if limit < 0:
        raise CommandError("LIMIT must be >= 0")
    if limit > max_limit:
        raise CommandError(f"LIMIT exceeds krange-max-limit ({max_limit})")
    return limit


@command("krange", -3, "readonly", "read keyspace slow")
def krange(ctx: Context, argv: list[bytes]) -> Any:
    """KRANGE min max [LIMIT count] [REV] -> [key, value, ...]"""
    max_limit = ctx.services.config.krange_max_limit
    limit, reverse = max_limit, False
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"REV":
            reverse = True
            i += 1
        elif opt == b"LIMIT" and i + 1 < len(argv):
            limit = parse_limit(ctx, argv, i + 1)
            i += 2
        else:
            raise CommandError(SYNTAX)
    bounds = scan_bounds(argv[1], argv[2])
    if limit == 0 or bounds is None:
        return []
    lo, hi = bounds
    out = ctx.array()  # charged to the output limit pair by pair
    for key, entry in ctx.txn.scan(ctx.db, lo, hi, reverse=reverse):
        if entry.coll is not None:
            continue  # KRANGE lists strings; hashes and sets have their own commands
        out.add(key)
        if not out.add(entry.value):
            return ctx.overflow()
        if out.count >= 2 * limit:
            break
    return out.done()


@command("kdelrange", -3, "write", "write keyspace slow")
def kdelrange(ctx: Context, argv: list[bytes]) -> Any:
    """KDELRANGE min max [LIMIT count] -> number of keys deleted"""
    limit = ctx.services.config.krange_max_limit
    if len(argv) == 5 and argv[3].upper() == b"LIMIT":
        limit = parse_limit(ctx, argv, 4)
    elif len(argv) != 3:
        raise CommandError(SYNTAX)
    bounds = scan_bounds(argv[1], argv[2])
    if limit == 0 or bounds is None:
        return 0
    txn, db = ctx.txn, ctx.db
    # Collected first: the scan must not see its own deletions.
    keys = [key for key, _ in itertools.islice(txn.scan(db, *bounds), limit)]
    for key in keys:
        txn.delete(db, key)
    return len(keys)


@command("kbatch", -3, "write denyoom", "write keyspace slow")
def kbatch(ctx: Context, argv: list[bytes]) -> Any:
    """KBATCH SET key value [PX ms] | DEL key [...] -> number of operations"""
    # Parse everything before writing anything: a bad argument rejects the whole batch.
    ops: list[tuple[bytes, bytes | None, int]] = []
    i, n = 1, len(argv)
    while i < n:
        op = argv[i].upper()
        if op == b"SET" and i + 2 < n:
            key, value, expire, i = argv[i + 1], argv[i + 2], 0, i + 3
            if i + 1 < n and argv[i].upper() == b"PX":
                expire = expire_at(ctx, b"PX", argv[i + 1], "kbatch")
                i += 2
            check_size(ctx, len(value))
            ops.append((key, value, expire))
        elif op == b"DEL" and i + 1 < n:
            ops.append((argv[i + 1], None, 0))
            i += 2
        else:
            raise CommandError(SYNTAX)
    txn, db = ctx.txn, ctx.db
    for key, new, expire in ops:
        if new is None:
            txn.delete(db, key)
        else:
            txn.set(db, key, new, expire)
    return len(ops)
