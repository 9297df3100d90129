"""One client connection: its state and the asyncio protocol that serves it.

Flow: bytes arrive -> :class:`~shaledb.server.net.protocol.RequestReader` cuts them into
requests -> they run in order (pipelining) on the event loop, the write commands among them
buffered in the transaction shared by every client of this loop turn
(:class:`~shaledb.server.exec.dispatch.TurnCommit`) -> the replies are parked until the end of
the turn, when those writes are committed -> the replies go out, one ``write`` per batch of
up to OUTPUT_BATCH bytes. With ``appendfsync always`` the
replies of a batch that wrote are held until an fsync covering those writes is done
(:mod:`shaledb.server.exec.durability`); later replies queue behind them, so a client always sees
its replies in order.

Bounds: the reader limits the buffered request bytes; the requests of one read run until
OUTPUT_BATCH bytes of replies are parked or for RUN_SLICE seconds (the rest runs after the
turn's replies are sent, other clients' requests in between),
and when the socket's send buffer is then full
(the client does not read its replies), or held replies pile up, the connection stops running
requests and reading until they drain. So a pipelining client cannot make the server buffer
without limit. One reply can still ask for a lot (KEYS, MGET of many big values): every
reply is charged to ``client_output_buffer_limit`` as it is produced (``output_budget``,
set before each command; MGET, KRANGE, KEYS, SCAN and EXEC build theirs with an
:class:`~shaledb.server.net.protocol.ArrayBuilder` and stop the moment it passes), and a client
past the limit is disconnected at once, its pending output dropped, as Redis does at its
hard limit. With command rate limits, a client without
a token stops being run and read until one is due (no error). A handler may return a
:class:`~shaledb.server.exec.deferred.Deferred` reply (SAVE): the client's later requests wait
for it, other clients do not. A malformed request gets ``-ERR Protocol error: ...`` after
the replies to the requests before it, and the connection is closed. Shutdown answers every
request already read before closing (:meth:`ClientConnection.close_when_sent`). Until a
client has authenticated, each request may have at most 10 arguments of at most 16 KiB
each, as in Redis (:data:`~shaledb.server.net.security.UNAUTHENTICATED_LIMITS`): the reader
checks them at every header, so a whole request that came in one read is refused as surely
as one still arriving.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from ..admin.logs import CLIENT_LOG, printable
from ..errors import CommandError, ProtocolError
from ..exec.client import NO_LIMIT, ClientState
from ..exec.context import Services
from ..exec.deferred import CLOSE, Deferred, Written
from ..exec.dispatch import WriteGroup
from .protocol import OK, SMALL_INTS, SPLIT_BULK, Encoded, RequestReader, Status, encode
from .security import PROTECTED_MODE_DENIED, UNAUTHENTICATED_LIMITS

if TYPE_CHECKING:
    from ..exec.dispatch import Dispatcher, TurnCommit
    from ..exec.durability import SyncGroup

log = logging.getLogger("shaledb.server")

#: Held replies (waiting for an fsync) after which the connection stops reading.
MAX_HELD_BYTES: Final = 1 << 20
#: Reply bytes produced before they are handed to the transport; if the transport then
#: reports a full send buffer, the connection stops running requests until it drains.
OUTPUT_BATCH: Final = 256 * 1024
#: Seconds of commands one client runs per event-loop turn: a pipeline of slow commands
#: (each SCAN may take 50 ms) goes on after the turn's replies are sent, and the other
#: clients are served in between.
RUN_SLICE: Final = 0.05
#: Pause reasons that stop running requests (the others only stop reading).
_BLOCKING: Final = frozenset(("write", "fsync", "throttle", "deferred", "blocked"))
#: Pauses that run nothing but keep reading: a client blocked on keys (BLPOP) must be seen
#: to disconnect, as Redis sees it, or it would stay in the wait queue and take a pushed
#: element that nobody reads. What it sends meanwhile queues up to the backlog bound.
_READING: Final = frozenset(("blocked",))


#: Commands whose replies are pub/sub messages (sent even under CLIENT REPLY OFF).
_SUBSCRIBING: Final = frozenset((
    "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe"))
#: Reply types reply_size() counts as 16 bytes whatever their value (OK, integers, nil).
_SMALL_REPLIES: Final = frozenset((Status, int, type(None), bool, float))
#: A reply that sends nothing (CLIENT REPLY OFF / SKIP).
_SILENT: Final = Encoded([], 0)

#: Reply bytes for the transport: one string, or several (big values kept apart).
Output = bytes | list[bytes]


def _write(transport: asyncio.Transport, data: Output) -> None:
    if isinstance(data, bytes):
        transport.write(data)
    else:
        transport.writelines(data)


def _coalesce(parts: list[bytes]) -> Output:
    """``parts`` for the transport: small ones joined, big values left apart (uvloop's
    writelines keeps a reference instead of a copy: a 200 MiB MGET reply then costs the
    server 200 MiB, not twice that)."""
    if len(parts) == 1:
        return parts[0]
    if max(map(len, parts), default=0) < SPLIT_BULK:
        return b"".join(parts)
    chunks: list[bytes] = []
    small: list[bytes] = []
    for part in parts:
        if len(part) < SPLIT_BULK:
            small.append(part)
            continue
        if small:
            chunks.append(b"".join(small))
            small = []
        chunks.append(part)
    if small:
        chunks.append(b"".join(small))
    return chunks


def socket_peer(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    """The client's (IP, port), or None when it is unknown: uvloop asks the socket
    (getpeername) only now, and a client that reset its connection before it was accepted
    has none any more. The server listens only on TCP, so None never means "local": such a
    connection is refused."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return None


#: How a connection learns its peer: tests replace it to play a remote client. A variable, not
#: a function: compiled code (mypyc) binds calls to functions at build time but reads module
#: variables at run time, so the replacement reaches the compiled build too.
peer_address: Callable[[asyncio.BaseTransport], tuple[str, int] | None] = socket_peer
#: Module attributes tests may replace in the compiled build (tests/conftest.py checks).
__test_seams__ = ("peer_address",)


def may_reconfigure(client: ClientState, argv: list[bytes]) -> bool:
    """Whether ``argv`` is a CONFIG command its user may run. Rate limits never hold those
    back: whoever may undo a limit always can, however many commands the same IP sends."""
    if argv[0].lower() != b"config" or not client.authenticated or len(argv) < 2:
        return False
    user = client.user
    return user.unrestricted or user.command_allowed(
        "config|" + argv[1].lower().decode("latin-1"))


def reply_size(reply: Any) -> int:
    """About how many bytes ``reply`` takes on the wire (strings and arrays of them)."""
    t = type(reply)
    if t is bytes:
        return len(reply) + 16
    if t is Encoded:
        return cast(Encoded, reply).size
    if t is list or t is tuple:
        return 16 + sum(reply_size(r) for r in reply)
    if t is dict:
        return 16 + sum(reply_size(k) + reply_size(v) for k, v in reply.items())
    return 16


class ConnectionHost(Services, Protocol):
    """The server as its connections see it: the services plus the accept-time checks, the
    event loop, the turn's shared transaction and the dispatcher (satisfied by
    :class:`shaledb.server.server.Server`; a Protocol so that this module need not import
    the server, which imports it)."""

    connections: dict[int, ClientConnection]
    accepting: bool
    #: True while a connection runs commands (guards against running two at once).
    executing: bool
    sync_group: SyncGroup | None
    dispatcher: Dispatcher

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def turn(self) -> TurnCommit: ...
    def new_client_id(self) -> int: ...
    def refuses_peer(self, host: str | None) -> bool: ...


class ClientConnection(asyncio.Protocol):
    """The asyncio protocol of one client connection."""

    def __init__(self, server: ConnectionHost, tls: ssl.SSLContext | None = None) -> None:
        self.server = server
        #: The raw TCP transport until a TLS handshake is done, then the TLS one.
        self.transport: asyncio.Transport | None = None
        #: A connection to the TLS port: the handshake runs after the accept, on a connection
        #: already counted against maxclients (None once it is done, and for plain TCP).
        self._tls = tls
        #: Bytes the TLS layer delivered before the handshake task resumed (None: none
        #: expected).
        self._early: list[bytes] | None = None
        self._handshake: asyncio.Task[None] | None = None
        self.client: ClientState | None = None
        cfg = server.config
        self.reader = RequestReader(cfg.proto_max_bulk_len, cfg.client_query_buffer_limit)
        #: Replies waiting for an fsync: (bytes, size, future or None), in order.
        self._held: collections.deque[tuple[Output, int, asyncio.Future[None] | None]] = \
            collections.deque()
        self._held_bytes = 0
        self._waiting: asyncio.Future[None] | None = None
        self._pause: set[str] = set()
        #: Requests read but not yet run (at most one read's worth: reading stops meanwhile).
        self._requests: collections.deque[list[bytes]] = collections.deque()
        self._error: ProtocolError | None = None
        #: Reply batches waiting for the end of this event-loop turn (a WriteGroup, or bytes
        #: queued behind one), in order, and about how many bytes they hold.
        self._parked: list[WriteGroup | Output] = []
        self._parked_bytes = 0
        self.closing = False
        #: When the output went above the soft limit of the pubsub class (None: it is not).
        self._soft_since: float | None = None
        #: The batch of replies being produced by this connection's commands right now: a
        #: message it publishes to itself goes there, after the replies before it.
        self._group: WriteGroup | None = None

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the client, or refuse it (unknown address, protected mode, maxclients
        reached, or shutting down). A connection to the TLS port is counted from here, as
        in Redis, and then does its handshake (:meth:`_tls_handshake`): connections stuck
        in a handshake hold descriptors, and uncounted they used up those the engine
        needs."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = peer_address(transport)
        server = self.server
        if peer is None:
            # Fail closed: without an address neither protected mode nor the per-IP limits
            # can decide, and the client is gone anyway (reset before the accept).
            self.closing = True
            CLIENT_LOG.log(log, logging.WARNING, "unknown-peer", "refused a client with an "
                           "unknown address (the connection was reset before it was accepted)")
            transport.abort()
            server.stats["rejected_connections"] += 1
            server.stats["unknown_peer_refusals"] += 1
            return
        host = peer[0]
        addr = f"{peer[0]}:{peer[1]}"
        # A TLS client can only read the DENIED line after its handshake (as in Redis).
        if self._tls is None and self._refuse_protected(transport, host, addr):
            return
        if not server.accepting or len(server.connections) >= server.config.maxclients:
            self.closing = True
            if self._tls is None:  # a TLS client could not read a plain-text line
                transport.write(b"-ERR max number of clients reached\r\n" if server.accepting
                                else b"-ERR server is shutting down\r\n")
            transport.close()
            server.stats["rejected_connections"] += 1
            return
        self.client = ClientState(server.new_client_id(), addr, server.acl.default,
                                  server.acl.default_open(), host)
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            self.client.laddr = f"{local[0]}:{local[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.client.fd = sock.fileno()
        server.connections[self.client.id] = self
        self.client.push = self.push
        server.stats["total_connections_received"] += 1
        if self._tls is not None:
            transport.pause_reading()  # start_tls takes the transport over
            self._early = []
            self._handshake = server.loop.create_task(
                self._tls_handshake(transport, host, addr))

    def _refuse_protected(self, transport: asyncio.Transport, host: str, addr: str) -> bool:
        """Refuse the client when protected mode says so (DENIED, then close)."""
        server = self.server
        if not server.refuses_peer(host):
            return False
        self.closing = True
        CLIENT_LOG.log(log, logging.WARNING, "protected-mode",
                       "refused client %s: protected mode (no password is set)", addr,
                       extra={"client": addr})
        transport.write(PROTECTED_MODE_DENIED)
        transport.close()
        server.stats["rejected_connections"] += 1
        server.stats["protected_mode_refusals"] += 1
        return True

    async def _tls_handshake(self, raw: asyncio.Transport, host: str, addr: str) -> None:
        """Run the TLS handshake of an accepted, counted connection, within
        tls-handshake-timeout; a failure forgets the connection."""
        server = self.server
        assert self._tls is not None
        try:
            tls = await server.loop.start_tls(
                raw, self, self._tls, server_side=True,
                ssl_handshake_timeout=server.config.tls_handshake_timeout)
        except Exception as exc:  # noqa: BLE001 - a bad or silent client: drop it
            server.stats["tls_handshake_failures"] += 1
            reason = str(exc) or type(exc).__name__
            CLIENT_LOG.log(log, logging.INFO, "tls-handshake", "TLS handshake with %s failed: %s",
                           addr, printable(reason))
            raw.abort()
            self.connection_lost(None)
            return
        except BaseException:
            raw.abort()
            self.connection_lost(None)
            raise
        tls = cast(asyncio.Transport, tls)
        self._tls = None
        self.transport = tls
        early, self._early = self._early or [], None
        if self.closing or tls.is_closing():  # closed during the handshake
            tls.abort()
            self.connection_lost(None)
            return
        if self._refuse_protected(tls, host, addr):
            self.connection_lost(None)
            return
        for data in early:
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the client and its watched keys; its SCAN cursors join the orphans."""
        self.closing = True
        if self.client is not None:
            self.server.watches.unwatch_all(self.client)
            self.server.blocking.cancel(self.client)
            self.server.pubsub.forget(self.client)
            self.client.push = None
            self.server.connections.pop(self.client.id, None)
            self.server.scan_cursors.release(self.client.id)

    def pause_writing(self) -> None:
        """The send buffer is full: stop running requests and reading."""
        self._set_paused("write", True)

    def resume_writing(self) -> None:
        """The send buffer drained: run what is queued, read again."""
        self._set_paused("write", False)

    def data_received(self, data: bytes) -> None:
        """Cut ``data`` into requests and run them."""
        client = self.client
        if self.closing or client is None:
            return
        if self._early is not None:  # the TLS layer, before _tls_handshake resumed
            self._early.append(data)
            return
        client.last_active = time.monotonic()
        self.server.stats["total_net_input_bytes"] += len(data)
        self._feed(data)
        self._process()

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` (and what the reader holds) into requests, with the limits of a
        client that has not authenticated while that is the case. The reader stops before
        a request over those limits while requests before it wait to run (one may be an
        AUTH, which Redis runs before it parses on); :meth:`_process` feeds it again once
        they ran."""
        client = self.client
        assert client is not None
        self.reader.unauthenticated = None if client.authenticated else UNAUTHENTICATED_LIMITS
        try:
            self.reader.feed(data, self._requests)
        except ProtocolError as exc:
            self._error = exc

    def _process(self) -> None:
        """Run queued requests in order until none is left, or until the replies waiting to
        be sent pass OUTPUT_BATCH (then reading stops until the client takes them)."""
        client = self.client
        assert client is not None
        requests = self._requests
        if self.transport is None or self.transport.is_closing():
            requests.clear()  # the client is gone: nobody would read the replies
            return
        server = self.server
        if server.executing:
            # Called back while another client's command runs (a turn commit released our
            # replies and unpaused us): never interleave two clients' commands.
            server.loop.call_soon(self._process)
            return
        ks = server.keyspace
        turn = server.turn
        execute = server.dispatcher.execute
        stats = server.stats
        limits = server.rate_limits if server.rate_limits.active else None
        server.executing = True
        deadline = perf_counter() + RUN_SLICE
        try:
            while (requests and not self._blocked() and not client.close_after_reply
                   and self._parked_bytes < OUTPUT_BATCH and perf_counter() < deadline):
                group = WriteGroup(turn)
                replies = group.replies
                size = 0
                writes_before = ks.writes
                deferred: Deferred | None = None
                deferred_resp = 2
                # What the client may still be sent before client_output_buffer_limit: every
                # reply is charged to it as it is produced (by an ArrayBuilder while it is
                # being built), so no request makes the server hold more than the limit.
                limit = self._hard_limit()
                room = (limit - self.output_bytes - self._parked_bytes) if limit > 0 \
                    else NO_LIMIT
                # A message the client publishes to itself goes into this batch.
                self._group = group
                while requests and size < OUTPUT_BATCH:
                    if limits is not None and not may_reconfigure(client, requests[0]):
                        wait = limits.wait(client)
                        if wait > 0:
                            self._throttle(wait)
                            break
                    client.output_budget = room - size
                    execute(client, requests.popleft(), group)
                    reply = replies[-1]
                    stats["total_commands_processed"] += 1
                    t = type(reply)
                    if (client.reply_off or client.skip_replies) and t is not Deferred:
                        reply = self._silence(replies, group)
                        t = type(reply)
                    if t is Deferred:
                        deferred = replies.pop()
                        deferred_resp = group.protocols.pop()
                        break
                    reply_bytes = len(reply) + 16 if t is bytes else \
                        16 if t in _SMALL_REPLIES else reply_size(reply)
                    if reply_bytes > client.output_budget:
                        client.output_overflow = True
                    size += reply_bytes
                    # QUIT, or a reply passed the output limit (the client is disconnected):
                    # nothing after it runs, as in Redis.
                    if client.close_after_reply or client.output_overflow \
                            or perf_counter() > deadline:
                        break
                self._group = None
                if client.output_overflow:
                    waiting = bool(self._parked)
                    self._disconnect_overflow(size)
                    if group.pending and not waiting:
                        turn.hold(self)  # the writes it ran (EXEC's) are committed still
                    return
                if ks.writes != writes_before:  # FLUSHDB, or a commit this batch forced
                    group.wrote = True
                # Every reply is sent at the end of the turn, after its commit, as Redis
                # writes replies before it sleeps: one send per client per turn, and the
                # clients' requests are all read first. (Sending at once halved GET -P 1
                # throughput: every write woke the benchmark client mid-turn.)
                if not self._parked:
                    turn.hold(self)
                self._parked.append(group)
                self._parked_bytes += size
                if deferred is not None:
                    self._await(deferred, deferred_resp)
        finally:
            server.executing = False
            self._group = None
        if requests and not client.close_after_reply:
            self._set_paused("backlog", True)  # a bounded backlog: stop reading more
            return
        if "backlog" in self._pause:
            self._set_paused("backlog", False)
        if self.reader.held and self._error is None and not self.closing \
                and not client.close_after_reply:
            self._feed(b"")  # the requests before a large one ran: parse on
            if requests:
                self._process()
                return
        if self._error is not None and not client.close_after_reply and (
                "deferred" not in self._pause and "blocked" not in self._pause):
            CLIENT_LOG.log(log, logging.INFO, "protocol-error", "closing client %s: %s",
                           client.addr, printable(str(self._error)), extra={"client": client.addr})
            server.command_stats.error_reply(self._error.prefix)
            self._send(self._error.reply(), False)
            client.close_after_reply = True
        if client.close_after_reply or self.closing:
            self.close_when_sent()

    def _throttle(self, wait: float) -> None:
        """Out of rate-limit tokens: run and read nothing for ``wait`` seconds."""
        self.server.stats["rate_limited_waits"] += 1
        self._set_paused("throttle", True)
        asyncio.get_running_loop().call_later(wait, self._set_paused, "throttle", False)

    def _await(self, deferred: Deferred, resp: int) -> None:
        """Send ``deferred``'s reply when it is ready; run nothing of this client until
        then."""
        reason = "blocked" if deferred.blocking else "deferred"
        self._set_paused(reason, True)

        def done(fut: asyncio.Future[Any]) -> None:
            client = self.client
            assert client is not None
            if fut.cancelled():
                reply: Any = CommandError("the command was cancelled (server shutting down)")
            elif fut.exception() is not None:
                exc = fut.exception()
                reply = exc if isinstance(exc, CommandError) else CommandError(
                    f"{type(exc).__name__}: {exc}")
            else:
                reply = fut.result()
            wrote = type(reply) is Written
            if wrote:
                reply = reply.reply
            if reply is CLOSE:
                client.close_after_reply = True
                self._requests.clear()
            elif self.transport is not None and not self.transport.is_closing():
                out: list[bytes] = []
                encode(reply, resp, out)
                self._send(_coalesce(out), wrote)
            self._set_paused(reason, False)
            if self._error is not None and not self._requests:
                self._process()  # the protocol error read after this request
            elif client.close_after_reply or self.closing:
                self.close_when_sent()

        deferred.future.add_done_callback(done)

    @staticmethod
    def _encode(group: WriteGroup) -> Output:
        """The batch's replies as one byte string (or several, big values apart). The
        replies most commands give -- a short bulk string, OK, nil, a small integer -- are
        encoded here without a call each."""
        out: list[bytes] = []
        append = out.append
        small = True  # only parts shorter than SPLIT_BULK + 32 so far: one join
        for reply, resp in zip(group.replies, group.protocols, strict=True):
            t = type(reply)
            if t is bytes and len(reply) < SPLIT_BULK:
                append(b"$%d\r\n%s\r\n" % (len(reply), reply))
            elif reply is OK:
                append(b"+OK\r\n")
            elif reply is None:
                append(b"_\r\n" if resp == 3 else b"$-1\r\n")
            elif t is int and 0 <= reply < len(SMALL_INTS):
                append(SMALL_INTS[reply])
            else:
                encode(reply, resp, out)
                small = False
        if small:
            return out[0] if len(out) == 1 else b"".join(out)
        return _coalesce(out)

    def turn_committed(self) -> None:
        """The turn's writes are committed: send the parked replies (each batch waits for an
        fsync under ``appendfsync always`` when its writes were committed)."""
        parked, self._parked = self._parked, []
        self._parked_bytes = 0
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for item in parked:
            if isinstance(item, WriteGroup):
                self._send(self._encode(item), item.wrote)
            else:
                self._send(item, False)
            if self._overflowed():  # disconnected: the rest is dropped, counted once
                return
        if not self._held and (self._quitting() or (self.closing and not self._requests)):
            transport.close()
        elif self._requests and not self._blocked() and self.client is not None \
                and not self.client.close_after_reply:
            self._process()  # stopped at OUTPUT_BATCH of parked replies: go on

    # -- output --------------------------------------------------------------------------
    @property
    def output_bytes(self) -> int:
        """Reply bytes not yet handed to the kernel: the transport's buffer plus replies
        held for an fsync."""
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return buffered + self._held_bytes

    def _overflowed(self) -> bool:
        """Whether the client was disconnected for passing the output buffer limit."""
        return self.client is not None and self.client.output_overflow

    def _hard_limit(self) -> int:
        """The hard output limit of the client's class: ``pubsub`` while it is subscribed
        (as Redis' getClientType), else ``normal`` (0: none)."""
        client = self.client
        if client is not None and client.subscribed:
            return self.server.config.client_output_buffer_limit_pubsub[0]
        return self.server.config.client_output_buffer_limit

    def _over_limit(self, size: int) -> bool:
        client = self.client
        if client is None:
            return False
        if client.output_overflow:
            return True
        pending = self.output_bytes + size
        limit = self._hard_limit()
        if limit > 0 and pending > limit:
            return True
        if not client.subscribed:
            return False
        # The soft limit of the pubsub class: above it for longer than its seconds.
        _, soft, seconds = self.server.config.client_output_buffer_limit_pubsub
        if soft <= 0 or pending <= soft:
            self._soft_since = None
            return False
        now = time.monotonic()
        if self._soft_since is None:
            self._soft_since = now
        return now - self._soft_since > seconds

    def _silence(self, replies: list[Any], group: WriteGroup) -> Any:
        """CLIENT REPLY OFF / SKIP: drop the reply just produced -- not the messages of a
        (un)subscribe, which Redis sends as pushes whatever the reply mode."""
        client = self.client
        assert client is not None
        if client.skip_replies:
            client.skip_replies -= 1
        if client.cmd in _SUBSCRIBING:
            return replies[-1]
        replies[-1] = _SILENT
        index = len(replies) - 1
        if index in group.pending:  # a failed commit must not make it reappear either
            group.pending.remove(index)
        return _SILENT

    def push(self, message: Any) -> bool:
        """Send an out-of-band message (pub/sub, MONITOR) in the client's protocol, behind
        the replies already waiting; past the output limit the client is disconnected.
        Whether the message was taken (not when the client is gone or going)."""
        client = self.client
        transport = self.transport
        if client is None or transport is None or transport.is_closing() or self.closing:
            return False
        out: list[bytes] = []
        encode(message, client.resp, out)
        group = self._group
        if group is not None:  # published by its own command: behind the earlier replies
            group.replies.append(Encoded(out, sum(map(len, out))))
            group.protocols.append(client.resp)
            return True
        self._send(_coalesce(out), False)
        return not client.output_overflow

    def send_raw(self, data: bytes) -> bool:
        """Write bytes as they are (a replication stream to a replica, which has replies
        off); whether they were taken. The feeder bounds what it leaves unsent."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.closing:
            return False
        self.server.stats["total_net_output_bytes"] += len(data)
        if self.client is not None:
            self.client.last_active = time.monotonic()
        transport.write(data)
        return True

    def _disconnect_overflow(self, size: int) -> None:
        """The client's output passed client_output_buffer_limit: drop everything it has
        pending and close, as Redis does at the hard limit."""
        client = self.client
        assert client is not None
        CLIENT_LOG.log(log, logging.WARNING, "output-limit",
                       "closing client %s (id %d, cmd %s): output buffer limit of %d bytes "
                       "exceeded (%d bytes pending, reply of %d)", client.addr, client.id,
                       client.cmd, self._hard_limit(),
                       self.output_bytes, size)
        self.server.stats["client_output_buffer_limit_disconnections"] += 1
        client.output_overflow = True
        client.close_after_reply = True
        self._requests.clear()
        self._held.clear()
        self._parked.clear()
        self._parked_bytes = 0
        self._held_bytes = 0
        self.closing = True
        if self.transport is not None:
            self.transport.abort()  # frees the buffered output now, unlike close()

    def _send(self, data: Output, wrote: bool) -> None:
        size = len(data) if isinstance(data, bytes) else sum(map(len, data))
        if self._parked:  # behind replies that wait for the end of the turn
            # Charged now, not when the turn ends: a publisher's pipeline could otherwise
            # park a whole turn of messages (hundreds of MB) for a subscriber that had just
            # run a command of its own.
            if self._over_limit(size + self._parked_bytes):
                self._disconnect_overflow(size)
                return
            self._parked.append(data)
            self._parked_bytes += size
            return
        if self._over_limit(size):
            self._disconnect_overflow(size)
            return
        self.server.stats["total_net_output_bytes"] += size
        sync = self.server.sync_group
        if not self._held and (sync is None or not wrote):
            assert self.transport is not None
            _write(self.transport, data)
            return
        # Behind held replies even when appendfsync left ``always`` since they were held
        # (they keep their fsync): a client sees its replies in order.
        self._held.append((data, size, sync.barrier() if wrote and sync is not None else None))
        self._held_bytes += size
        if self._held_bytes > MAX_HELD_BYTES:
            self._set_paused("fsync", True)
        self._release()

    def _release(self, _: object = None) -> None:
        transport = self.transport
        assert transport is not None
        while self._held:
            data, size, fut = self._held[0]
            if fut is not None:
                if not fut.done():
                    if self._waiting is not fut:
                        self._waiting = fut
                        fut.add_done_callback(self._release)
                    return
                exc = fut.exception()
                if exc is not None:
                    # The writes are not known to be durable: never acknowledge them.
                    self._held.clear()
                    self._held_bytes = 0
                    if not transport.is_closing():
                        # sync-replicas: too few replicas acknowledged (its own error).
                        transport.write(exc.reply() if isinstance(exc, CommandError)
                                        else CommandError(
                            f"fsync failed, writes not acknowledged: {exc}",
                            prefix="MISCONF").reply())
                        transport.close()
                    return
            self._held.popleft()
            self._held_bytes -= size
            if not transport.is_closing():
                _write(transport, data)
        self._set_paused("fsync", False)
        if not self._parked and (self._quitting() or (self.closing and not self._requests)):
            transport.close()

    def _quitting(self) -> bool:
        return self.client is not None and self.client.close_after_reply

    def _blocked(self) -> bool:
        """Whether requests must wait: replies must drain, a rate-limit token is not due
        yet, or a deferred reply is not ready."""
        return not self._pause.isdisjoint(_BLOCKING)

    def _set_paused(self, reason: str, paused: bool) -> None:
        """Reading stops while any reason holds: "write" (send buffer full), "fsync"
        (held replies), "backlog" (requests read but not run), "throttle" (rate limit),
        "deferred" (a reply being prepared). "blocked" (waiting on keys) runs nothing
        but keeps reading, to see the client go."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        before = not self._pause <= _READING
        if paused:
            self._pause.add(reason)
        else:
            self._pause.discard(reason)
        stop = not self._pause <= _READING
        if stop != before:
            if stop:
                transport.pause_reading()
            else:
                transport.resume_reading()
        if not paused and reason != "backlog" and self._requests and self.client is not None:
            self._process()

    @property
    def holding(self) -> bool:
        """Whether replies are waiting for a commit or an fsync."""
        return bool(self._held or self._parked)

    def close_when_sent(self) -> None:
        """Read nothing more; close once every request already read has been answered and
        every reply (held ones included) handed to the transport, which sends it before
        closing."""
        self.closing = True
        if (self.transport is not None and not self._held and not self._parked
                and "deferred" not in self._pause and "blocked" not in self._pause
                and (not self._requests or self._quitting())):
            self.transport.close()

    def abort(self, message: bytes | None = None) -> None:
        """Close now, after an optional last error line (idle timeout, shutdown)."""
        self.closing = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if message:
                transport.write(message)
            transport.close()

    def drop(self) -> None:
        """Close now and discard the output not yet sent (a replica link dropped for its
        unsent stream: close() would keep that buffer until the peer read it, which a
        replica that stopped reading never does)."""
        self.closing = True
        transport = self.transport
        if transport is not None:
            transport.abort()

    def memory(self) -> dict[str, int]:
        """The CLIENT LIST sizes this connection knows: query buffer (qbuf), requests read
        but not run (argv-mem), held replies (oll) and reply bytes not yet sent (omem)."""
        return {"qbuf": self.reader.buffered,
                "argv-mem": sum(len(a) for r in self._requests for a in r),
                "oll": len(self._held), "omem": self.output_bytes}

    def events(self) -> str:
        """What the connection waits for, as CLIENT LIST shows it: r (reading), w (output
        to send)."""
        transport = self.transport
        reading = transport is not None and not transport.is_closing() and not self._pause
        return ("r" if reading else "") + ("w" if self.output_bytes else "")

    def info(self) -> dict[str, Any]:
        """A summary for logs and tests."""
        c = self.client
        return {"id": c.id if c else None, "addr": c.addr if c else None,
                "buffered": self.reader.buffered, "held": len(self._held)}
