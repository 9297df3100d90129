"""Golden files: small databases whose bytes pin the on-disk format (docs/format.md).

    python scripts/make_golden.py [DEST]
        Write the golden database of the *current* format into DEST (default
        tests/data/format_v{DB_FORMAT_VERSION}), byte for byte reproducibly, with the format
        versions it was made with in DEST/VERSIONS.json.

    python scripts/make_golden.py --encrypted [DEST]
        The same steps in an encrypted database (database format 5; default
        tests/data/format_v{ENCRYPTED_DB_FORMAT_VERSION}), under the master key
        :data:`GOLDEN_KEY`.

    PYTHONPATH=<checkout of commit 884e496>/src python scripts/make_golden.py --legacy-v2 DEST
        Write the database-format-2 fixtures (tests/data/format_v2) with the code of that
        commit: DEST/clean (closed cleanly, unflushed writes in the WAL) and DEST/crashed (a
        copy taken while the database was open: the WAL segment ends in the zeros of its
        mapped, preallocated space). Not reproducible byte for byte (random-free, but written
        by old code that had no hooks); it is generated once and committed.

What is written is the same sequence of steps (:func:`steps`): tables on two levels (a
manual compaction, then two flushes on top), data blocks stored LZ4-compressed and
uncompressed (high-entropy values), 2- and 4-byte offsets, 1-, 2- and 5-byte msgpack bin
headers, TTLs (some expire an hour after the fixed clock, some a day), deletions in every
layer, batches, ``sync=True`` writes (sync marks), and unflushed writes left in the WAL at a
clean close. :func:`model` is what a reader must see, for the tests.

Reproducibility: the clock is fixed (:data:`NOW`); the salts of new log files come from a
counter instead of ``os.urandom`` (``shaledb.engine.logfile.new_salt`` is replaced while the
script runs); the tables' ``created_at`` comes from a fixed clock (the clock the table
builder reads, ``shaledb.engine.sstable.builder.clock``, is replaced); encrypted: the master
key is :data:`GOLDEN_KEY`, and the
data key, the files' salts and the key-wrapping nonces come from a counter too
(``shaledb.engine.crypto.random_bytes`` is replaced); background WAL fsyncs are off (their
timing would show in the records' ``synced`` field) and compactions run only when asked, in
this process. Nothing in ShaleDB itself changes for this.

This module imports only the standard library at the top, so that tests can import it for
:func:`steps` and :func:`model`, and so that ``--legacy-v2`` runs with old code.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import types
from collections.abc import Iterator
from typing import Any

#: The fixed clock (seconds since the epoch: 2026-01-01T00:00:00Z).
NOW = 1_767_225_600
#: The ``created_at`` of every golden table.
CREATED_AT = NOW
#: TTLs used by the steps: one expires an hour after NOW, the other a day after.
SHORT_TTL = 3600
LONG_TTL = 86400

#: Options the golden databases are written with (all of them exist since 0.1.0).
OPTIONS: dict[str, Any] = {
    "block_size": 1024,
    "memtable_size": 4 << 20,
    "target_file_size": 64 << 10,
    "l0_compaction_trigger": 8,
    "l0_slowdown_trigger": 16,
    "l0_stop_trigger": 24,
    "fsync_interval": None,
    "compaction_process_threshold": None,
    "compression": "lz4",
}

#: Files of a golden directory that are not database files.
NOT_DATABASE = {"VERSIONS.json", "README.md", "LOCK"}

#: The master key of the encrypted golden database (format 5). Not a secret: it is here, in
#: tests/data/format_v5/README.md and in the tests.
GOLDEN_KEY = hashlib.sha256(b"shaledb golden master key").digest()

Step = tuple[Any, ...]


def cval(i: int, tag: bytes) -> bytes:
    """A value that LZ4 compresses well."""
    return b"%s:%05d:" % (tag, i) + b"%d," % i * (i % 23) + bytes([97 + i % 26]) * (i % 41)


def rval(i: int, tag: bytes) -> bytes:
    """A 256-byte value LZ4 cannot compress (blocks of these are stored uncompressed)."""
    return b"".join(hashlib.blake2b(b"%s%d-%d" % (tag, i, j), digest_size=64).digest()
                    for j in range(4))


def steps(nk: int = 600, nr: int = 240, legacy: bool = False) -> list[Step]:
    """The writes, flushes and compactions that make a golden database, in order.

    Steps: ``("put", key, value, ttl, sync)``, ``("delete", key, sync)``,
    ``("batch", [("put", key, value, ttl) | ("delete", key)], sync)``, ``("flush",)``,
    ``("compact",)`` or ``("compact", lo, hi)``, ``("reopen",)`` (close, open again) and,
    with ``legacy``, ``("crash_copy",)``.

    The committed golden directories were written with these steps and their tests expect
    what :func:`model` makes of them: never change the steps of an existing directory (a new
    golden directory that needs other steps gets its own function).
    """
    s: list[Step] = []
    k = b"k%05d".__mod__
    r = b"r%04d".__mod__
    # Pass A: the bulk of the data, flushed to L0.
    for i in range(nk):
        s.append(("put", k(i), cval(i, b"a"), LONG_TTL if i % 9 == 0 else None, False))
    for i in range(nr):
        s.append(("put", r(i), rval(i, b"a"), None, False))
    s.append(("put", b"big", bytes(range(256)) * 300, None, False))  # 4-byte offsets, bin32
    s.append(("put", b"L" * 300, b"a long key: a bin16 header", None, False))
    s.append(("put", b"empty", b"", None, False))
    s.append(("flush",))
    # Pass B: overwrites (some with a TTL that expires an hour after NOW) and deletes.
    for i in range(0, nk, 4):
        s.append(("put", k(i), cval(i, b"b"), SHORT_TTL if i % 20 == 0 else None, False))
    for i in range(5, nk, 10):
        s.append(("delete", k(i), False))
    s.append(("flush",))
    # Everything to L1 (tables cut at target_file_size).
    s.append(("compact",))
    # Pass C: tombstones over L1, new keys, durable writes, a batch; flushed to L0.
    for i in range(1, nk, 11):
        s.append(("delete", k(i), i % 3 == 0))
    for i in range(nk, nk + nk // 6):
        s.append(("put", k(i), cval(i, b"c"), LONG_TTL if i % 7 == 0 else None, i % 25 == 0))
    for i in range(nr, nr + 20):
        s.append(("put", r(i), rval(i, b"c"), None, False))
    s.append(("batch", [("put", k(3), b"batch value", None), ("delete", k(6)),
                        ("put", b"batch-ttl", b"expires", SHORT_TTL)], False))
    s.append(("flush",))
    # A reopen (the new manifest's first record is a snapshot listing both levels), then a
    # manual compaction of the one L1 table holding keys in ["L", "M"] (no L0 table does),
    # in place: an edit with "del" and "ptr".
    s.append(("reopen",))
    s.append(("compact", b"L", b"M"))
    # Pass D: a second L0 table (with nk=600: 32 user keys, the most a one-bucket filter
    # takes, so that a change of the bucket size shows in its bytes).
    for i in range(0, nk // 10, 5):
        s.append(("put", k(i), cval(i, b"d"), None, False))
    for i in range(0, 20):
        s.append(("delete", r(i), False))
    s.append(("flush",))
    # Pass E: left in the WAL (never flushed).
    top = nk + nk // 6
    for i in range(top, top + 40):
        s.append(("put", k(i), cval(i, b"e"), SHORT_TTL if i % 4 == 0 else None, False))
    s.append(("delete", k(2), False))
    s.append(("delete", k(4), False))
    s.append(("put", b"big", b"small now", None, False))
    s.append(("batch", [("put", b"wal-batch-1", b"one", None), ("delete", k(8)),
                        ("put", b"wal-batch-ttl", b"two", LONG_TTL)], False))
    s.append(("put", b"durable", b"synced write", None, True))
    if legacy:
        s.append(("crash_copy",))
        for i in range(top + 40, top + 60):
            s.append(("put", k(i), cval(i, b"f"), None, False))
        s.append(("delete", k(12), False))
    return s


def expire_ms(ttl: int | None) -> int:
    """The absolute expiry the engine stores for ``ttl`` given at :data:`NOW`."""
    return 0 if ttl is None else max(1, math.ceil((NOW + ttl) * 1000))


def model(all_steps: list[Step], stop_at_crash_copy: bool = False
          ) -> dict[bytes, tuple[bytes, int]]:
    """``key -> (value, expire_at_ms)`` after the steps, expired entries included (the caller
    filters them by the clock it reads with)."""
    state: dict[bytes, tuple[bytes, int]] = {}

    def apply(op: tuple[Any, ...]) -> None:
        if op[0] == "put":
            state[op[1]] = (op[2], expire_ms(op[3]))
        elif op[0] == "delete":
            state.pop(op[1], None)

    for st in all_steps:
        if st[0] == "crash_copy" and stop_at_crash_copy:
            break
        if st[0] == "batch":
            for op in st[1]:
                apply(op)
        else:
            apply(st)
    return state


def live(state: dict[bytes, tuple[bytes, int]], now_s: float) -> dict[bytes, bytes]:
    """What ``dict(db.range())`` returns at clock ``now_s``."""
    now = int(now_s * 1000)
    return {k: v for k, (v, exp) in state.items() if exp == 0 or exp > now}


# -- writing -----------------------------------------------------------------------------------

def _clock() -> float:
    return float(NOW)


@contextlib.contextmanager
def _fixed_sources() -> Iterator[None]:
    """Deterministic salts, keys and table creation times while the golden database is
    written."""
    from shaledb.engine import crypto, logfile
    from shaledb.engine.sstable import builder

    counter = itertools.count()
    random_counter = itertools.count()

    def salt() -> bytes:
        return hashlib.sha256(b"shaledb golden salt %d" % next(counter)).digest()[:8]

    def random_bytes(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(b"shaledb golden random %d" % next(random_counter)).digest()
        return out[:n]

    old_salt, old_time, old_random = logfile.new_salt, builder.clock, crypto.random_bytes
    logfile.new_salt = salt
    crypto.random_bytes = random_bytes
    builder.clock = lambda: float(CREATED_AT)
    try:
        yield
    finally:
        logfile.new_salt = old_salt
        crypto.random_bytes = old_random
        builder.clock = old_time


def _run(path: str, all_steps: list[Step], crash_copy: Any = None,
         key: bytes | None = None) -> None:
    """Open (creating) ``path``, run the steps, close (encrypted with ``key`` when given)."""
    import shaledb

    options: dict[str, Any] = dict(OPTIONS)
    if key is not None:
        options["encryption_key"] = key
    db = shaledb.open(path, clock=_clock, **options)
    try:
        for st in all_steps:
            if st[0] == "put":
                db.put(st[1], st[2], ttl=st[3], sync=st[4])
            elif st[0] == "delete":
                db.delete(st[1], sync=st[2])
            elif st[0] == "batch":
                batch = shaledb.WriteBatch()
                for op in st[1]:
                    if op[0] == "put":
                        batch.put(op[1], op[2], ttl=op[3])
                    else:
                        batch.delete(op[1])
                db.write(batch, sync=st[2])
            elif st[0] == "flush":
                db.flush()
            elif st[0] == "compact":
                db.compact_range(*st[1:])
            elif st[0] == "reopen":
                db.close()
                db = shaledb.open(path, clock=_clock, **options)
            elif st[0] == "crash_copy":
                crash_copy()
            else:  # pragma: no cover
                raise ValueError(f"unknown step {st!r}")
    finally:
        db.close()


def versions(encrypted: bool = False) -> dict[str, int]:
    """The format versions of the code that runs (what VERSIONS.json records), of a plain
    database or, with ``encrypted``, of an encrypted one."""
    from shaledb.engine.logfile import ENCRYPTED_LOG_VERSION, LOG_VERSION
    from shaledb.engine.manifest import MANIFEST_FORMAT_VERSION
    from shaledb.engine.optionsfile import DB_FORMAT_VERSION, ENCRYPTED_DB_FORMAT_VERSION
    from shaledb.engine.sstable.format import ENCRYPTED_FORMAT_VERSION, FORMAT_VERSION

    if encrypted:
        from shaledb.engine.crypto import KEYRING_FORMAT

        return {"database_format": ENCRYPTED_DB_FORMAT_VERSION,
                "table_format": ENCRYPTED_FORMAT_VERSION, "log_format": ENCRYPTED_LOG_VERSION,
                "manifest_edit_format": MANIFEST_FORMAT_VERSION,
                "keyring_format": KEYRING_FORMAT}
    return {"database_format": DB_FORMAT_VERSION, "table_format": FORMAT_VERSION,
            "log_format": LOG_VERSION, "manifest_edit_format": MANIFEST_FORMAT_VERSION}


def generate(dest: str, encrypted: bool = False) -> None:
    """Write the golden database of the current format into ``dest`` (must not exist);
    with ``encrypted``, encrypted under :data:`GOLDEN_KEY` (database format 5)."""
    import lz4
    import msgpack
    import xxhash

    import shaledb

    if os.path.exists(dest):
        raise SystemExit(f"{dest} exists: remove it first (golden files are never "
                         f"overwritten by accident)")
    with _fixed_sources():
        _run(dest, steps(), key=GOLDEN_KEY if encrypted else None)
    os.remove(os.path.join(dest, "LOCK"))
    info = {"versions": versions(encrypted), "written_by": f"shaledb {shaledb.__version__}",
            "generator": "scripts/make_golden.py", "clock": NOW,
            "libraries (informational)": {
                "lz4": f"{lz4.__version__} (liblz4 {lz4.library_version_string()})",
                "msgpack": ".".join(map(str, msgpack.version)),
                "xxhash": xxhash.VERSION}}
    with open(os.path.join(dest, "VERSIONS.json"), "w") as f:
        f.write(json.dumps(info, indent=2, sort_keys=True) + "\n")


def generate_legacy_v2(dest: str) -> None:
    """Write tests/data/format_v2 with the code of commit 884e496 (see the module docstring)."""
    from shaledb.engine.sstable import builder

    if os.path.exists(dest):
        raise SystemExit(f"{dest} exists: remove it first")
    os.makedirs(dest)
    clean = os.path.join(dest, "clean")
    crashed = os.path.join(dest, "crashed")
    # The code of 884e496 reads the clock through the module's ``time``.
    builder.time = types.SimpleNamespace(time=lambda: float(CREATED_AT))  # type: ignore

    def crash_copy() -> None:
        # What a crash at this moment leaves (the process dies, the OS keeps the page cache):
        # the files as they are, the open WAL segment ending in its preallocated zeros.
        os.makedirs(crashed)
        for name in sorted(os.listdir(clean)):
            if name != "LOCK":
                shutil.copyfile(os.path.join(clean, name), os.path.join(crashed, name))

    _run(clean, steps(nk=200, nr=60, legacy=True), crash_copy)
    os.remove(os.path.join(clean, "LOCK"))
    # The open segment was preallocated to 1 MiB; keep its records and the zeros up to the
    # next 4 KiB boundary plus one page (any zero tail reads alike; the repository need not
    # hold a megabyte of zeros).
    for name in os.listdir(crashed):
        if name.endswith(".log"):
            path = os.path.join(crashed, name)
            with open(path, "rb") as f:
                data = f.read()
            end = len(data.rstrip(b"\0"))
            keep = min(len(data), (end + 4095) // 4096 * 4096 + 4096)
            os.truncate(path, keep)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--legacy-v2"] and len(argv) == 2:
        generate_legacy_v2(argv[1])
        return
    encrypted = argv[:1] == ["--encrypted"]
    if encrypted:
        argv = argv[1:]
    if len(argv) > 1 or argv[:1] == ["--help"] or any(a.startswith("-") for a in argv):
        raise SystemExit(__doc__)
    if argv:
        dest = argv[0]
    else:
        from shaledb.engine.optionsfile import DB_FORMAT_VERSION, ENCRYPTED_DB_FORMAT_VERSION

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        version = ENCRYPTED_DB_FORMAT_VERSION if encrypted else DB_FORMAT_VERSION
        dest = os.path.join(root, "tests", "data", f"format_v{version}")
    generate(dest, encrypted)
    total = sum(os.path.getsize(os.path.join(dest, n)) for n in os.listdir(dest))
    print(f"wrote {dest}: {len(os.listdir(dest))} files, {total} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
