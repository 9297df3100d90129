"""ShaleDB's comparative benchmark harness: ``python -m bench --help``.

The same workloads run against ShaleDB and the embedded stores a Python user would pick
instead (LMDB, RocksDB via rocksdict, LevelDB via plyvel, SQLite, diskcache, sqlitedict,
dbm.gnu), each (store, workload group) in its own subprocess and fresh directory, with the
durability of every store stated and matched. Results go to stdout (a table of ops/s and the
ratio ShaleDB/peer), to JSON, and to ``docs/benchmarks.md`` with PNG plots.

Modules:

- ``stores``: one adapter per store (open in a durability mode, put/get/delete/batch/seek/scan);
- ``workloads``: the data set (keys, values, index streams) and one function per workload;
- ``worker``: the subprocess entry point that runs one group of workloads on one store;
- ``runner``: the command line, scheduling of the subprocesses, the stdout table;
- ``report``: machine description, ``docs/benchmarks.md`` and the plots.

``bench/quick.py`` is a separate single-store script and keeps working on its own.
"""
