"""The HTTP endpoint of ``GET /metrics`` and ``GET /health``: a minimal HTTP/1.1 responder on
the server's event loop.

One request per connection (every response says ``Connection: close``). Only what a
Prometheus scraper, a load balancer's health check or curl sends is understood: a request
line and headers, no body. Bounds: the request head must arrive within
``metrics_header_timeout`` seconds (408 otherwise) and fit in MAX_REQUEST_BYTES (431), at
most MAX_CONNECTIONS connections are open at once, and a response not taken by the client
within SEND_TIMEOUT is dropped. When a new connection finds the table full, the oldest
connection still waiting for its request head is closed with 408 to make room (503 only
when every connection is past its head, i.e. sending): connections that send nothing --
no authentication is needed to open one -- can never keep a health probe out, which sends
its request at once. A connection whose whole request head has arrived but not been read
yet (in the socket, in its reader's buffer, or split between them: the loop accepts a burst of
connections before it reads any) is never the one evicted: a probe that came just before a
flood was. Nor is one that sent nothing yet while one that sent part of a head (a
slowloris) is waiting. Methods other than GET and HEAD get 405, other paths 404, and a
failure while building the answer 500 (logged). The page is built on the loop, like any
command, so a scrape costs the clients the time of one ``db.stats()`` and some string
formatting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Final

from .metrics import CONTENT_TYPE, exposition, health

if TYPE_CHECKING:
    from ..exec.context import Services

log = logging.getLogger("shaledb.server.metrics")

#: Largest request head (request line and headers) accepted, in bytes.
MAX_REQUEST_BYTES: Final = 8 * 1024
#: Most connections open at once (the oldest idle one makes room for a new one).
MAX_CONNECTIONS: Final = 16
#: Seconds a client gets to take a response.
SEND_TIMEOUT: Final = 10.0

_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found",
                   405: "Method Not Allowed", 408: "Request Timeout",
                   431: "Request Header Fields Too Large", 500: "Internal Server Error",
                   503: "Service Unavailable"}


def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
             head_only: bool = False, extra: str = "") -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode("ascii") + (b"" if head_only else body)


class MetricsEndpoint:
    """The listening socket and the requests in progress."""

    def __init__(self, server: Services) -> None:
        self.server = server
        self._listener: asyncio.Server | None = None
        self._active: set[asyncio.Task[None]] = set()
        #: The connections still waiting for their request head, oldest first.
        self._idle: dict[asyncio.Task[None],
                         tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self.requests = 0
        #: Idle connections closed to make room for a new one.
        self.evicted = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0: any free port); return the port."""
        try:
            self._listener = await asyncio.start_server(
                self._serve, host, port, limit=MAX_REQUEST_BYTES, reuse_address=True,
                backlog=self.server.config.tcp_backlog)
        except OSError as exc:  # name the endpoint: the server listens on other ports too
            raise OSError(exc.errno, f"metrics endpoint {host}:{port}: "
                                     f"{exc.strerror or exc}") from exc
        return int(self._listener.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop listening and drop the requests in progress."""
        if self._listener is not None:
            self._listener.close()
        for task in list(self._active):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self._active) >= MAX_CONNECTIONS and not self._evict_idle():
                await self._send(writer, response(503, b"too many metrics requests at once\n"))
                return
            self._active.add(task)
            self._idle[task] = (reader, writer)
            try:
                answer = await self._answer(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                raise
            except Exception:  # noqa: BLE001 - a scraper must get an answer, not a reset
                log.exception("building the metrics endpoint's response failed")
                answer = response(500, b"internal error; see the server log\n")
            finally:
                self._idle.pop(task, None)
            await self._send(writer, answer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Evicted to make room, or the server is stopping: end quietly (a cancelled
            # handler task makes asyncio's stream callback log a traceback: under a
            # connection flood, thousands of lines a second on the event loop).
            pass
        finally:
            self._active.discard(task)
            self._idle.pop(task, None)
            writer.close()

    def _evict_idle(self) -> bool:
        """Close a connection still waiting for its request head whose request has not
        arrived (408): the oldest one that sent part of a head (a slowloris: a probe sends its
        head at once), else the oldest one that sent nothing yet (it may be a probe between
        its connect and its send, so it goes last); False when there is none."""
        silent = None
        for t, (r, w) in self._idle.items():
            if _request_waiting(r, w):
                continue
            if getattr(r, "_buffer", b""):
                task = t
                break
            if silent is None:
                silent = t
        else:
            if silent is None:
                return False
            task = silent
        writer = self._idle.pop(task)[1]
        self._active.discard(task)
        self.evicted += 1
        with contextlib.suppress(Exception):
            writer.write(response(408, b"request head not received; closed to make room\n"))
            writer.close()
        task.cancel()
        return True

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        timeout = self.server.config.metrics_header_timeout
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except TimeoutError:
            return response(408, b"request head not received in time\n")
        except asyncio.LimitOverrunError:
            return response(431, b"request head too large\n")
        except ValueError:  # the limit was passed inside one read
            return response(431, b"request head too large\n")
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return response(400, b"bad request line\n")
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return response(405, b"only GET and HEAD are allowed\n", extra="Allow: GET, HEAD\r\n")
        head_only = method == b"HEAD"
        path = target.split(b"?", 1)[0]
        self.requests += 1
        if path == b"/metrics":
            return response(200, exposition(self.server).encode("utf-8"), CONTENT_TYPE,
                            head_only)
        if path == b"/health":
            status, body = health(self.server)
            return response(status, body, "application/json", head_only)
        return response(404, b"not found; try /metrics or /health\n", head_only=head_only)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer.drain(), SEND_TIMEOUT)


def _request_waiting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether a whole request head has arrived on the connection and only waits to be read:
    its end is in the reader's buffer and the bytes still in the socket (peeked, not taken)
    together. Bytes in the socket alone prove nothing: a slowloris's latest byte waits there
    too whenever the loop is busy."""
    buffered = bytes(getattr(reader, "_buffer", b""))
    if b"\r\n\r\n" in buffered:
        return True
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    # asyncio's TransportSocket has no recv(): wrap the descriptor without taking it over.
    peeker = socket.socket(fileno=sock.fileno())
    try:
        pending = peeker.recv(MAX_REQUEST_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing there (EAGAIN), or the connection is gone
        return False
    finally:
        peeker.detach()
    return b"\r\n\r\n" in buffered[-3:] + pending


__all__ = ["MAX_CONNECTIONS", "MAX_REQUEST_BYTES", "MetricsEndpoint", "SEND_TIMEOUT",
           "response"]
