"""The engine's fast paths (issue 14) keep the semantics of the paths they bypass.

- Point lookups run without the mutex and without pinning a version; a table that a
  compaction deleted meanwhile makes the lookup repeat itself pinned.
- Compaction merges chunks and writes them with TableBuilder.add_run: the same tables.
- Range reads merge chunks (lists of entries) instead of single entries; short ranges are
  read at once, unpinned; a lazy iterator releases its pin without a weak reference.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import random
import threading
import time
from collections.abc import Iterator

import pytest

import shaledb
from shaledb.engine.compaction import drop_obsolete, drop_obsolete_chunks
from shaledb.engine.db import EAGER_RANGE_LIMIT
from shaledb.engine.dbformat import DELETE, PUT, Entry
from shaledb.engine.iterator import merge_chunks, visible, visible_chunks
from shaledb.engine.memtable import MemTable
from shaledb.engine.sstable import TableReader
from shaledb.engine.sstable.writer import TableWriter
from shaledb.engine.vfs import default_fs
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


@pytest.mark.parametrize("reverse", [False, True])
def test_merge_chunks_equals_heapq_merge(reverse: bool) -> None:
    """Chunked merging (a round per smallest chunk end, one sort per round) yields exactly
    the stream heapq.merge does, whatever the chunk sizes and overlaps, and visible_chunks
    what visible does, with and without a limit."""
    rng = random.Random(14)
    for _ in range(300):
        nsrc = rng.randint(1, 5)
        entries = [(b"k%03d" % rng.randrange(60), -rng.randrange(1, 10_000), rng.randrange(2),
                    rng.choice([0, 0, 5, 50]), b"v") for _ in range(rng.randint(0, 200))]
        entries = list(dict.fromkeys(entries))  # (key, -seq) unique, as in a database
        sources: list[list[Entry]] = [[] for _ in range(nsrc)]
        for e in entries:
            sources[rng.randrange(nsrc)].append(e)
        for src in sources:
            src.sort(reverse=reverse)

        def chunked(src: list[Entry]) -> Iterator[list[Entry]]:
            i = 0
            while i < len(src):
                n = rng.randint(1, 20)
                yield src[i:i + n]
                i += n

        want = list(heapq.merge(*sources, reverse=reverse))
        got = [e for c in merge_chunks([chunked(s) for s in sources], reverse) for e in c]
        assert got == want
        seq = rng.randrange(1, 10_000)
        limit = rng.choice([None, 1, 3, 10])
        expect = list(visible(iter(want), seq, 10, reverse))[:limit]
        chunks = merge_chunks([chunked(s) for s in sources], reverse)
        assert [kv for c in visible_chunks(chunks, seq, 10, reverse, limit)
                for kv in c] == expect


def test_short_and_long_ranges_agree(db_path, small_opts) -> None:
    """The eager path (limit <= EAGER_RANGE_LIMIT) and the lazy one return the same pairs,
    across memtable, L0 and deeper tables, deletions, overwrites and both directions."""
    db = shaledb.open(db_path, **small_opts)
    try:
        rng = random.Random(7)
        model: dict[bytes, bytes] = {}
        for step in range(3000):
            k = b"s%04d" % rng.randrange(800)
            if rng.random() < 0.2:
                db.delete(k)
                model.pop(k, None)
            else:
                v = b"%d" % step
                db.put(k, v)
                model[k] = v
            if step % 1000 == 999:
                db.flush()
        keys = sorted(model)
        for _ in range(200):
            start = b"s%04d" % rng.randrange(800)
            limit = rng.choice([1, 5, 10, EAGER_RANGE_LIMIT, EAGER_RANGE_LIMIT + 1, 100])
            fwd = [(k, model[k]) for k in keys if k >= start][:limit]
            assert list(db.range(start=start, limit=limit)) == fwd
            back = [(k, model[k]) for k in reversed(keys) if k < start][:limit]
            assert list(db.range(stop=start, reverse=True, limit=limit)) == back
        assert list(db.range()) == [(k, model[k]) for k in keys]
    finally:
        db.close()


def test_short_forward_ranges_match_a_model_across_levels_and_snapshots(db_path,
                                                                         small_opts) -> None:
    """The one-round short forward range (Engine._collect_forward: a run per source, one
    sort, a bound past which it gives up) against a model and against the lazy chunked
    path: bounded and unbounded ranges over the memtable, L0 and sorted levels of several
    files each, with deletions, overwrites, expired values (so the round often falls short
    and falls back) and snapshots older than the newest writes."""
    now = [1_000_000.0]
    db = shaledb.open(db_path, clock=lambda: now[0], **small_opts)
    try:
        rng = random.Random(17)
        model: dict[bytes, bytes] = {}
        snaps: list[tuple[shaledb.Snapshot, dict[bytes, bytes]]] = []
        for step in range(6000):
            k = b"r%04d" % rng.randrange(1500)
            r = rng.random()
            if r < 0.25:
                db.delete(k)
                model.pop(k, None)
            elif r < 0.3:
                db.put(k, b"gone", ttl=1)  # expired below, before any read
                model.pop(k, None)
            else:
                # Incompressible, so the tables' sizes (and the tree's shape: several
                # files per sorted level) do not hang on how well a value compresses.
                v = b"%d." % step + random.Random(step).randbytes(200)
                db.put(k, v)
                model[k] = v
            if step == 2000:
                db.compact_range()  # sorted levels of several files
                # compact_range is synchronous: this shape does not depend on timing.
                assert max(lvl["files"] for lvl in db.stats()["levels"][1:]) >= 3
            if step % 1500 == 1499:
                db.flush()
            if step in (3000, 5900):
                now[0] += 5
                snaps.append((db.snapshot(), dict(model)))
        now[0] += 5
        assert any(lvl["files"] > 1 for lvl in db.stats()["levels"][1:])
        views: list[tuple[shaledb.DB | shaledb.Snapshot, dict[bytes, bytes]]] = [
            (db, model), *snaps]
        for view, want_map in views:
            keys = sorted(want_map)
            for _ in range(300):
                start = rng.choice([None, b"r%04d" % rng.randrange(1600)])
                stop = rng.choice([None, None, b"r%04d" % rng.randrange(1600)])
                limit = rng.choice([1, 3, 10, EAGER_RANGE_LIMIT])
                want = [(k, want_map[k]) for k in keys
                        if (start is None or k >= start) and (stop is None or k < stop)]
                got = list(view.range(start=start, stop=stop, limit=limit))
                assert got == want[:limit], (start, stop, limit)
                assert list(itertools.islice(view.range(start=start, stop=stop),
                                             limit)) == got
        for snap, _ in snaps:
            snap.close()
    finally:
        db.close()


def test_unstarted_iterator_unpins_its_version(db_path, small_opts) -> None:
    """A range iterator dropped before its first next() releases its version pin (without
    a weak reference to the generator)."""
    db = shaledb.open(db_path, **small_opts)
    try:
        _fill(db, 50, b"a")
        engine = db._engine
        it = db.range()
        assert len(engine._pinned) == 1
        del it
        gc.collect()
        assert engine._pinned == {}
        it2 = db.range()
        assert next(it2)[0] == b"k00000"
        del it2
        gc.collect()
        assert engine._pinned == {}
    finally:
        db.close()


def test_memtable_forward_chunks_match_a_model() -> None:
    """scan_chunk forward (on the sorted list's sublists) against a plain sorted model:
    bounds inclusive or not, limits, versions hidden from older sequences."""
    rng = random.Random(3)
    mem = MemTable()
    versions: dict[bytes, list[int]] = {}
    seq = 0
    for _ in range(5000):  # enough keys for many sublists (load 1000)
        k = b"m%05d" % rng.randrange(4000)
        seq += 1
        mem.apply(seq, [1, k, 0, b"%d" % seq])
        versions.setdefault(k, []).append(seq)
    keys = sorted(versions)
    for _ in range(500):
        lo = rng.choice([None, b"m%05d" % rng.randrange(4100)])
        hi = rng.choice([None, b"m%05d" % rng.randrange(4100)])
        lo_inc = rng.random() < 0.5
        at = rng.randrange(1, seq + 1)
        limit = rng.choice([1, 2, 10, 16, 64, 1024, 5000])
        want = []
        for k in keys:
            if lo is not None and (k < lo or (k == lo and not lo_inc)):
                continue
            if hi is not None and k >= hi:
                break
            vis = [s for s in versions[k] if s <= at]
            if vis:
                want.append((k, -vis[-1], 1, 0, b"%d" % vis[-1]))
            if len(want) == limit:
                break
        assert mem.scan_chunk(lo, lo_inc, hi, False, False, at, limit) == want


def test_memtable_chunks_in_both_directions_match_a_model() -> None:
    """scan_chunk on the sorted sublists and their parallel newest entries, in both
    directions, with every bound inclusive or not, against a plain sorted model: keys in
    many sublists (split at 1024), deletions, overwrites, readers at older sequences (the
    per-key check) and at the newest (the slice path); iter_all and point reads too."""
    rng = random.Random(11)
    mem = MemTable()
    versions: dict[bytes, list[tuple[int, int, bytes]]] = {}
    seq = 0
    for _ in range(9000):
        k = b"m%05d" % rng.randrange(6000)
        kind = DELETE if rng.random() < 0.1 else PUT
        value = b"" if kind == DELETE else b"%d" % (seq + 1)
        ops: list[object] = [kind, k, 0, value]
        if rng.random() < 0.2:  # a batch of a few ops, some on the same key
            k2 = rng.choice([k, b"m%05d" % rng.randrange(6000)])
            ops += [PUT, k2, 0, b"b%d" % (seq + 2)]
        mem.apply(seq + 1, ops)
        for j in range(0, len(ops), 4):
            seq += 1
            versions.setdefault(ops[j + 1], []).append(  # type: ignore[arg-type]
                (seq, ops[j], ops[j + 3]))  # type: ignore[arg-type]
    assert mem.last_seq == seq
    keys = sorted(versions)

    def model(lo, lo_inc, hi, hi_inc, reverse, at, limit):
        out: list[Entry] = []
        if limit <= 0:
            return out
        for k in (reversed(keys) if reverse else keys):
            if lo is not None and (k < lo or (k == lo and not lo_inc)):
                continue
            if hi is not None and (k > hi or (k == hi and not hi_inc)):
                continue
            vis = [v for v in versions[k] if v[0] <= at]
            if vis:
                s, kind, value = vis[-1]
                out.append((k, -s, kind, 0, value))
            if len(out) == limit:
                break
        return out

    for _ in range(1500):
        lo = rng.choice([None, b"m%05d" % rng.randrange(6100)])
        hi = rng.choice([None, b"m%05d" % rng.randrange(6100)])
        lo_inc, hi_inc, reverse = (rng.random() < 0.5 for _ in range(3))
        at = rng.choice([seq, seq + 5, rng.randrange(1, seq + 1)])
        limit = rng.choice([0, 1, 2, 10, 16, 64, 1024, 1500, 9000])
        assert mem.scan_chunk(lo, lo_inc, hi, hi_inc, reverse, at, limit) == model(
            lo, lo_inc, hi, hi_inc, reverse, at, limit), (lo, lo_inc, hi, hi_inc, reverse, at,
                                                            limit)
    for k in rng.sample(keys, 300):
        at = rng.randrange(1, seq + 1)
        vis = [v for v in versions[k] if v[0] <= at]
        want = (vis[-1][0], vis[-1][1], 0, vis[-1][2]) if vis else None
        assert mem.get(k, at) == want
        assert mem.latest_seq(k) == versions[k][-1][0]
    assert mem.get(b"absent", seq) is None and mem.latest_seq(b"absent") is None
    mem.frozen = True
    assert list(mem.iter_all()) == [(k, -s, kind, 0, value) for k in keys
                                    for s, kind, value in reversed(versions[k])]


@pytest.mark.parametrize("target", [None, 1, 3000, 20000])
def test_write_chunks_cuts_tables_as_write_does(tmp_path, target) -> None:
    """TableWriter.write_chunks (TableBuilder.add_run per chunk, as compaction writes) cuts
    blocks and tables at the same places as write (add per entry), with the same
    properties; drop_obsolete_chunks keeps what drop_obsolete keeps."""
    rng = random.Random(target or 0)
    fs = default_fs()
    entries: list[Entry] = []
    seq = 10_000
    for i in range(3000):
        key = b"w%05d" % (i // 3 if rng.random() < 0.3 else i)
        if entries and entries[-1][0] == key:
            seq -= 1
        kind = rng.choice([PUT, PUT, PUT, DELETE])
        entries.append((key, -seq, kind, rng.choice([0, 0, 5]),
                        b"" if kind == DELETE else rng.randbytes(rng.randrange(0, 300))))
        seq -= 1
    entries.sort()
    kept = list(drop_obsolete(iter(entries), 9_000, 10, True))

    def chunked() -> Iterator[list[Entry]]:
        i = 0
        while i < len(entries):
            n = rng.randint(1, 90)
            yield entries[i:i + n]
            i += n

    assert [e for c in drop_obsolete_chunks(chunked(), 9_000, 10, True) for e in c] == kept
    results = []
    for mode in ("write", "write_chunks"):
        d = tmp_path / mode
        d.mkdir()
        numbers = iter(range(1, 1000))
        w = TableWriter(fs, lambda n, d=d: str(d / f"{n:06d}.sst"), numbers.__next__,
                        block_size=512, compression="lz4", target_size=target, max_outputs=40)
        if mode == "write":
            metas = w.write(iter(kept))
        else:
            metas = w.write_chunks(c for c in [kept[i:i + 77] for i in range(0, len(kept), 77)])
        tables = []
        for m in metas:
            r = TableReader(fs, str(d / f"{m.number:06d}.sst"), m.number, None)
            props = {k: v for k, v in r.properties.items() if k != "created_at"}
            tables.append((m.size, m.smallest, m.largest, m.smallest_seq, m.largest_seq,
                           m.entries, r.nblocks, props, list(r.iter_range(None, None))))
            r.close()
        results.append(tables)
    assert results[0] == results[1]
    assert len(results[0]) > (1 if target else 0)


def test_lone_and_concurrent_writers_share_one_sequence(db_path, small_opts) -> None:
    """The single-writer fast path (no queue, no group) and the group-commit path interleave
    without losing or reusing a sequence number: lone puts, concurrent puts, durable puts,
    batches and deletes all land, and the last sequence counts every operation."""
    db = shaledb.open(db_path, **small_opts)
    try:
        ops = 0
        for i in range(500):  # alone: the fast path
            db.put(b"a%04d" % i, b"x")
            ops += 1
        assert db._engine._last_seq == ops

        def worker(t: int) -> None:
            for i in range(300):
                if i % 50 == 0:
                    db.put(b"t%d/%04d" % (t, i), b"s", sync=True)
                elif i % 7 == 0:
                    with db.batch() as b:
                        b.put(b"t%d/%04d" % (t, i), b"b")
                        b.put(b"t%d/%04db" % (t, i), b"b")
                else:
                    db.put(b"t%d/%04d" % (t, i), b"p")
                if i % 11 == 0:
                    db.delete(b"a%04d" % (t * 100 + i % 100))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        per_thread = sum(2 if i % 7 == 0 and i % 50 else 1 for i in range(300)) + sum(
            1 for i in range(300) if i % 11 == 0)
        ops += 4 * per_thread
        assert db._engine._last_seq == ops
        assert all(db.get(b"t%d/%04d" % (t, i)) is not None for t in range(4)
                   for i in range(300))
    finally:
        db.close()
    db = shaledb.open(db_path, **small_opts)
    try:
        assert db.get(b"t3/0299") == b"p"
        assert db._engine._last_seq == ops
    finally:
        db.close()
