"""TCP proxies the harness controls, to cut and heal network links on loopback.

Every link the harness may partition goes through a :class:`Proxy` (client -> node, node ->
node for replication, node -> etcd). :meth:`Proxy.cut` partitions it:

- ``"blackhole"``: bytes in either direction are read and dropped, connections stay open
  and new ones are accepted and ignored -- what a dropped route looks like; peers find out
  only through their own timeouts;
- ``"reset"``: every connection is aborted (RST) and new ones are aborted at once.

:meth:`Proxy.heal` restores forwarding for new connections (the ones blackholed during the
cut are aborted, as their TCP state would not survive a long partition). All proxies of a
:class:`ProxyLoop` run on one asyncio loop in one thread; ``close()`` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Final

OPEN: Final = "open"
BLACKHOLE: Final = "blackhole"
RESET: Final = "reset"
CHUNK: Final = 65536


class Proxy:
    """One listening port forwarding to ``target``."""

    def __init__(self, owner: ProxyLoop, target: tuple[str, int], name: str) -> None:
        self.owner = owner
        self.target = target
        self.name = name
        self.state = OPEN
        self.host = "127.0.0.1"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        #: Bytes forwarded and dropped (for the harness report).
        self.forwarded = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"Proxy({self.name}: {self.port} -> {self.target[1]}, {self.state})"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _abort_all(self) -> None:
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()

    async def _set(self, state: str) -> None:
        old, self.state = self.state, state
        if state == RESET or (state == OPEN and old == BLACKHOLE):
            self._abort_all()

    def cut(self, mode: str = BLACKHOLE) -> None:
        if mode not in (BLACKHOLE, RESET):
            raise ValueError(f"unknown cut mode {mode!r}")
        self.owner.run(self._set(mode))

    def heal(self) -> None:
        self.owner.run(self._set(OPEN))

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_all()

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if self.state == RESET:
            writer.transport.abort()
            return
        self._conns.add(writer)
        up_w: asyncio.StreamWriter | None = None
        try:
            if self.state == BLACKHOLE:
                await self._drain(reader)
                return
            try:
                up_r, up_w = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            self._conns.add(up_w)
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        finally:
            self._conns.discard(writer)
            for w in (writer, up_w):
                if w is not None:
                    self._conns.discard(w)
                    w.transport.abort()

    async def _drain(self, reader: asyncio.StreamReader) -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            self.dropped += len(data)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self.state != OPEN:
                    self.dropped += len(data)
                    continue
                self.forwarded += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if writer.can_write_eof() and not writer.transport.is_closing():
                    writer.write_eof()


class ProxyLoop:
    """The thread and event loop the proxies run on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxies: list[Proxy] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="jepsen-proxies")
        self._thread.start()

    def run(self, coro: object) -> None:
        assert asyncio.iscoroutine(coro)
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def add(self, target: tuple[str, int], name: str = "") -> Proxy:
        """A new proxy to ``target`` on a free loopback port (``proxy.port``)."""
        p = Proxy(self, target, name or f"proxy{len(self.proxies)}")
        self.run(p._start())
        self.proxies.append(p)
        return p

    def close(self) -> None:
        for p in self.proxies:
            self.run(p._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> ProxyLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
