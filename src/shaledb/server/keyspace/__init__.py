"""The keyspace layer: Redis databases and values on the engine.

:mod:`.keyspace` (the keyspace and its transactions), :mod:`.dbmap` (logical database ->
physical prefix, key counts), :mod:`.values` (the byte encoding of a value: header, expiry,
chunks), :mod:`.expiry` (active expiry), :mod:`.purge` (freeing flushed databases and big
values in the background) and :mod:`.scrub` (the background integrity scrub).

It knows nothing about clients, connections or commands: it imports only the engine and the
shared :mod:`shaledb.server.errors` (docs/design.md, "The server").
"""
