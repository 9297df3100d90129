"""The engine's fast paths (issue 14) keep the semantics of the paths they bypass.

- Point lookups run without the mutex and without pinning a version; a table that a
  compaction deleted meanwhile makes the lookup repeat itself pinned.
"""

from __future__ import annotations

import threading
import time

import pytest

import shaledb
from shaledb.errors import ShaleError


def _fill(db: shaledb.DB, n: int, tag: bytes) -> None:
    for i in range(n):
        db.put(b"k%05d" % i, tag + b"%05d" % i)


def test_get_through_a_version_whose_tables_were_compacted_away(db_path, small_opts) -> None:
    db = shaledb.open(db_path, **small_opts)
    try:
        _fill(db, 400, b"a")
        db.flush()
        _fill(db, 400, b"b")
        db.flush()
        engine = db._engine
        stale = engine._versions.current
        assert stale.levels[0], "the fill should have left L0 tables"
        db.compact_range()
        # The unpinned lookup of a racing reader sees this: its version names deleted tables.
        with pytest.raises(ShaleError):
            for f in stale.levels[0]:
                engine._tables.get(f.number, f)
        # ... and the public read path answers from the current version.
        assert all(db.get(b"k%05d" % i) == b"b%05d" % i for i in range(400))
        snap = db.snapshot()
        try:
            assert snap.get(b"k00007") == b"b00007"
        finally:
            snap.close()
    finally:
        db.close()


def test_gets_race_flushes_and_compactions(db_path, small_opts) -> None:
    """Readers never see a key vanish or go back while tables are written and deleted."""
    db = shaledb.open(db_path, **small_opts)
    keys = [b"r%03d" % i for i in range(64)]
    for k in keys:
        db.put(k, b"%08d" % 0)
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        n = 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            n += 1
            for k in keys:
                db.put(k, b"%08d" % n)
            if n % 20 == 0:
                db.compact_range()

    def reader() -> None:
        last = dict.fromkeys(keys, 0)
        while not stop.is_set():
            for k in keys:
                v = db.get(k)
                if v is None:
                    errors.append(f"{k!r} vanished")
                    return
                if int(v) < last[k]:
                    errors.append(f"{k!r} went back from {last[k]} to {int(v)}")
                    return
                last[k] = int(v)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader),
               threading.Thread(target=reader)]
    for t in threads:
        t.start()
    threads[0].join(timeout=60)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    try:
        assert not errors, errors
        print("unpinned get retries:", db._engine.counters["unpinned_get_retries"])
        assert db.stats()["levels"], "tables were written"
    finally:
        db.close()
