"""The storage engine: WAL, memtable, tables, manifest, compaction and the fs layer.

Only :mod:`shaledb` (the public API) builds on this package; nothing here knows about it.
"""
