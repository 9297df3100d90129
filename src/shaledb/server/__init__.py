"""The ShaleDB network server: the Redis protocol (RESP2/RESP3) over asyncio.

Start it with ``shaledb serve`` or::

    from shaledb.server import ServerConfig, serve
    serve(ServerConfig(port=6380, dir="./data"))

Layout (docs/design.md, "The server"), the way a request flows: :mod:`.net` (the RESP
protocol, connections, TLS, security, rate limits), :mod:`.exec` (dispatch, the per-turn
commit, the handler contract and its :class:`~.exec.context.Services` interface, client state,
WATCH, cursors, durability), :mod:`.commands` (the command table, one module per family),
:mod:`.keyspace` (Redis databases and values on the engine, expiry, purge, scrub) and
:mod:`.admin` (config, CONFIG, ACL, INFO, metrics, stats, slowlog, logs); :mod:`.server`
assembles them and runs the life cycle. The redis-py KRANGE helpers are
:mod:`shaledb.client.krange`.
Pure Python; with the ``server`` extra (``pip install shaledb[server]``) it runs on uvloop.
"""

from __future__ import annotations

from .admin.config import ServerConfig
from .server import Server, serve

__all__ = ["Server", "ServerConfig", "serve"]
