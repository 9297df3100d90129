"""The command table: name, arity, flags, ACL categories and key positions of every command,
and the handler that runs it. One module per command family registers its commands; the
dispatcher, ``COMMAND`` and the ACL checks all read this one table, as in Redis.

Arity follows Redis: a positive number is the exact argument count (command name included),
a negative one the minimum. Key positions are ``(first, last, step)`` with ``last = -1``
meaning "up to the last argument" and ``(0, 0, 0)`` meaning "no keys".
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..errors import CommandError
from ..keyspace.keyspace import KeyspaceTxn
from ..net.protocol import ArrayBuilder, Status

if TYPE_CHECKING:
    from ..net.connection import ClientState
    from ..server import Server


class Context:
    """What a handler gets besides its arguments: the calling client, the server and the
    keyspace transaction its reads and writes go through."""

    __slots__ = ("client", "server", "txn", "in_exec")

    def __init__(self, client: ClientState, server: Server, txn: KeyspaceTxn,
                 in_exec: bool = False) -> None:
        self.client = client
        self.server = server
        self.txn = txn
        #: The command runs inside EXEC: its reply must be ready when it returns (no
        #: :class:`~shaledb.server.exec.deferred.Deferred`).
        self.in_exec = in_exec

    @property
    def db(self) -> int:
        """The client's selected logical database."""
        return self.client.db

    def array(self) -> ArrayBuilder:
        """A builder for an array reply, charged to what is left of the client's output
        buffer limit: when :meth:`ArrayBuilder.add` returns False, return
        :meth:`overflow` at once."""
        return ArrayBuilder(self.client.resp, self.client.output_budget)

    def overflow(self) -> None:
        """The reply being built passed the client's output buffer limit: the connection
        disconnects the client after this command (its reply, None, is never sent)."""
        self.client.output_overflow = True


Handler = Callable[[Context, list[bytes]], Any]


@dataclasses.dataclass(frozen=True)
class Command:
    """One entry of the command table."""

    name: str
    arity: int
    flags: frozenset[str]
    categories: tuple[str, ...]
    first_key: int
    last_key: int
    step: int
    handler: Handler = dataclasses.field(repr=False, compare=False)
    #: Subcommands with categories of their own (``acl whoami`` is @slow, ``acl setuser``
    #: @admin): ACL rules and checks treat them as ``name|sub``.
    subcommands: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def arity_ok(self, argc: int) -> bool:
        """Whether ``argc`` arguments (name included) fit the arity."""
        return argc == self.arity if self.arity >= 0 else argc >= -self.arity

    def keys(self, argv: list[bytes]) -> list[bytes]:
        """The key arguments of ``argv``."""
        if self.first_key == 0:
            return []
        last = self.last_key if self.last_key >= 0 else len(argv) + self.last_key
        return argv[self.first_key:last + 1:self.step]

    def info(self) -> list[Any]:
        """This command's ``COMMAND INFO`` entry."""
        return [self.name, self.arity, {Status(f.encode()) for f in sorted(self.flags)},
                self.first_key, self.last_key, self.step,
                {Status(b"@" + c.encode()) for c in self.categories}, [], [], []]


class CommandFamily:
    """The commands of one family module, collected by the :meth:`command` decorator."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def command(self, name: str, arity: int, flags: str, categories: str,
                keys: tuple[int, int, int] = (0, 0, 0),
                subcommands: dict[str, str] | None = None) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of ``name``. ``flags`` and
        ``categories`` are space-separated words; ``subcommands`` maps a subcommand to its
        own categories."""
        subs = tuple((sub, tuple(cats.split())) for sub, cats in (subcommands or {}).items())

        def register(fn: Handler) -> Handler:
            self.commands.append(Command(name, arity, frozenset(flags.split()),
                                         tuple(categories.split()), *keys, handler=fn,
                                         subcommands=subs))
            return fn

        return register


def build_table() -> dict[bytes, Command]:
    """Every command by lower-case name."""
    from . import (
        acl,
        connection,
        databases,
        keys,
        observability,
        ranges,
        server,
        strings,
        transactions,
    )

    table: dict[bytes, Command] = {}
    for family in (connection.FAMILY, keys.FAMILY, strings.FAMILY, transactions.FAMILY,
                   ranges.FAMILY, acl.FAMILY, databases.FAMILY, observability.FAMILY,
                   server.FAMILY):
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


def wrong_arity(name: str) -> CommandError:
    """The error Redis gives for a wrong number of arguments."""
    return CommandError(f"wrong number of arguments for '{name}' command")


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
