"""The command table: one module per command family registers its commands (a
:class:`~shaledb.server.exec.context.CommandFamily`), as Redis' t_string.c, t_hash.c each hold
one family; :func:`build_table` collects them into the one table that the dispatcher, the ACL
checks and ``COMMAND`` read. The server builds it and hands it to the
:class:`~shaledb.server.exec.dispatch.Dispatcher`.

A handler is ``handler(ctx, argv) -> reply`` and reaches the server only through
``ctx.services`` (:class:`~shaledb.server.exec.context.Services`), never the ``Server``
object. This package also holds the argument helpers the families share (:func:`parse_int`,
:func:`parse_float`, :func:`wrong_arity`).
"""

from __future__ import annotations

import re
from typing import Final

from ..errors import CommandError, wrong_arity
from ..exec.context import Command, CommandFamily, Context, Handler


def build_table() -> dict[bytes, Command]:
    """Every command by lower-case name."""
    # The families import this package's helpers (parse_int, CommandFamily...): importing
    # them at the top of the package would be a cycle; by the time the table is built the
    # package is complete.
    from . import (
        acl,
        bits,
        connection,
        databases,
        dump,
        geo,
        hashes,
        hyperloglog,
        keys,
        latency,
        lists,
        observability,
        pubsub,
        ranges,
        replication,
        scripting,
        sentinel,
        server,
        sets,
        sort,
        streams,
        strings,
        transactions,
        unsupported,
        zsets,
    )

    table: dict[bytes, Command] = {}
    for family in (connection.FAMILY, keys.FAMILY, strings.FAMILY, transactions.FAMILY,
                   ranges.FAMILY, acl.FAMILY, databases.FAMILY, observability.FAMILY,
                   server.FAMILY, hashes.FAMILY, sets.FAMILY, lists.FAMILY, zsets.FAMILY,
                   pubsub.FAMILY, bits.FAMILY, hyperloglog.FAMILY, dump.FAMILY,
                   sort.FAMILY, streams.FAMILY, scripting.FAMILY, geo.FAMILY,
                   unsupported.FAMILY, latency.FAMILY, replication.FAMILY,
                   sentinel.FAMILY):
        for cmd in family.commands:
            table[cmd.name.encode()] = cmd
    return table


# -- argument helpers shared by the families -------------------------------------------------

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
NOT_INTEGER: Final = "value is not an integer or out of range"
SYNTAX: Final = "syntax error"


def parse_int(arg: bytes, message: str = NOT_INTEGER) -> int:
    """A signed 64-bit integer written the way Redis' ``string2ll`` accepts it: no spaces,
    no ``+``, no leading zeros."""
    n = len(arg)
    if 0 < n <= 20 and (arg.isdigit() or (arg[0] == 45 and arg[1:].isdigit())):
        digits = arg[1:] if arg[0] == 45 else arg
        if digits and (digits[0] != 48 or arg == b"0"):
            value = int(arg)
            if INT64_MIN <= value <= INT64_MAX:
                return value
    raise CommandError(message)


#: What C's ``strtold`` reads whole: a decimal or hexadecimal float, or an infinity (NaN is
#: refused after it). Python's float() also takes ``1_000`` and surrounding spaces, and no
#: hexadecimal: matched first, so that both agree with Redis.
_DECIMAL_FLOAT: Final = re.compile(
    rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity)", re.I)
_HEX_FLOAT: Final = re.compile(
    rb"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?")
#: Redis' string2ld refuses strings this long or longer (MAX_LONG_DOUBLE_CHARS).
_MAX_FLOAT_CHARS: Final = 5 * 1024


def parse_float(arg: bytes) -> float:
    """A finite or infinite double as Redis' ``string2ld`` accepts it (``strtold`` reading
    the whole string, no leading space, not NaN): ``1.5``, ``.5``, ``5.``, ``1e3``,
    ``0x1p3``, ``inf``; not ``1_000``, `` 1``, ``nan``. (Redis computes in long double: a
    number past a double's range is infinite here.)"""
    if len(arg) >= _MAX_FLOAT_CHARS:
        raise CommandError("value is not a valid float")
    if _DECIMAL_FLOAT.fullmatch(arg):
        return float(arg)
    if _HEX_FLOAT.fullmatch(arg):
        return float.fromhex(arg.decode("ascii"))
    raise CommandError("value is not a valid float")


__all__ = [
    "Command",
    "CommandFamily",
    "Context",
    "Handler",
    "build_table",
    "parse_float",
    "parse_int",
    "wrong_arity",
]
