"""Replies that are not ready when their command returns.

A handler whose work must not block the event loop (SAVE flushes the memtable; SHUTDOWN
SAVE does too) starts that work in a thread and returns :class:`Deferred`. The connection
sends the replies before it, stops running this client's later requests (other clients go
on), and sends the future's result when it is done, so the client still sees its replies in
order. Only commands flagged ``no-multi`` may defer: a reply inside EXEC's array must be
ready when EXEC returns.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final


class Deferred:
    """A reply that ``future`` will produce: its result is the reply (or :data:`CLOSE`); an
    exception becomes an error reply."""

    __slots__ = ("future", "blocking")

    def __init__(self, future: asyncio.Future[Any], blocking: bool = False) -> None:
        self.future = future
        #: A client blocked on keys (BLPOP): the connection keeps reading meanwhile, so a
        #: disconnect takes it out of the wait queue at once.
        self.blocking = blocking

    def __repr__(self) -> str:
        return f"<Deferred {self.future!r}>"


class Written:
    """A deferred result that acknowledges a write (a blocked BLPOP woken by a push): the
    connection sends ``reply`` behind an fsync under ``appendfsync always``, as it does the
    replies of the writes it ran itself."""

    __slots__ = ("reply",)

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def __repr__(self) -> str:
        return f"<Written {self.reply!r}>"


class _Close:
    def __repr__(self) -> str:
        return "CLOSE"


#: A deferred result meaning "send nothing, close the connection" (a successful SHUTDOWN:
#: Redis answers nothing and the client sees the connection close).
CLOSE: Final = _Close()

__all__ = ["CLOSE", "Deferred", "Written"]
