"""Fixtures of the server tests: a real server on an ephemeral loopback port.

``server_factory(**settings)`` starts a :class:`shaledb.server.Server` with its own asyncio
event loop in a background thread (so tests can talk to it with blocking clients) and stops
it gracefully at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shaledb.server import ServerConfig

from ._server_support import HOST, ServerThread


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(**settings: Any) -> ServerThread:
        settings.setdefault("port", 0)
        settings.setdefault("host", HOST)
        settings.setdefault("dir", str(tmp_path / f"db{len(started)}"))
        st = ServerThread(ServerConfig(**settings))
        started.append(st)
        return st

    yield start
    for st in reversed(started):  # the last started first: replicas before their primary
        st.stop()


@pytest.fixture
def server(server_factory: Callable[..., ServerThread]) -> ServerThread:
    """A server with default settings (port chosen by the OS)."""
    return server_factory()


@pytest.fixture
def r(server: ServerThread) -> Iterator[redis.Redis]:
    """A redis-py client (RESP2, one connection) of :func:`server`."""
    client = server.client(single_connection_client=True)
    yield client
    client.close()


