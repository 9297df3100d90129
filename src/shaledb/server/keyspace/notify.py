"""Keyspace notifications (``notify-keyspace-events``): the flag letters and the event type.

A command that changes a key calls ONE hook, :meth:`KeyspaceTxn.notify
<shaledb.server.keyspace.keyspace.KeyspaceTxn.notify>` ``(kind, event, key, db)``, right
after it buffered the write (``kind`` is one of the type classes below: STRING, LIST ...;
``event`` the Redis event name, ``b"lpush"``). The transaction keeps the event with the
writes: a command that fails, or an EXEC that is discarded, takes its events back with its
writes (:meth:`KeyspaceTxn.undo`), and the events of a transaction are published only once
its commit succeeded -- a subscriber never hears of a write that did not happen. The
``new`` event (a key created) is raised by the transaction itself when a write creates a
key; ``expired`` by the keyspace when a read meets an expired key or the sweeper deletes
one. The flags are checked when the event is raised, so a command costs nothing while
notifications are off (the default, as in Redis).

Flag letters as Redis 7: K keyspace channel, E keyevent channel, g generic, $ string,
l list, s set, h hash, z sorted set, x expired, e evicted, t stream, m key miss, d module,
n new key; A is ``g$lshzxetd``.
"""

from __future__ import annotations

from typing import Final

KEYSPACE: Final = 1 << 0
KEYEVENT: Final = 1 << 1
GENERIC: Final = 1 << 2
STRING: Final = 1 << 3
LIST: Final = 1 << 4
SET: Final = 1 << 5
HASH: Final = 1 << 6
ZSET: Final = 1 << 7
EXPIRED: Final = 1 << 8
EVICTED: Final = 1 << 9
STREAM: Final = 1 << 10
KEY_MISS: Final = 1 << 11
MODULE: Final = 1 << 12
NEW: Final = 1 << 13
#: What ``A`` stands for (Redis' NOTIFY_ALL: not m, not n).
ALL: Final = GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE

_LETTERS: Final = {
    "g": GENERIC, "$": STRING, "l": LIST, "s": SET, "h": HASH, "z": ZSET, "x": EXPIRED,
    "e": EVICTED, "t": STREAM, "m": KEY_MISS, "d": MODULE, "n": NEW, "K": KEYSPACE,
    "E": KEYEVENT, "A": ALL,
}
#: The order Redis writes the class letters in (keyspaceEventsFlagsToString).
_ORDER: Final = "g$lshzxetdn"


class NotifyFlagsError(ValueError):
    """A character that is no event class."""


def parse_flags(text: str) -> int:
    """The flags of a ``notify-keyspace-events`` value (``""``: none)."""
    flags = 0
    for ch in text:
        bit = _LETTERS.get(ch)
        if bit is None:
            raise NotifyFlagsError("Invalid event class character. Use 'Ag$lshzxeKEtmdn'.")
        flags |= bit
    return flags


def format_flags(flags: int) -> str:
    """``flags`` as Redis writes them (CONFIG GET): classes, then K, E, m."""
    if flags & ALL == ALL:
        out = "A"
    else:
        out = "".join(ch for ch in _ORDER if flags & _LETTERS[ch])
    out += "K" if flags & KEYSPACE else ""
    out += "E" if flags & KEYEVENT else ""
    return out + ("m" if flags & KEY_MISS else "")


def wanted(flags: int, kind: int) -> bool:
    """Whether an event of ``kind`` is published under ``flags``."""
    return bool(flags & kind) and bool(flags & (KEYSPACE | KEYEVENT))


#: One event: (logical db, event name, key).
Event = tuple[int, bytes, bytes]

__all__ = ["ALL", "EVICTED", "EXPIRED", "Event", "GENERIC", "HASH", "KEYEVENT", "KEYSPACE",
           "KEY_MISS", "LIST", "MODULE", "NEW", "NotifyFlagsError", "SET", "STREAM", "STRING",
           "ZSET", "format_flags", "parse_flags", "wanted"]
