"""Client-side helpers for KRANGE, KDELRANGE and KBATCH, for redis-py (or any client with
``execute_command``).

>>> import redis
>>> from shaledb.client.krange import krange, iter_krange
>>> r = redis.Redis(port=6380)                                   # doctest: +SKIP
>>> krange(r, "[user:", "(user;", limit=10)                       # doctest: +SKIP
[(b'user:1', b'alice'), (b'user:2', b'bob')]
>>> for key, value in iter_krange(r, "[user:", "(user;"):         # doctest: +SKIP
...     print(key, value)

>>> kbatch(r, [("set", "a", "1"), ("set", "b", "2", 5000), ("del", "c")])  # doctest: +SKIP
3
>>> kdelrange(r, "[user:", "(user;")                                # doctest: +SKIP
2

Bounds use KRANGE's syntax: ``[key`` inclusive, ``(key`` exclusive, ``-`` / ``+`` open ends
(``str`` bounds are UTF-8 encoded).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

#: Pairs per KRANGE call of :func:`iter_krange` (the server's default krange-max-limit is
#: 10,000).
DEFAULT_PAGE = 1000


class SupportsExecuteCommand(Protocol):
    """A Redis client (redis-py's ``Redis``, a pipeline-free connection, ...)."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command and return its reply."""


def _bytes(bound: str | bytes) -> bytes:
    return bound.encode("utf-8") if isinstance(bound, str) else bytes(bound)


def krange(client: SupportsExecuteCommand, min: str | bytes = "-",  # noqa: A002
           max: str | bytes = "+", limit: int | None = None,  # noqa: A002
           rev: bool = False) -> list[tuple[bytes, bytes]]:
    """One KRANGE call: the ``(key, value)`` pairs between ``min`` and ``max`` in key order
    (descending with ``rev``), at most ``limit`` (default: the server's maximum)."""
    args: list[Any] = ["KRANGE", _bytes(min), _bytes(max)]
    if limit is not None:
        args += ["LIMIT", limit]
    if rev:
        args.append("REV")
    flat = client.execute_command(*args)
    return list(zip(flat[0::2], flat[1::2], strict=True))


def iter_krange(client: SupportsExecuteCommand, min: str | bytes = "-",  # noqa: A002
                max: str | bytes = "+", page: int = DEFAULT_PAGE,  # noqa: A002
                rev: bool = False) -> Iterator[tuple[bytes, bytes]]:
    """Every pair between ``min`` and ``max``, fetched ``page`` at a time. Each page is a
    consistent read; keys written between pages are seen if they sort after the last key
    returned (before it, with ``rev``)."""
    lo, hi = _bytes(min), _bytes(max)
    while True:
        pairs = krange(client, lo, hi, limit=page, rev=rev)
        yield from pairs
        if len(pairs) < page:
            return
        last = pairs[-1][0]
        if rev:
            hi = b"(" + last
        else:
            lo = b"(" + last


def kdelrange(client: SupportsExecuteCommand, min: str | bytes = "-",  # noqa: A002
              max: str | bytes = "+", limit: int | None = None,  # noqa: A002
              all: bool = True) -> int:  # noqa: A002
    """Delete the keys between ``min`` and ``max``; the number deleted. Each KDELRANGE call
    deletes at most ``limit`` keys (default: the server's maximum) atomically; with ``all``
    the helper repeats until the range is empty (atomic per call, not as a whole)."""
    args: list[Any] = ["KDELRANGE", _bytes(min), _bytes(max)]
    total = 0
    while True:
        n = int(client.execute_command(*args, *(["LIMIT", limit] if limit is not None else [])))
        total += n
        if not all or n == 0 or (limit is not None and n < limit):
            return total


def kbatch(client: SupportsExecuteCommand,
           ops: Iterable[tuple[Any, ...]]) -> int:
    """Apply ``ops`` atomically with one KBATCH: ``("set", key, value)``,
    ``("set", key, value, px_ms)`` or ``("del", key)``; the number of operations."""
    args: list[Any] = ["KBATCH"]
    for op in ops:
        kind = str(op[0]).lower()
        if kind == "set" and len(op) in (3, 4):
            args += ["SET", op[1], op[2]]
            if len(op) == 4 and op[3] is not None:
                args += ["PX", int(op[3])]
        elif kind == "del" and len(op) == 2:
            args += ["DEL", op[1]]
        else:
            raise ValueError(f"not a KBATCH operation: {op!r}")
    if len(args) == 1:
        return 0
    return int(client.execute_command(*args))


__all__ = ["DEFAULT_PAGE", "iter_krange", "kbatch", "kdelrange", "krange"]
