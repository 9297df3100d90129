"""Pub/sub and MONITOR: who listens to what, and delivering to them.

:class:`PubSub` maps every channel, pattern and shard channel to its subscribers (their
:class:`~shaledb.server.exec.client.ClientState`, in subscription order); each client keeps
its own subscriptions too (``ClientState.channels`` ...), so unsubscribing everything and a
disconnect cost the client's subscriptions, not the server's. A message reaches a client
through ``ClientState.push``, which the connection sets: it encodes the message in the
client's protocol (a RESP3 push, an array in RESP2) and charges it to the client's output
buffer limit -- the ``pubsub`` class of client-output-buffer-limit while it is subscribed
(Redis' 32mb hard, 8mb soft for 60 s by default) -- so a subscriber that stops reading is
disconnected instead of growing the server's memory (:mod:`shaledb.server.net.connection`).

Shard channels (SSUBSCRIBE, SPUBLISH) are plain channels in their own namespace: a single
node owns every slot. Patterns are Redis globs (:func:`shaledb.server.glob.compile_glob`,
bounded as KEYS patterns are: a PUBLISH matches the channel against every pattern).

Keyspace notifications reach here through :meth:`PubSub.publish_events`, which the keyspace
calls after a commit succeeded (:mod:`shaledb.server.keyspace.notify`). MONITOR clients are
fed every command run (:meth:`PubSub.feed_monitors`) as Redis formats it, with the
arguments of AUTH, HELLO AUTH, ACL SETUSER and CONFIG SET requirepass redacted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Final

from ..admin.slowlog import redact  # one list of secrets for SLOWLOG and MONITOR
from ..glob import compile_glob
from ..keyspace import notify
from ..net.protocol import Push, Status
from .client import ClientState

#: What replaces a secret in a MONITOR line (Redis' shared.redacted).

_Subscribers = dict[int, ClientState]


class PubSub:
    """Every subscription of the server, and the clients in MONITOR mode."""

    def __init__(self) -> None:
        self.channels: dict[bytes, _Subscribers] = {}
        self.shard_channels: dict[bytes, _Subscribers] = {}
        #: pattern -> (its matcher, its subscribers).
        self.patterns: dict[bytes, tuple[Callable[[bytes], bool], _Subscribers]] = {}
        self.monitors: dict[int, ClientState] = {}
        #: Messages delivered (INFO / tests).
        self.delivered = 0

    # -- subscriptions -------------------------------------------------------------------
    def subscribe(self, client: ClientState, channel: bytes, shard: bool = False) -> bool:
        """Subscribe ``client`` to ``channel``; False when it already was."""
        mine = client.shard_channels if shard else client.channels
        if channel in mine:
            return False
        mine[channel] = None
        client.subscribed = True
        table = self.shard_channels if shard else self.channels
        table.setdefault(channel, {})[client.id] = client
        return True

    def unsubscribe(self, client: ClientState, channel: bytes, shard: bool = False) -> bool:
        """Unsubscribe ``client`` from ``channel``; False when it was not subscribed."""
        mine = client.shard_channels if shard else client.channels
        if channel not in mine:
            return False
        del mine[channel]
        client.subscribed = client.subscriptions > 0
        table = self.shard_channels if shard else self.channels
        subs = table.get(channel)
        if subs is not None:
            subs.pop(client.id, None)
            if not subs:
                del table[channel]
        return True

    def psubscribe(self, client: ClientState, pattern: bytes) -> bool:
        """Subscribe ``client`` to ``pattern`` (PatternError when it is too complex to
        match cheaply); False when it already was."""
        if pattern in client.patterns:
            return False
        entry = self.patterns.get(pattern)
        if entry is None:
            entry = self.patterns[pattern] = (compile_glob(pattern, bounded=True), {})
        client.patterns[pattern] = None
        client.subscribed = True
        entry[1][client.id] = client
        return True

    def punsubscribe(self, client: ClientState, pattern: bytes) -> bool:
        """Unsubscribe ``client`` from ``pattern``; False when it was not subscribed."""
        if pattern not in client.patterns:
            return False
        del client.patterns[pattern]
        client.subscribed = client.subscriptions > 0
        entry = self.patterns.get(pattern)
        if entry is not None:
            entry[1].pop(client.id, None)
            if not entry[1]:
                del self.patterns[pattern]
        return True

    def forget(self, client: ClientState) -> None:
        """The client is gone (or RESET): drop every subscription and its MONITOR."""
        for channel in list(client.channels):
            self.unsubscribe(client, channel)
        for channel in list(client.shard_channels):
            self.unsubscribe(client, channel, shard=True)
        for pattern in list(client.patterns):
            self.punsubscribe(client, pattern)
        self.monitors.pop(client.id, None)
        client.monitor = False

    # -- delivery ------------------------------------------------------------------------
    def publish(self, channel: bytes, message: bytes, shard: bool = False) -> int:
        """Send ``message`` to the subscribers of ``channel`` and of the patterns matching
        it (not for a shard channel, as in Redis); how many received it."""
        count = 0
        subs = (self.shard_channels if shard else self.channels).get(channel)
        if subs:
            frame = Push((b"smessage" if shard else b"message", channel, message))
            for client in list(subs.values()):
                count += _deliver(client, frame)
        if not shard and self.patterns:
            for pattern, (match, psubs) in list(self.patterns.items()):
                if psubs and match(channel):
                    frame = Push((b"pmessage", pattern, channel, message))
                    for client in list(psubs.values()):
                        count += _deliver(client, frame)
        self.delivered += count
        return count

    def publish_events(self, events: list[notify.Event], flags: int) -> None:
        """Publish committed keyspace notifications, as Redis' notifyKeyspaceEvent: on
        ``__keyspace@<db>__:<key>`` (the event as the message) with K, on
        ``__keyevent@<db>__:<event>`` (the key as the message) with E."""
        if not self.channels and not self.patterns:
            return
        for db, event, key in events:
            if flags & notify.KEYSPACE:
                self.publish(b"__keyspace@%d__:%s" % (db, key), event)
            if flags & notify.KEYEVENT:
                self.publish(b"__keyevent@%d__:%s" % (db, event), key)

    # -- PUBSUB introspection ------------------------------------------------------------
    def channel_names(self, pattern: bytes | None, shard: bool = False) -> list[bytes]:
        """The active channels (with a subscriber), matching ``pattern`` when given."""
        table = self.shard_channels if shard else self.channels
        if pattern is None:
            return list(table)
        match = compile_glob(pattern, bounded=True)
        return [c for c in table if match(c)]

    def numsub(self, channels: Iterable[bytes], shard: bool = False) -> list[object]:
        """``channel, count, channel, count ...`` (PUBSUB NUMSUB / SHARDNUMSUB)."""
        table = self.shard_channels if shard else self.channels
        out: list[object] = []
        for c in channels:
            out += (c, len(table.get(c, ())))
        return out

    # -- MONITOR -------------------------------------------------------------------------
    def feed_monitors(self, client: ClientState, db: int, argv: list[bytes]) -> None:
        """Send one command line to every MONITOR client, as Redis' replicationFeedMonitors
        formats it: ``<unix time with microseconds> [<db> <ip:port>] "arg" ...``."""
        now = time.time()
        line = b'%d.%06d [%d %s] %s' % (int(now), int(now * 1_000_000) % 1_000_000, db,
                                        client.addr.encode(),
                                        b" ".join(map(quote, redact(argv))))
        frame = Status(line)
        for monitor in list(self.monitors.values()):
            _deliver(monitor, frame)


def _deliver(client: ClientState, frame: object) -> int:
    push = client.push
    if push is None:
        return 0
    return 1 if push(frame) else 0


_PLAIN: Final = re.compile(rb'[ !#-\[\]-~]*')
_ESCAPES: Final = {ord("\\"): b"\\\\", ord('"'): b'\\"', ord("\n"): b"\\n",
                   ord("\r"): b"\\r", ord("\t"): b"\\t", 7: b"\\a", 8: b"\\b"}


def quote(arg: bytes) -> bytes:
    """``arg`` quoted as Redis' sdscatrepr: printable bytes as they are, the usual
    escapes, others as ``\\xHH``."""
    if _PLAIN.fullmatch(arg) is not None:
        return b'"' + arg + b'"'
    out = bytearray(b'"')
    for b in arg:
        esc = _ESCAPES.get(b)
        if esc is not None:
            out += esc
        elif 32 <= b < 127:
            out.append(b)
        else:
            out += b"\\x%02x" % b
    out += b'"'
    return bytes(out)


__all__ = ["PubSub", "quote", "redact"]
