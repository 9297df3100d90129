"""One adapter per store, all with the same small interface.

An adapter is opened in one of two durability modes:

- ``process-crash``: a write is handed to the operating system (``write()``) before the call
  returns, but not fsynced: it survives a crash of the process, not a power loss;
- ``power-loss``: every commit is fsynced before the call returns.

``DURABILITY`` on each class says, per mode, exactly what the store is configured to do; the
report prints it. After :meth:`Store.open`, these attributes are plain callables (bound as
directly as the library allows, so the harness adds as little as possible per operation):

- ``put(key, value)``, ``get(key) -> bytes | None``, ``delete(key)``;
- ``write_batch(pairs)``: one atomic commit of an iterable of ``(key, value)``;
- ``seek_next(key, n) -> list[(key, value)]``: the first ``n`` pairs with key >= ``key``;
- ``scan() -> iterator[(key, value)]``: every pair in key order.

Stores that have no ordered access set ``ORDERED = False`` (seek and scan are skipped);
stores whose handle cannot be shared between threads return a per-thread handle from
:meth:`Store.thread_view`, or set ``THREADSAFE = False`` to be serialized by a lock.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

MiB = 1 << 20
PROCESS_CRASH = "process-crash"
POWER_LOSS = "power-loss"
MODES = (PROCESS_CRASH, POWER_LOSS)

#: Block/page cache given to every store that has one, to match ShaleDB's default.
CACHE_BYTES = 64 * MiB

Pair = tuple[bytes, bytes]


def _pkg_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


class Store(abc.ABC):
    """Base class. Subclasses set the class attributes and implement :meth:`open`."""

    NAME: ClassVar[str] = ""
    LABEL: ClassVar[str] = ""          # what the user installs / what engine it is
    MODULES: ClassVar[tuple[str, ...]] = ()
    ORDERED: ClassVar[bool] = True
    THREADSAFE: ClassVar[bool] = True
    DURABILITY: ClassVar[dict[str, str]] = {}
    SETTINGS: ClassVar[str] = ""       # non-default settings we use, for the report

    put: Callable[[bytes, bytes], Any]
    get: Callable[[bytes], bytes | None]
    delete: Callable[[bytes], Any]
    write_batch: Callable[[Iterable[Pair]], Any]
    seek_next: Callable[[bytes, int], list[Pair]]
    scan: Callable[[], Iterator[Pair]]

    def __init__(self, cfg: dict[str, Any] | None = None) -> None:
        self.cfg = cfg or {}
        self.path = ""
        self.mode = PROCESS_CRASH

    # -- class-level facts ------------------------------------------------------------------
    @classmethod
    def unavailable(cls) -> str | None:
        """Why this store cannot run here (None when it can)."""
        for mod in cls.MODULES:
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"Python module {mod!r} is not importable"
        return None

    @classmethod
    def version(cls) -> str:
        return "?"

    @classmethod
    def durability(cls, mode: str, cfg: dict[str, Any] | None = None) -> str:
        return cls.DURABILITY.get(mode, "not offered")

    # -- life cycle -------------------------------------------------------------------------
    @abc.abstractmethod
    def open(self, path: str, mode: str) -> None:
        """Open (creating) the store at ``path`` in durability ``mode``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the store, making everything written durable as its mode promises."""

    def thread_view(self) -> Store:
        """A handle for use by one extra thread (the store itself when it is shareable)."""
        return self

    def close_view(self, view: Store) -> None:  # noqa: B027 - a no-op unless overridden
        """Release a handle returned by :meth:`thread_view` (nothing to do by default)."""

    def stats(self) -> dict[str, Any] | None:
        """Engine counters, when the store exposes them in a form we use."""
        return None

    def l0_files(self) -> int | None:
        """Number of level-0 tables right now (LSM stores that expose it)."""
        return None


# ----------------------------------------------------------------------------------------
class ShaleDBStore(Store):
    NAME = "shaledb"
    LABEL = "ShaleDB"
    MODULES = ("shaledb",)
    SETTINGS = "defaults (memtable_size 32 MiB, block_cache_size 64 MiB, lz4)"

    #: Which build this store must run (bench/runner.py sets SHALEDB_PURE_PYTHON for "pure").
    BUILD = "compiled"

    @classmethod
    def version(cls) -> str:
        import shaledb

        return f"{shaledb.__version__} ({cls.build_name()})"

    @classmethod
    def build_name(cls) -> str:
        import shaledb

        return "compiled" if shaledb.build.info()["compiled"] else "pure Python"

    @classmethod
    def _fsync_interval(cls, cfg: dict[str, Any] | None) -> float | None:
        return (cfg or {}).get("shaledb_fsync_interval", 1.0)

    @classmethod
    def durability(cls, mode: str, cfg: dict[str, Any] | None = None) -> str:
        if mode == POWER_LOSS:
            return "put/batch(sync=True): the WAL record is written and fsynced before return " \
                   "(concurrent writers share one fsync: group commit)"
        fi = cls._fsync_interval(cfg)
        if fi is None:
            return ("put/batch(sync=False), fsync_interval=None: one WAL append per commit "
                    "(a copy into the memory-mapped segment, in the page cache), never "
                    "fsynced by ShaleDB (the OS writes it back)")
        return (f"put/batch(sync=False), fsync_interval={fi:g} (the default): one WAL append "
                f"per commit (a copy into the memory-mapped segment, in the page cache), "
                f"plus a background fsync of the WAL every {fi:g} s (so also at "
                f"most ~{fi:g} s lost on power loss: stronger than the peers in this mode)")

    def open(self, path: str, mode: str) -> None:
        import shaledb

        self.path, self.mode = path, mode
        opts: dict[str, Any] = {"fsync_interval": self._fsync_interval(self.cfg)}
        opts.update(self.cfg.get("shaledb_options", {}))
        db = self.db = shaledb.open(path, **opts)
        sync = mode == POWER_LOSS
        if sync:
            self.put = functools.partial(db.put, sync=True)
            self.delete = functools.partial(db.delete, sync=True)
        else:
            self.put = db.put
            self.delete = db.delete
        self.get = db.get

        def write_batch(pairs: Iterable[Pair]) -> None:
            with db.batch(sync=sync) as b:
                put = b.put
                for k, v in pairs:
                    put(k, v)

        def seek_next(key: bytes, n: int) -> list[Pair]:
            return list(db.range(start=key, limit=n))

        self.write_batch = write_batch
        self.seek_next = seek_next
        self.scan = db.range

    def close(self) -> None:
        self.db.close()

    def stats(self) -> dict[str, Any] | None:
        return self.db.stats()

    def l0_files(self) -> int | None:
        levels = self.db.stats().get("levels") or []
        return int(levels[0]["files"]) if levels else 0


class ShaleDBPureStore(ShaleDBStore):
    """The same ShaleDB, its pure-Python source (SHALEDB_PURE_PYTHON=1): the column next to
    the compiled one, from the same run, is what mypyc buys (issue 14)."""

    NAME = "shaledb-pure"
    LABEL = "ShaleDB, pure Python"
    BUILD = "pure"

    @classmethod
    def build_name(cls) -> str:
        # The runner asks in its own (compiled) process; the worker runs this store with
        # SHALEDB_PURE_PYTHON=1 and open() refuses the compiled build.
        return "pure Python"

    def open(self, path: str, mode: str) -> None:
        import shaledb

        if shaledb.build.info()["compiled"]:
            raise RuntimeError("shaledb-pure loaded the compiled build")
        super().open(path, mode)


class ShaleDBEncryptedStore(ShaleDBStore):
    """ShaleDB with encryption at rest: the same defaults, plus a master key (AES-256-GCM on
    every WAL record, manifest edit and table block). Its column next to plain ShaleDB's,
    from the same run, is the measured cost of encryption."""

    NAME = "shaledb-enc"
    LABEL = "ShaleDB, encrypted"
    SETTINGS = "as shaledb, plus encryption_key (AES-256-GCM at rest)"
    #: A fixed key: a benchmark has no secret to keep.
    KEY = bytes(range(32))

    def open(self, path: str, mode: str) -> None:
        self.cfg = {**self.cfg, "shaledb_options": {
            **self.cfg.get("shaledb_options", {}), "encryption_key": self.KEY}}
        super().open(path, mode)


# ----------------------------------------------------------------------------------------
class LMDBStore(Store):
    NAME = "lmdb"
    LABEL = "LMDB (py-lmdb)"
    MODULES = ("lmdb",)
    SETTINGS = "map_size sized to the data set, writemap=False, one transaction per operation"
    DURABILITY = {
        PROCESS_CRASH: "one write transaction per put/batch, sync=False, metasync=False: "
                       "pages are written to the file with write() at commit, never fsynced",
        POWER_LOSS: "sync=True, metasync=True: data and meta page fsynced (fdatasync) at every "
                    "commit",
    }

    @classmethod
    def version(cls) -> str:
        import lmdb

        return f"{_pkg_version('lmdb')} (LMDB {'.'.join(map(str, lmdb.version()))})"


    def open(self, path: str, mode: str) -> None:
        import lmdb

        self.path, self.mode = path, mode
        n = int(self.cfg.get("keys", 1_000_000))
        vs = int(self.cfg.get("value_size", 100))
        map_size = max(1 << 30, 10 * n * (vs + 64))
        sync = mode == POWER_LOSS
        env = self.env = lmdb.open(path, map_size=map_size, sync=sync, metasync=sync,
                                   max_readers=256, lock=True, writemap=False)
        begin = env.begin

        def put(k: bytes, v: bytes) -> None:
            with begin(write=True) as txn:
                txn.put(k, v)

        def get(k: bytes) -> bytes | None:
            with begin() as txn:
                return txn.get(k)  # type: ignore[no-any-return]

        def delete(k: bytes) -> None:
            with begin(write=True) as txn:
                txn.delete(k)

        def write_batch(pairs: Iterable[Pair]) -> None:
            with begin(write=True) as txn:
                txn.cursor().putmulti(pairs)

        def seek_next(key: bytes, n: int) -> list[Pair]:
            with begin() as txn:
                cur = txn.cursor()
                if not cur.set_range(key):
                    return []
                return list(itertools.islice(cur.iternext(), n))

        def scan() -> Iterator[Pair]:
            with begin() as txn:
                yield from txn.cursor().iternext()

        self.put, self.get, self.delete = put, get, delete
        self.write_batch, self.seek_next, self.scan = write_batch, seek_next, scan

    def close(self) -> None:
        self.env.close()


# ----------------------------------------------------------------------------------------
class RocksDBStore(Store):
    NAME = "rocksdict"
    LABEL = "RocksDB (rocksdict)"
    MODULES = ("rocksdict",)
    SETTINGS = "raw_mode, 64 MiB LRU block cache, 10-bit bloom filter; other options default"
    DURABILITY = {
        PROCESS_CRASH: "WriteOptions.sync=False: the WAL record is written with write(), not "
                       "fsynced",
        POWER_LOSS: "WriteOptions.sync=True: the WAL is fsynced before the write returns",
    }

    @classmethod
    def version(cls) -> str:
        return _pkg_version("rocksdict")

    def open(self, path: str, mode: str) -> None:
        from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

        self.path, self.mode = path, mode
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(CACHE_BYTES))
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        db = self.db = Rdict(path, opts)
        wo = WriteOptions()
        wo.sync = mode == POWER_LOSS
        db.set_write_options(wo)
        self.put, self.get, self.delete = db.put, db.get, db.delete

        def write_batch(pairs: Iterable[Pair]) -> None:
            wb = WriteBatch(raw_mode=True)
            put = wb.put
            for k, v in pairs:
                put(k, v)
            db.write(wb)

        def seek_next(key: bytes, n: int) -> list[Pair]:
            it = db.iter()
            it.seek(key)
            out = []
            while len(out) < n and it.valid():
                out.append((it.key(), it.value()))
                it.next()
            return out

        self.write_batch, self.seek_next, self.scan = write_batch, seek_next, db.items

    def close(self) -> None:
        self.db.close()


# ----------------------------------------------------------------------------------------
class LevelDBStore(Store):
    NAME = "plyvel"
    LABEL = "LevelDB (plyvel)"
    MODULES = ("plyvel",)
    SETTINGS = "64 MiB LRU block cache, 10-bit bloom filter; other options default"
    DURABILITY = {
        PROCESS_CRASH: "sync=False: the log record is written with write(), not fsynced",
        POWER_LOSS: "sync=True: the log is fsynced before the write returns",
    }

    @classmethod
    def version(cls) -> str:
        import plyvel

        return f"{_pkg_version('plyvel')} (LevelDB {getattr(plyvel, '__leveldb_version__', '?')})"

    def open(self, path: str, mode: str) -> None:
        import plyvel

        self.path, self.mode = path, mode
        db = self.db = plyvel.DB(path, create_if_missing=True, lru_cache_size=CACHE_BYTES,
                                 bloom_filter_bits=10)
        sync = mode == POWER_LOSS
        if sync:
            self.put = functools.partial(db.put, sync=True)
            self.delete = functools.partial(db.delete, sync=True)
        else:
            self.put, self.delete = db.put, db.delete
        self.get = db.get

        def write_batch(pairs: Iterable[Pair]) -> None:
            with db.write_batch(sync=sync) as wb:
                put = wb.put
                for k, v in pairs:
                    put(k, v)

        def seek_next(key: bytes, n: int) -> list[Pair]:
            it = db.iterator(start=key)
            try:
                return list(itertools.islice(it, n))
            finally:
                it.close()

        self.write_batch, self.seek_next, self.scan = write_batch, seek_next, db.iterator

    def close(self) -> None:
        self.db.close()


# ----------------------------------------------------------------------------------------
class SQLiteStore(Store):
    NAME = "sqlite3"
    LABEL = "SQLite (sqlite3 module)"
    MODULES = ("sqlite3",)
    SETTINGS = ("table kv(key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID, journal_mode=WAL, "
                "cache_size 64 MiB, autocommit (one transaction per put), one connection per "
                "thread")
    DURABILITY = {
        PROCESS_CRASH: "journal_mode=WAL, synchronous=NORMAL: each commit appends to the WAL "
                       "with write(); fsync only at checkpoints",
        POWER_LOSS: "journal_mode=WAL, synchronous=FULL: the WAL is fsynced at every commit",
    }

    @classmethod
    def version(cls) -> str:
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"

    def _connect(self) -> Any:
        import sqlite3

        conn = sqlite3.connect(os.path.join(self.path, "kv.sqlite"), isolation_level=None,
                               check_same_thread=False, timeout=120)
        sync = "FULL" if self.mode == POWER_LOSS else "NORMAL"
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute(f"PRAGMA cache_size=-{CACHE_BYTES // 1024}")
        return conn

    def open(self, path: str, mode: str) -> None:
        self.path, self.mode = path, mode
        os.makedirs(path, exist_ok=True)
        self._bind(self._connect(), create=True)

    def _bind(self, conn: Any, create: bool = False) -> None:
        self.conn = conn
        if create:
            conn.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB) "
                         "WITHOUT ROWID")
        ex = conn.execute
        put_sql = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"
        get_sql = "SELECT value FROM kv WHERE key = ?"
        del_sql = "DELETE FROM kv WHERE key = ?"
        seek_sql = "SELECT key, value FROM kv WHERE key >= ? ORDER BY key LIMIT ?"

        def put(k: bytes, v: bytes) -> None:
            ex(put_sql, (k, v))

        def get(k: bytes) -> bytes | None:
            row = ex(get_sql, (k,)).fetchone()
            return None if row is None else row[0]  # type: ignore[no-any-return]

        def delete(k: bytes) -> None:
            ex(del_sql, (k,))

        def write_batch(pairs: Iterable[Pair]) -> None:
            ex("BEGIN")
            try:
                conn.executemany(put_sql, pairs)
            except BaseException:
                ex("ROLLBACK")
                raise
            ex("COMMIT")

        def seek_next(key: bytes, n: int) -> list[Pair]:
            return ex(seek_sql, (key, n)).fetchall()  # type: ignore[no-any-return]

        def scan() -> Iterator[Pair]:
            return iter(ex("SELECT key, value FROM kv ORDER BY key"))

        self.put, self.get, self.delete = put, get, delete
        self.write_batch, self.seek_next, self.scan = write_batch, seek_next, scan

    def thread_view(self) -> Store:
        view = SQLiteStore(self.cfg)
        view.path, view.mode = self.path, self.mode
        view._bind(view._connect())
        return view

    def close_view(self, view: Store) -> None:
        if view is not self:
            view.close()

    def close(self) -> None:
        self.conn.close()


# ----------------------------------------------------------------------------------------
class DiskCacheStore(Store):
    NAME = "diskcache"
    LABEL = "diskcache (SQLite)"
    MODULES = ("diskcache",)
    ORDERED = False
    SETTINGS = "Cache with size_limit 2**60, eviction_policy='none', statistics off"
    DURABILITY = {
        PROCESS_CRASH: "its defaults: SQLite journal_mode=WAL, synchronous=NORMAL; each set() "
                       "is its own transaction (batches: one transact())",
        POWER_LOSS: "sqlite_synchronous=2 (FULL): the WAL is fsynced at every commit",
    }

    @classmethod
    def version(cls) -> str:
        return _pkg_version("diskcache")

    def open(self, path: str, mode: str) -> None:
        import diskcache

        self.path, self.mode = path, mode
        sync = 2 if mode == POWER_LOSS else 1
        c = self.cache = diskcache.Cache(path, size_limit=1 << 60, eviction_policy="none",
                                         cull_limit=0, statistics=0, sqlite_synchronous=sync,
                                         sqlite_cache_size=CACHE_BYTES // 4096)
        self.put, self.get, self.delete = c.set, c.get, c.delete

        def write_batch(pairs: Iterable[Pair]) -> None:
            with c.transact():
                s = c.set
                for k, v in pairs:
                    s(k, v)

        self.write_batch = write_batch

    def close(self) -> None:
        self.cache.close()


# ----------------------------------------------------------------------------------------
class SqliteDictStore(Store):
    NAME = "sqlitedict"
    LABEL = "sqlitedict (SQLite)"
    MODULES = ("sqlitedict",)
    ORDERED = False   # it iterates in insertion (rowid) order, has no seek
    SETTINGS = ("journal_mode=WAL, identity encode/decode (raw bytes), commit(blocking=True) "
                "after every put / batch so each write is acknowledged like the others")
    DURABILITY = {
        PROCESS_CRASH: "sqlitedict forces PRAGMA synchronous=OFF (never fsyncs); with "
                       "journal_mode=WAL and a blocking commit per put/batch the data is in the "
                       "OS when the call returns",
        POWER_LOSS: "not offered by sqlitedict (it hardcodes synchronous=OFF); the harness "
                    "issues PRAGMA synchronous=FULL through its connection after opening so "
                    "each commit fsyncs the WAL",
    }

    @classmethod
    def version(cls) -> str:
        return _pkg_version("sqlitedict")

    def open(self, path: str, mode: str) -> None:
        from sqlitedict import SqliteDict

        self.path, self.mode = path, mode
        os.makedirs(path, exist_ok=True)

        def ident(x: Any) -> Any:
            return x

        d = self.d = SqliteDict(os.path.join(path, "kv.sqlite"), tablename="kv",
                                autocommit=False, journal_mode="WAL", encode=ident,
                                decode=ident, outer_stack=False)
        if mode == POWER_LOSS:
            d.conn.execute("PRAGMA synchronous=FULL")
            d.commit()
        commit = d.commit
        setitem, delitem = d.__setitem__, d.__delitem__

        def put(k: bytes, v: bytes) -> None:
            setitem(k, v)
            commit()

        def get(k: bytes) -> bytes | None:
            return d.get(k)  # type: ignore[no-any-return]

        def delete(k: bytes) -> None:
            with contextlib.suppress(KeyError):
                delitem(k)
            commit()

        def write_batch(pairs: Iterable[Pair]) -> None:
            d.update(pairs if isinstance(pairs, list) else list(pairs))
            commit()

        self.put, self.get, self.delete, self.write_batch = put, get, delete, write_batch

    def close(self) -> None:
        self.d.close()


# ----------------------------------------------------------------------------------------
class GDBMStore(Store):
    NAME = "dbm.gnu"
    LABEL = "GNU dbm (dbm.gnu)"
    MODULES = ("_gdbm",)
    ORDERED = False
    THREADSAFE = False
    SETTINGS = "one file; batches are plain loops (gdbm has no transactions)"
    DURABILITY = {
        PROCESS_CRASH: "flag 'f' (fast): writes go to the OS, never fsynced",
        POWER_LOSS: "flag 's' (synchronized): gdbm syncs the file after every write",
    }

    @classmethod
    def unavailable(cls) -> str | None:
        why = super().unavailable()
        if why:
            return "this Python was built without the _gdbm extension (dbm.gnu)"
        return None

    @classmethod
    def version(cls) -> str:
        import dbm.gnu

        return ".".join(map(str, getattr(dbm.gnu, "_GDBM_VERSION", ("?",))))

    def open(self, path: str, mode: str) -> None:
        import dbm.gnu

        self.path, self.mode = path, mode
        os.makedirs(path, exist_ok=True)
        flag = "cs" if mode == POWER_LOSS else "cf"
        db = self.db = dbm.gnu.open(  # noqa: SIM115 - closed by close()
            os.path.join(path, "kv.gdbm"), flag, 0o600)
        get = db.get

        def put(k: bytes, v: bytes) -> None:
            db[k] = v

        def delete(k: bytes) -> None:
            with contextlib.suppress(KeyError):
                del db[k]

        def write_batch(pairs: Iterable[Pair]) -> None:
            for k, v in pairs:
                db[k] = v

        self.put, self.get, self.delete, self.write_batch = put, get, delete, write_batch

    def close(self) -> None:
        self.db.close()


class Serialized(Store):
    """Wraps a store whose handle is not thread-safe so every call takes one lock."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner.cfg)
        lock = threading.Lock()

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*a: Any) -> Any:
                with lock:
                    return fn(*a)
            return call

        for name in ("put", "get", "delete", "write_batch"):
            setattr(self, name, wrap(getattr(inner, name)))


STORES: dict[str, type[Store]] = {
    cls.NAME: cls
    for cls in (ShaleDBStore, ShaleDBPureStore, ShaleDBEncryptedStore, LMDBStore, RocksDBStore,
                LevelDBStore, SQLiteStore, DiskCacheStore, SqliteDictStore, GDBMStore)
}
ALL_STORES = list(STORES)
