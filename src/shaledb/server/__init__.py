"""The ShaleDB network server: the Redis protocol (RESP2/RESP3) over asyncio.

Start it with ``shaledb serve`` or::

    from shaledb.server import ServerConfig, serve
    serve(ServerConfig(port=6380, dir="./data"))

Layout: :mod:`.protocol` (reading requests, encoding replies), :mod:`.commands` (the command
table, one module per family), :mod:`.dispatch` (request -> reply), :mod:`.keyspace` (Redis
databases and values on the engine), :mod:`.connection` (per-client state and I/O),
:mod:`.server` (listening, limits, shutdown), :mod:`.durability` (fsync groups),
:mod:`.scrub` (the background scrub), :mod:`.watch`, :mod:`.cursors`, :mod:`.glob`,
:mod:`.config`, :mod:`.errors`, and
:mod:`.krange` (client-side KRANGE helpers for redis-py).
Pure Python; with the ``server`` extra (``pip install shaledb[server]``) it runs on uvloop.
"""

from __future__ import annotations

from .admin.config import ServerConfig
from .server import Server, serve

__all__ = ["Server", "ServerConfig", "serve"]
