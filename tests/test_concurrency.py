"""Concurrency tests: readers, writers, snapshots, transactions, flush and compaction at once.

Writers only ever write in ways that leave checkable invariants:
- a "group" batch writes the same counter value to all N keys of the group, so any
  consistent view (snapshot, range iterator) must see the N keys equal;
- each writer's counters only grow, so a reader must never see one go backwards;
- transactional increments of a shared counter must not lose updates.
Tiny option sizes make the background flushes and compactions run constantly meanwhile.
A deadlock shows as a timeout.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

import shaledb

N_WRITERS = 2
GROUP_KEYS = 8
PAD = b"p" * 300
DURATION = 6.0


def gkey(w: int, i: int) -> bytes:
    return b"g%d/k%02d" % (w, i)


def ckey(w: int) -> bytes:
    return b"c%d" % w


def enc(n: int) -> bytes:
    return b"%012d:" % n + PAD


def dec(v: bytes) -> int:
    return int(v.split(b":", 1)[0])


class Harness:
    def __init__(self, db):
        self.db = db
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.last_written = [0] * N_WRITERS  # highest counter fully written per writer
        self.txn_done = 0
        self.txn_lock = threading.Lock()
        self.reads = 0
        self.filler: list[dict[bytes, bytes]] = [{} for _ in range(N_WRITERS)]  # per writer

    def run(self, fn, *args):
        def wrapper():
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
                self.stop.set()

        t = threading.Thread(target=wrapper, daemon=True)
        t.start()
        return t

    # -- writers ---------------------------------------------------------------------------------
    def writer(self, w: int) -> None:
        rng = random.Random(w)
        n = 0
        while not self.stop.is_set():
            n += 1
            if rng.random() < 0.5:
                with self.db.batch() as b:
                    for i in range(GROUP_KEYS):
                        b.put(gkey(w, i), enc(n))
            else:
                wb = shaledb.WriteBatch()
                for i in rng.sample(range(GROUP_KEYS), GROUP_KEYS):
                    wb.put(gkey(w, i), enc(n))
                self.db.write(wb)
            self.db.put(ckey(w), enc(n))
            # filler churn: puts and deletes of unrelated keys
            fk = b"f%d/%04d" % (w, rng.randrange(4000))
            if rng.random() < 0.3:
                self.db.delete(fk)
                self.filler[w].pop(fk, None)
            else:
                fv = rng.randbytes(300)  # incompressible: fills deeper levels
                self.db.put(fk, fv)
                self.filler[w][fk] = fv
            self.last_written[w] = n

    def txn_incrementer(self, times: int) -> None:
        def incr(txn):
            v = txn.get(b"shared")
            txn.put(b"shared", b"%d" % (int(v) + 1))

        for _ in range(times):
            if self.stop.is_set():
                return
            self.db.run_transaction(incr, retries=1000)
            with self.txn_lock:
                self.txn_done += 1

    # -- readers ---------------------------------------------------------------------------------
    def check_group(self, pairs, w, where):
        assert [k for k, _ in pairs] == [gkey(w, i) for i in range(GROUP_KEYS)], where
        vals = {dec(v) for _, v in pairs}
        assert len(vals) == 1, (where, w, sorted(vals))
        return vals.pop()

    def reader(self, seed: int) -> None:
        rng = random.Random(seed)
        seen_c = [0] * N_WRITERS  # monotonic per-writer counters seen via get
        seen_g = [0] * N_WRITERS  # monotonic group counters seen via snapshots/ranges
        while not self.stop.is_set():
            w = rng.randrange(N_WRITERS)
            choice = rng.random()
            if choice < 0.3:
                v = self.db.get(ckey(w))
                if v is not None:
                    c = dec(v)
                    assert c >= seen_c[w], ("counter went backwards", w, seen_c[w], c)
                    seen_c[w] = c
            elif choice < 0.6:
                with self.db.snapshot() as snap:
                    gets = [(gkey(w, i), snap.get(gkey(w, i))) for i in range(GROUP_KEYS)]
                    if gets[0][1] is None:
                        assert all(v is None for _, v in gets), gets
                        continue
                    c = self.check_group(gets, w, "snapshot.get")
                    assert self.check_group(list(snap.prefix(b"g%d/" % w)), w,
                                            "snapshot.prefix") == c
                    rev = list(snap.range(b"g%d/" % w, b"g%d0" % w, reverse=True))
                    assert self.check_group(rev[::-1], w, "snapshot.range reverse") == c
                    cv = snap.get(ckey(w))
                    # the counter key is written after the group, in the same writer thread
                    assert cv is None or dec(cv) <= c, (dec(cv), c)
                    if rng.random() < 0.3:
                        # hold the snapshot while writers overwrite and compaction runs:
                        # it must keep returning exactly the same versions
                        time.sleep(0.03)
                        again = [(gkey(w, i), snap.get(gkey(w, i))) for i in range(GROUP_KEYS)]
                        assert again == gets, "snapshot changed while held"
                        assert list(snap.prefix(b"g%d/" % w)) == gets
                        assert snap.get(ckey(w)) == cv
                assert c >= seen_g[w], ("snapshot went backwards", w, seen_g[w], c)
                seen_g[w] = c
            elif choice < 0.85:
                it = self.db.range(b"g%d/" % w, b"g%d0" % w)
                pairs = []
                for kv in it:
                    pairs.append(kv)
                    if rng.random() < 0.2:
                        time.sleep(0.001)  # let writers and compaction run mid-iteration
                if pairs:
                    c = self.check_group(pairs, w, "db.range")
                    assert c >= seen_g[w], ("range went backwards", w, seen_g[w], c)
                    seen_g[w] = c
            else:
                pairs = list(self.db.prefix(b"g%d/" % w, reverse=True, limit=3))
                if pairs:
                    assert [k for k, _ in pairs] == [gkey(w, i) for i in (7, 6, 5)]
                    assert len({v for _, v in pairs}) == 1, pairs
            self.reads += 1

    # -- maintenance -----------------------------------------------------------------------------
    def maintainer(self) -> None:
        rng = random.Random(99)
        while not self.stop.is_set():
            if rng.random() < 0.5:
                self.db.flush()
            else:
                w = rng.randrange(N_WRITERS)
                lo, hi = (None, None) if rng.random() < 0.3 else (b"g%d/" % w, b"g%d0" % w)
                self.db.compact_range(lo, hi)
            time.sleep(0.02)


@pytest.mark.timeout(120)
def test_concurrent_readers_writers_flush_compaction(db_path, small_opts):
    """Batches stay atomic, reads never go back in time, transactions lose no updates, and all
    data is intact at the end and after reopen, while flush/compaction run concurrently."""
    txn_per_thread = 150
    with shaledb.open(db_path, **small_opts) as db:
        db.put(b"shared", b"0")
        h = Harness(db)
        threads = [h.run(h.writer, w) for w in range(N_WRITERS)]
        threads += [h.run(h.reader, 100 + r) for r in range(3)]
        threads.append(h.run(h.maintainer))
        txn_threads = [h.run(h.txn_incrementer, txn_per_thread) for _ in range(2)]
        deadline = time.monotonic() + DURATION
        while time.monotonic() < deadline and not h.stop.is_set():
            time.sleep(0.05)
        for t in txn_threads:
            t.join(timeout=60)
        h.stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads + txn_threads), "thread hung (deadlock?)"
        if h.errors:
            raise h.errors[0]
        assert h.reads > 50, h.reads
        st = db.stats()
        assert st["flushes"] >= 3, st
        assert st["background_error"] is None
        assert int(db.get(b"shared")) == h.txn_done == 2 * txn_per_thread

        def verify(d):
            for w in range(N_WRITERS):
                n = h.last_written[w]
                assert n > 0
                assert list(d.prefix(b"g%d/" % w)) == [(gkey(w, i), enc(n))
                                                       for i in range(GROUP_KEYS)]
                assert d.get(ckey(w)) == enc(n)
                assert list(d.prefix(b"f%d/" % w)) == sorted(h.filler[w].items())
            assert int(d.get(b"shared")) == 2 * txn_per_thread

        verify(db)
        db.compact_range()
        verify(db)
    with shaledb.open(db_path, **small_opts) as db:
        verify(db)


@pytest.mark.timeout(120)
def test_concurrent_disjoint_writers_all_land(db_path, small_opts):
    """Many threads writing disjoint keys (group commit): every acknowledged write is readable
    afterwards and after reopen; sequence numbers count every op exactly once."""
    n_threads, per_thread = 6, 1500
    with shaledb.open(db_path, **small_opts) as db:
        seq0 = db.stats()["last_sequence"]
        errors: list[BaseException] = []

        def work(t):
            try:
                for i in range(per_thread):
                    if i % 3 == 0:
                        with db.batch() as b:
                            b.put(b"t%d/%05d" % (t, i), b"%d" % i + PAD)
                    else:
                        db.put(b"t%d/%05d" % (t, i), b"%d" % i + PAD, sync=(i % 500 == 1))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=100)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors[0]
        assert db.stats()["last_sequence"] - seq0 == n_threads * per_thread
        exp = sorted((b"t%d/%05d" % (t, i), b"%d" % i + PAD)
                     for t in range(n_threads) for i in range(per_thread))
        assert list(db.range()) == exp
    with shaledb.open(db_path, **small_opts) as db:
        assert list(db.range()) == exp


@pytest.mark.timeout(60)
def test_close_while_background_work(db_path, small_opts):
    """close() while flushes/compactions are pending returns, releases the lock and loses no
    written data."""
    with shaledb.open(db_path, **small_opts) as db:
        for i in range(3000):
            db.put(b"k%05d" % i, PAD)
    with shaledb.open(db_path, **small_opts) as db:
        assert sum(1 for _ in db.range()) == 3000


def test_concurrent_sync_writers_share_fsyncs(db_path):
    """Group commit: 8 threads of durable puts need far fewer fsyncs than puts, and every
    put is durable and visible."""
    per, nthreads = 150, 8
    with shaledb.open(db_path, fsync_interval=None) as db:
        before = db.stats()["wal_syncs"]
        barrier = threading.Barrier(nthreads)

        def run(t: int) -> None:
            barrier.wait()
            for i in range(per):
                db.put(b"t%02d-%06d" % (t, i), b"v" * 100, sync=True)

        threads = [threading.Thread(target=run, args=(t,)) for t in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        st = db.stats()
        syncs = st["wal_syncs"] - before
        assert sum(1 for _ in db.range()) == per * nthreads
        assert 0 < syncs <= per * nthreads // 2, st
        assert st["group_commits"] > 0
