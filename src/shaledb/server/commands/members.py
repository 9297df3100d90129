"""What the hash and set families share: HSCAN/SSCAN's cursor walk over a collection's
members and the random-member replies (HRANDFIELD, SRANDMEMBER).

A member scan is SCAN's walk (:func:`shaledb.server.commands.keys.scan`) over one key's
member records: the cursor number stands for (key, next member) in the scan-cursor table,
filed under a database number no SCAN uses (``-1 - db``), so a SCAN cursor is refused by
HSCAN and the other way round; COUNT and the time budget bound each call as SCAN's do.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from time import perf_counter
from typing import Any, Final

from ..errors import CommandError
from ..glob import compile_glob
from ..keyspace.keyspace import Entry
from . import SYNTAX, Context, parse_int
from .keys import SCAN_TIME_BUDGET

_KEY_LEN: Final = struct.Struct(">I")


def scan_cursor_db(db: int) -> int:
    """The cursor table's database number for member scans of logical database ``db``."""
    return -1 - db


def member_scan(ctx: Context, argv: list[bytes], e: Entry | None, with_values: bool,
                value_of: Callable[[bytes], bytes] | None = None) -> Any:
    """HSCAN / SSCAN / ZSCAN key cursor [MATCH pattern] [COUNT count] -> [next cursor,
    items]: every member present for the whole iteration is returned exactly once; a call
    walks at most COUNT members and stops after SCAN_TIME_BUDGET seconds of work.
    ``value_of`` turns a stored value into the one replied (ZSCAN: a score)."""
    try:
        cursor = int(argv[2])
        if cursor < 0 or argv[2] != b"%d" % cursor:
            raise ValueError
    except ValueError:
        raise CommandError("invalid cursor") from None
    count, match = 10, None
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if i + 1 >= len(argv):
            raise CommandError(SYNTAX)
        if opt == b"COUNT":
            count = parse_int(argv[i + 1])
            if count < 1:
                raise CommandError(SYNTAX)
        elif opt == b"MATCH":
            match = compile_glob(argv[i + 1], bounded=True)
        else:
            raise CommandError(SYNTAX)
        i += 2
    key = argv[1]
    cursors = ctx.services.scan_cursors
    where = scan_cursor_db(ctx.db)
    start = b""
    if cursor:
        position = cursors.get(cursor, where)
        n = _KEY_LEN.unpack_from(position)[0] if position and len(position) >= 4 else -1
        if position is None or position[4:4 + n] != key:
            raise CommandError("invalid cursor (unknown, dropped, or of another key): "
                               "start the scan again from 0")
        start = position[4 + n:]
    found = ctx.array()
    if e is None:
        return [b"0", found.done()]
    assert e.coll is not None
    last: bytes | None = None
    started = perf_counter()
    if ctx.in_exec and ctx.client.exec_started is not None:
        started = min(started, ctx.client.exec_started)
    deadline = started + SCAN_TIME_BUDGET
    for seen, (field, value) in enumerate(ctx.txn.members(e.coll, start)):
        if seen == count or (seen and perf_counter() > deadline):
            break
        last = field
        if (match is None or match(field)) and (
                not found.add(field) or (with_values and not found.add(
                    value if value_of is None else value_of(value)))):
            return ctx.overflow()
    else:
        return [b"0", found.done()]
    assert last is not None
    position = _KEY_LEN.pack(len(key)) + key + last + b"\x00"
    return [b"%d" % cursors.put(ctx.client.id, where, position), found.done()]


def random_reply(ctx: Context, e: Entry | None, count_arg: bytes, with_values: bool,
                 kind: str = "array") -> Any:
    """HRANDFIELD key count [WITHVALUES] / SRANDMEMBER key count: a positive count asks
    for distinct members (at most all of them), a negative one for ``-count`` members with
    repeats. Replies are charged to the output limit as they are built."""
    n = parse_int(count_arg)
    # Redis takes -LONG_MAX..LONG_MAX, and with values at most LONG_MAX / 2 repeats (the
    # reply's length must fit); anything else is an error, not a reply cut by the limit.
    if n < -(2**63 - 1) or (with_values and n < -(2**62)):
        raise CommandError("value is out of range")
    out = ctx.array()
    if e is None or n == 0:
        return out.done()
    assert e.coll is not None
    distinct = n > 0
    want = abs(n)
    resp3_pairs = with_values and ctx.client.resp == 3
    if distinct and want >= e.coll.size:
        picks: Any = ctx.txn.members(e.coll)  # all of them
    else:
        picks = ctx.txn.random_members(e.coll, want, distinct=distinct)
    for field, value in picks:
        if resp3_pairs:
            ok = out.add([field, value])
        else:
            ok = out.add(field) and (not with_values or out.add(value))
        if not ok:
            return ctx.overflow()
    return out.done(kind)


__all__ = ["member_scan", "random_reply", "scan_cursor_db"]
