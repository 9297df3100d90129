"""The network layer: the RESP protocol (:mod:`.protocol`), one asyncio connection per
client (:mod:`.connection`), TLS (:mod:`.tls`), who may connect (:mod:`.security`), command
rate limits (:mod:`.ratelimit`) and the descriptor budget (:mod:`.fdlimit`).

It turns bytes into requests and replies into bytes; what a request does is decided by
:mod:`shaledb.server.exec`. It never imports :mod:`shaledb.server.commands` or the keyspace
(docs/design.md, "The server").
"""
