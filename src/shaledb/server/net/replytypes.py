"""Reply types that subclass ``bytes`` and ``tuple``: marked replies the encoder writes
differently (a simple string, a verbatim string, a set, a push).

Their own module, never compiled: mypyc cannot compile a subclass of a built-in type, and
:mod:`.protocol`, which is compiled, imports them from here (and re-exports them).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Push", "SetReply", "Status", "Verbatim"]


class Status(bytes):
    """A RESP simple string reply (``+OK``)."""

    __slots__ = ()


class Verbatim(bytes):
    """A text reply: a RESP3 verbatim string of format ``txt`` (INFO), a bulk string in
    RESP2, as Redis sends it."""

    __slots__ = ()


class SetReply(tuple[Any, ...]):
    """A set reply in a fixed order (ACL GETUSER's flags): a RESP3 set, an array in RESP2."""

    __slots__ = ()


class Push(tuple[Any, ...]):
    """An out-of-band message (pub/sub): a RESP3 push (``>``), an array in RESP2."""

    __slots__ = ()
