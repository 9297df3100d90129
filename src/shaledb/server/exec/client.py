"""The state of one client, whatever carries its requests.

:class:`ClientState` is what the execution layer and the command handlers know about a
client: selected database, protocol version, user, MULTI queue, watched keys, name, output
budget. It is kept apart from the asyncio connection (:mod:`shaledb.server.net.connection`,
which owns one) so that the layers below the network never import it: a Lua script's
``redis.call`` or a client woken from a blocking command runs as a ``ClientState`` too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ..admin.acl import User

#: The output budget of a client when client_output_buffer_limit is 0 (no limit).
NO_LIMIT: Final = sys.maxsize


class ClientState:
    """Everything the server knows about one client: selected database, protocol version,
    authentication, MULTI queue, watched keys, name."""

    __slots__ = ("id", "addr", "host", "name", "db", "resp", "user", "authenticated", "multi",
                 "multi_bytes", "multi_error", "watched", "dirty_cas", "close_after_reply", "lib",
                 "created", "last_active", "laddr", "fd", "cmd", "output_overflow",
                 "ever_authenticated", "output_budget", "exec_started", "channels", "patterns",
                 "shard_channels", "monitor", "push", "reply_off", "skip_replies", "subscribed",
                 "sync_wrote", "sync_last_write", "__weakref__")

    def __init__(self, client_id: int, addr: str, user: User, authenticated: bool,
                 host: str | None = None) -> None:
        self.id = client_id
        #: "ip:port" for display; ``host`` is the IP alone (None for a Unix socket).
        self.addr = addr
        self.host = host
        self.name = b""
        self.db = 0
        self.resp = 2
        #: The ACL user whose permissions apply; commands need ``authenticated`` too.
        self.user = user
        self.authenticated = authenticated
        #: Authenticated at some point: auth-timeout no longer applies (RESET logs out a
        #: client that has shown its password; it is not a silent connection).
        self.ever_authenticated = authenticated
        #: Queued requests between MULTI and EXEC; None outside MULTI.
        self.multi: list[list[bytes]] | None = None
        self.multi_bytes = 0
        #: A command failed to queue: EXEC answers EXECABORT.
        self.multi_error = False
        self.watched: dict[tuple[int, bytes], int] = {}
        self.dirty_cas = False
        self.close_after_reply = False
        self.lib: dict[str, bytes] = {}
        self.created = time.monotonic()
        self.last_active = self.created
        #: Local "ip:port" and socket file descriptor (CLIENT LIST).
        self.laddr = ""
        self.fd = -1
        #: The last command run, as CLIENT LIST shows it (``client|list``).
        self.cmd = "NULL"
        #: A reply passed client_output_buffer_limit while being built: disconnect.
        self.output_overflow = False
        #: Reply bytes the running command may still produce before the client passes
        #: client_output_buffer_limit (set by the connection before each command).
        self.output_budget = NO_LIMIT
        #: perf_counter() when the running EXEC started (None outside EXEC): the SCANs it
        #: queued share one time budget, counted from there.
        self.exec_started: float | None = None
        #: Pub/sub subscriptions (:mod:`shaledb.server.exec.pubsub`), in the order made.
        self.channels: dict[bytes, None] = {}
        self.patterns: dict[bytes, None] = {}
        self.shard_channels: dict[bytes, None] = {}
        #: Whether any of the three is non-empty (kept by PubSub; read for every command).
        self.subscribed = False
        #: In MONITOR mode: sent every command the server runs.
        self.monitor = False
        #: CLIENT REPLY OFF: replies are dropped; SKIP: the replies of this many commands
        #: (the SKIP and the next) are. Pub/sub messages are sent all the same.
        self.reply_off = False
        self.skip_replies = 0
        #: Sends an out-of-band message (a pub/sub message, a MONITOR line) to the client,
        #: charged to its output buffer limit; set by the connection (None: nowhere). False
        #: when the client is gone or was just disconnected for it.
        self.push: Callable[[Any], bool] | None = None
        #: sync-replicas (exec/replication.py, ``Replication.sync_read``): a write command
        #: ran since ``sync_last_write`` was set, and a sequence number at or past that of
        #: this client's last write: its reads wait for that write's acknowledgements
        #: rather than read a view without it.
        self.sync_wrote = False
        self.sync_last_write = 0

    @property
    def subscriptions(self) -> int:
        """How many channels, patterns and shard channels the client is subscribed to."""
        return len(self.channels) + len(self.patterns) + len(self.shard_channels)

    def __repr__(self) -> str:
        return f"<ClientState id={self.id} addr={self.addr} db={self.db}>"


__all__ = ["NO_LIMIT", "ClientState"]
