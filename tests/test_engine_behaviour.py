"""Engine behaviours observable through stats(): the periodic WAL fsync, back-pressure when
L0 grows, space reclaimed from expired and deleted keys, and bounded recovery."""

from __future__ import annotations

import time

import pytest

import shaledb
from shaledb.testing import FaultInjectionFS


def test_background_fsync_happens_within_interval(db_path) -> None:
    """Default durability: a plain put is fsynced by the background thread within
    fsync_interval, without any call to sync()."""
    fs = FaultInjectionFS()
    with shaledb.open(db_path, fs=fs, fsync_interval=0.05) as db:
        db.put(b"k", b"v")
        before = fs.op_counts.get("fsync", 0)
        deadline = time.monotonic() + 5
        # Wait on the engine's own counter: the file system counts an fsync as it starts,
        # the engine once it has finished.
        while db.stats()["wal_syncs"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.stats()["wal_syncs"] >= 1
        assert fs.op_counts.get("fsync", 0) > before


def test_no_background_fsync_when_disabled(db_path) -> None:
    fs = FaultInjectionFS()
    with shaledb.open(db_path, fs=fs, fsync_interval=None) as db:
        before = fs.op_counts.get("fsync", 0)
        db.put(b"k", b"v")
        time.sleep(0.2)
        assert fs.op_counts.get("fsync", 0) == before
        db.put(b"k2", b"v", sync=True)
        assert fs.op_counts.get("fsync", 0) == before + 1


def test_crash_after_background_fsync_keeps_writes(db_path) -> None:
    """Power loss after the interval has passed loses nothing written before it."""
    fs = FaultInjectionFS()
    db = shaledb.open(db_path, fs=fs, fsync_interval=0.05)
    for i in range(100):
        db.put(b"k%d" % i, b"v")
    time.sleep(0.5)
    fs.crash()
    try:
        db.close()
    except shaledb.ShaleError:
        pass
    with shaledb.open(db_path) as db:
        assert all(db.get(b"k%d" % i) == b"v" for i in range(100))


def test_l0_growth_slows_and_stops_writers(db_path, small_opts) -> None:
    """With compaction unable to keep up (tiny triggers), writers are delayed and stalled,
    L0 never grows past the stop trigger, and every write lands."""
    opts = dict(small_opts, l0_compaction_trigger=1, l0_slowdown_trigger=2, l0_stop_trigger=3)
    with shaledb.open(db_path, **opts) as db:
        max_l0 = 0
        for i in range(6000):
            db.put(b"key%06d" % i, b"x" * 100)
            if i % 200 == 0:
                max_l0 = max(max_l0, db.stats()["levels"][0]["files"])
        st = db.stats()
        assert st["write_slowdowns"] + st["write_stalls"] > 0
        assert max_l0 <= opts["l0_stop_trigger"]
        assert sum(1 for _ in db.range()) == 6000


def test_compaction_reclaims_expired_and_deleted_space(db_path, small_opts, fake_clock) -> None:
    with shaledb.open(db_path, clock=fake_clock, **small_opts) as db:
        for i in range(3000):
            db.put(b"t%05d" % i, b"x" * 200, ttl=10)
        for i in range(3000):
            db.put(b"d%05d" % i, b"y" * 200)
        db.compact_range()
        full = db.stats()["total_table_bytes"]
        for i in range(3000):
            db.delete(b"d%05d" % i)
        fake_clock.advance(11)
        db.compact_range()
        st = db.stats()
        assert sum(1 for _ in db.range()) == 0
        assert st["total_table_bytes"] < full / 20, (full, st["total_table_bytes"])


def test_recovery_replays_at_most_a_memtable_or_two(db_path, small_opts) -> None:
    """Recovery work is bounded by the memtable size, not by the data size."""
    with shaledb.open(db_path, **small_opts) as db:
        for i in range(20000):
            db.put(b"k%06d" % i, b"v" * 50)
    with shaledb.open(db_path, **small_opts) as db:
        st = db.stats()
        assert st["memtable_bytes"] <= 2 * small_opts["memtable_size"]
        assert db.get(b"k019999") == b"v" * 50


def test_compaction_read_error_is_retried_not_fatal(db_path, small_opts) -> None:
    """EIO while a background compaction reads its inputs is reported and retried; the DB
    stays writable, and once reads work again compaction catches up."""
    import errno

    fs = FaultInjectionFS()
    with shaledb.open(db_path, fs=fs, **small_opts) as db:
        fs.inject("read", ".sst", errno.EIO, count=None)
        for i in range(600):  # a few memtables: enough L0 tables to want a compaction
            db.put(b"k%05d" % i, b"v" * 100)
        db.flush()
        deadline = time.monotonic() + 10
        while db.stats()["compaction_read_errors"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        st = db.stats()
        assert st["compaction_read_errors"] > 0 and st["background_error"] is None
        assert "Input/output error" in st["last_compaction_read_error"]
        fs.clear()
        db.put(b"after", b"ok")
        db.compact_range()
        assert db.get(b"after") == b"ok" and db.get(b"k00599") == b"v" * 100
        assert db.stats()["levels"][0]["files"] == 0


def test_table_metadata_is_charged_to_the_block_cache(db_path, small_opts) -> None:
    """Filters and indexes of open tables count against block_cache_size, so blocks plus
    metadata stay within it; the charge goes when tables are dropped."""
    import os as _os

    opts = {**small_opts, "block_cache_size": 256 * 1024}
    db = shaledb.open(db_path, **opts)
    try:
        for i in range(20_000):
            db.put(b"k%08d" % i, _os.urandom(50))
        db.flush()
        for i in range(0, 20_000, 7):  # reads open every table and fill the cache
            assert db.get(b"k%08d" % i) is not None
        cache = db.stats()["block_cache"]
        engine = db._engine
        readers = [engine._tables.get(f.number) for _, f in engine._versions.current.files()]
        assert cache["pinned_bytes"] >= sum(r.meta_bytes for r in readers) > 0
        assert cache["bytes"] + cache["pinned_bytes"] <= cache["capacity"]
        assert cache["bytes"] > 0  # blocks still fit next to the metadata
    finally:
        db.close()
    assert engine._block_cache is not None and engine._block_cache.pinned == 0


def test_slowdown_throttles_writes_to_the_delayed_write_rate(db_path, small_opts) -> None:
    """While L0 is at or past l0_slowdown_trigger, writes go at most at delayed_write_rate
    bytes/s (memtable charge), falling as L0 grows; the delay is counted in slowdown_ms."""
    import time as _time

    rate = 1 << 20
    opts = dict(small_opts, l0_compaction_trigger=1, l0_slowdown_trigger=1,
                l0_stop_trigger=100, delayed_write_rate=rate)
    with shaledb.open(db_path, **opts) as db:
        engine = db._engine
        with engine._compaction_lock:  # hold compactions off: L0 only grows
            i = 0
            while db.stats()["levels"][0]["files"] < 1:
                db.put(b"a%06d" % i, b"x" * 1000)
                i += 1
                if i % 500 == 0:
                    db.flush()
            before = db.stats()["slowdown_ms"]
            value = b"y" * 1000
            charge = 300_000  # bytes of memtable charge to write under the throttle
            per_put = len(value) + 7 + engine_overhead()
            t0 = _time.monotonic()
            for j in range(charge // per_put):
                db.put(b"b%06d" % j, value)
            elapsed = _time.monotonic() - t0
            slowed = db.stats()["slowdown_ms"] - before
        # At most the full rate (L0 >= 1 of 99 steps): 300 KB at 1 MiB/s >= ~0.28 s.
        assert elapsed >= 0.25 and slowed >= 250, (elapsed, slowed)
        assert sum(1 for _ in db.range()) == i + charge // per_put


def engine_overhead() -> int:
    from shaledb.engine.dbformat import ENTRY_OVERHEAD

    return ENTRY_OVERHEAD


def test_compaction_write_rate_limits_compaction_output(db_path, small_opts) -> None:
    """With compaction_write_rate, a compaction writing N bytes takes at least about
    (N - one second's burst) / rate: the limiter really throttles the output."""
    import os as _os
    import time as _time

    rate = 1 << 20
    opts = {**small_opts, "memtable_size": 4 << 20, "target_file_size": 4 << 20,
            "compaction_write_rate": rate, "compaction_process_threshold": None}
    with shaledb.open(db_path, **opts) as db:
        for i in range(30_000):
            db.put(b"k%08d" % i, _os.urandom(100))
        db.flush()
        before = db.stats()["compaction_bytes_written"]
        t0 = _time.monotonic()
        db.compact_range()
        elapsed = _time.monotonic() - t0
        written = db.stats()["compaction_bytes_written"] - before
        assert written > 2 * rate  # enough output that the burst does not cover it
        assert elapsed >= (written - rate) / rate * 0.9, (written, elapsed)
        assert sum(1 for _ in db.range()) == 30_000
    with pytest.raises(shaledb.InvalidArgument):
        shaledb.open(db_path, compaction_write_rate=10)


def test_a_full_memtable_starts_its_wal_writeback_before_the_switch(db_path) -> None:
    """The write that fills the memtable wakes the background syncer at once, so that the
    seal of the segment after the next write's memtable switch (by the flush thread since
    database format 4; before, on the writer's thread, the server's event loop) finds it
    written back: under the hostile soak the seal's
    fsync held the loop up to 1,057 ms, and 200 ms once the syncer starts early."""
    with shaledb.open(db_path, fsync_interval=30, memtable_size=1 << 20) as db:
        time.sleep(0.1)  # the syncer's first wait begins
        db.put(b"small", b"v")
        time.sleep(0.3)
        assert db.stats()["wal_syncs"] == 0  # nothing wakes it before the memtable is full
        db.put(b"big", b"x" * (1 << 20))  # fills the memtable
        deadline = time.monotonic() + 5
        while db.stats()["wal_syncs"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.stats()["wal_syncs"] >= 1, "the WAL waited for the 30 s fsync_interval"
