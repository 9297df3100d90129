"""What the command table says about a command, apart from the code that runs it.

:class:`CommandSpec` is name, arity, flags, ACL categories, key positions and subcommands:
everything the ACL (:mod:`shaledb.server.admin.acl`), the command statistics
(:mod:`shaledb.server.admin.stats`) and ``COMMAND`` read. The handler is added by
:class:`~shaledb.server.exec.context.Command`; keeping it out of here lets those modules
name the type without depending on what a handler is given (the services), which in turn
names them: that was a cycle.

Arity follows Redis: a positive number is the exact argument count (command name included),
a negative one the minimum. Key positions are ``(first, last, step)`` with ``last = -1``
meaning "up to the last argument" and ``(0, 0, 0)`` meaning "no keys".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..net.protocol import Status


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """One entry of the command table, without its handler."""

    name: str
    arity: int
    flags: frozenset[str]
    categories: tuple[str, ...]
    first_key: int
    last_key: int
    step: int
    #: Subcommands with categories of their own (``acl whoami`` is @slow, ``acl setuser``
    #: @admin): ACL rules and checks treat them as ``name|sub``.
    subcommands: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: For commands whose keys are found by a count argument (SINTERCARD numkeys key ...,
    #: Redis' "movablekeys"): the key arguments of argv; first/last/step are then 0.
    key_finder: Callable[[list[bytes]], list[bytes]] | None = dataclasses.field(
        default=None, compare=False, repr=False)

    def arity_ok(self, argc: int) -> bool:
        """Whether ``argc`` arguments (name included) fit the arity."""
        return argc == self.arity if self.arity >= 0 else argc >= -self.arity

    def keys(self, argv: list[bytes]) -> list[bytes]:
        """The key arguments of ``argv``."""
        if self.key_finder is not None:
            return self.key_finder(argv)
        if self.first_key == 0:
            return []
        last = self.last_key if self.last_key >= 0 else len(argv) + self.last_key
        return argv[self.first_key:last + 1:self.step]

    def info(self) -> list[Any]:
        """This command's ``COMMAND INFO`` entry."""
        return [self.name, self.arity, {Status(f.encode()) for f in sorted(self.flags)},
                self.first_key, self.last_key, self.step,
                {Status(b"@" + c.encode()) for c in self.categories}, [], [], []]


__all__ = ["CommandSpec"]
