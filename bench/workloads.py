"""The data set, the workloads, and how they are grouped into subprocesses.

Data: ``n`` distinct random 16-byte keys held in one ``bytes`` buffer (key ``i`` is bytes
``16*i .. 16*i+16``), and values that are ``value_size``-byte slices of a 1 MiB random pool
(value ``i`` starts at ``i * STRIDE mod 1 MiB``; distinct records get far-apart slices, so the
values are random and effectively incompressible). ``fillseq`` uses ascending keys spread over
the whole 128-bit space instead. Random index streams are precomputed ``array('I')`` so that
choosing a key costs the same few tens of nanoseconds for every store.

Every workload function takes ``(store, data, params)`` and returns a dict with at least
``ops``, ``seconds``, ``ops_per_sec`` and ``mb_per_sec``; latency percentiles (microseconds)
come from ``time.perf_counter_ns`` around every ``sample_every``-th operation (every operation
for the sync and concurrent workloads).
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

from .stores import POWER_LOSS, PROCESS_CRASH, Serialized, Store

KEY_SIZE = 16
POOL = 1 << 20
MASK = POOL - 1
STRIDE = 104_729          # a prime: consecutive records get far-apart slices of the pool
BATCH = 1000


class Dataset:
    """Keys, values and precomputed random index streams for one run."""

    def __init__(self, n: int, value_size: int, seed: int) -> None:
        self.n = n
        self.value_size = value_size
        self.seed = seed
        rng = random.Random(seed)
        self.pool = rng.randbytes(POOL + value_size)
        self.keys = _random_bytes(rng, KEY_SIZE * n)
        self.record_bytes = KEY_SIZE + value_size
        self._streams: dict[str, array[int]] = {}
        self._missing: bytes | None = None

    def key(self, i: int) -> bytes:
        return self.keys[i * KEY_SIZE: i * KEY_SIZE + KEY_SIZE]

    def value(self, i: int) -> bytes:
        o = (i * STRIDE) & MASK
        return self.pool[o: o + self.value_size]

    def seq_key(self, i: int) -> bytes:
        """Ascending keys spread over the key space (for fillseq)."""
        step = ((1 << 128) - 1) // max(self.n, 1)
        return (i * step + 0x5A5A5A5A).to_bytes(KEY_SIZE, "big")

    def stream(self, name: str, count: int, bound: int | None = None) -> array[int]:
        """``count`` uniform random indices in ``[0, bound)``, fixed by (seed, name)."""
        bound = self.n if bound is None else bound
        tag = f"{name}:{count}:{bound}"
        arr = self._streams.get(tag)
        if arr is None:
            rng = random.Random(f"{self.seed}:{tag}")
            arr = array("I")
            left = count
            while left:
                chunk = min(left, 1 << 16)
                raw = array("I")
                raw.frombytes(rng.randbytes(4 * chunk))
                arr.extend(x % bound for x in raw)
                left -= chunk
            self._streams[tag] = arr
        return arr

    def missing_keys(self, count: int) -> bytes:
        """``count`` random 16-byte keys from another seed (absent from the data set)."""
        if self._missing is None or len(self._missing) < KEY_SIZE * count:
            rng = random.Random(f"{self.seed}:missing")
            self._missing = _random_bytes(rng, KEY_SIZE * count)
        return self._missing


def _random_bytes(rng: random.Random, size: int) -> bytes:
    chunks = []
    while size > 0:
        c = min(size, 1 << 20)
        chunks.append(rng.randbytes(c))
        size -= c
    return b"".join(chunks)


# -- measurement helpers --------------------------------------------------------------------
def percentiles(lat_ns: array[int] | list[int]) -> dict[str, float]:
    """p50/p99/p999/max in microseconds of a latency sample (empty dict when no samples)."""
    if not lat_ns:
        return {}
    s = sorted(lat_ns)
    n = len(s)

    def q(p: float) -> float:
        return round(s[min(n - 1, int(p * n))] / 1000.0, 2)

    return {"p50": q(0.50), "p99": q(0.99), "p999": q(0.999),
            "max": round(s[-1] / 1000.0, 2), "samples": n}


def _loop(n: int, op: Callable[[int], Any], every: int) -> tuple[float, array[int]]:
    """Run ``op(i)`` for i in range(n), timing every ``every``-th call."""
    lat = array("q")
    ns = time.perf_counter_ns
    append = lat.append
    t0 = ns()
    for i in range(n):
        if i % every:
            op(i)
        else:
            s = ns()
            op(i)
            append(ns() - s)
    return (ns() - t0) / 1e9, lat


def _run_threads(ths: list[threading.Thread], start: Any, store: Store, views: list[Store],
                 lats: list[array]) -> tuple[float, array]:
    """Start ``ths``, time them from the moment ``start`` is released until all have joined,
    release the per-thread views, and return (seconds, all latencies)."""
    for th in ths:
        th.start()
    start.wait()
    t0 = time.perf_counter_ns()
    for th in ths:
        th.join()
    secs = (time.perf_counter_ns() - t0) / 1e9
    for v in views:
        store.close_view(v)
    all_lat = array("q")
    for lat in lats:
        all_lat.extend(lat)
    return secs, all_lat


def _result(ops: int, secs: float, nbytes: int, lat: array[int] | None = None,
            **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "ops": ops, "seconds": round(secs, 4),
        "ops_per_sec": ops / secs if secs > 0 else 0.0,
        "mb_per_sec": nbytes / secs / 1e6 if secs > 0 else 0.0,
        "user_bytes": nbytes,
    }
    if lat is not None:
        r["latency_us"] = percentiles(lat)
    r.update(extra)
    return r


# -- the workloads ----------------------------------------------------------------------------
def fillseq(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    n = d.n
    put, seq_key, pool, vs = store.put, d.seq_key, d.pool, d.value_size

    def op(i: int) -> None:
        o = (i * STRIDE) & MASK
        put(seq_key(i), pool[o: o + vs])

    secs, lat = _loop(n, op, p["sample_every"])
    return _result(n, secs, n * d.record_bytes, lat, user_writes=n)


def fillrandom(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    n = d.n
    put, kb, pool, vs = store.put, d.keys, d.pool, d.value_size

    def op(i: int) -> None:
        o = (i * STRIDE) & MASK
        put(kb[i * 16: i * 16 + 16], pool[o: o + vs])

    secs, lat = _loop(n, op, p["sample_every"])
    return _result(n, secs, n * d.record_bytes, lat, user_writes=n)


def overwrite(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    count = p["overwrite_ops"]
    idx = d.stream("overwrite", count)
    put, kb, pool, vs, n = store.put, d.keys, d.pool, d.value_size, d.n

    def op(i: int) -> None:
        j = idx[i]
        o = ((j + n) * STRIDE) & MASK
        put(kb[j * 16: j * 16 + 16], pool[o: o + vs])

    secs, lat = _loop(count, op, p["sample_every"])
    return _result(count, secs, count * d.record_bytes, lat, user_writes=count)


def fillbatch(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    n = d.n
    write_batch, kb, pool, vs = store.write_batch, d.keys, d.pool, d.value_size
    batches = (n + BATCH - 1) // BATCH

    def op(b: int) -> None:
        lo = b * BATCH
        hi = min(lo + BATCH, n)
        write_batch([(kb[i * 16: i * 16 + 16], pool[(i * STRIDE) & MASK:
                                                      ((i * STRIDE) & MASK) + vs])
                     for i in range(lo, hi)])

    secs, lat = _loop(batches, op, 1)
    r = _result(n, secs, n * d.record_bytes, None, user_writes=n, batch_size=BATCH)
    r["latency_us"] = percentiles(lat)
    r["latency_unit"] = f"per batch of {BATCH}"
    return r


def readrandom(store: Store, d: Dataset, p: dict[str, Any],
               name: str = "readrandom") -> dict[str, Any]:
    count = p["reads"]
    idx = d.stream(name, count, d.n if name == "readrandom" else p["hot_keys"])
    get, kb, pool, vs = store.get, d.keys, d.pool, d.value_size
    wrong = [0]

    def op(i: int) -> None:
        j = idx[i]
        o = (j * STRIDE) & MASK
        if get(kb[j * 16: j * 16 + 16]) != pool[o: o + vs]:
            wrong[0] += 1

    secs, lat = _loop(count, op, p["sample_every"])
    r = _result(count, secs, count * d.record_bytes, lat, wrong_values=wrong[0])
    if wrong[0]:
        r["error"] = f"{wrong[0]} of {count} reads returned a wrong or missing value"
    return r


def readhot(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    r = readrandom(store, d, p, name="readhot")
    r["hot_keys"] = p["hot_keys"]
    return r


def readmissing(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    count = p["reads"]
    mk = d.missing_keys(count)
    get = store.get
    found = [0]

    def op(i: int) -> None:
        if get(mk[i * 16: i * 16 + 16]) is not None:
            found[0] += 1

    secs, lat = _loop(count, op, p["sample_every"])
    r = _result(count, secs, count * KEY_SIZE, lat, found=found[0])
    if found[0]:
        r["error"] = f"{found[0]} of {count} absent keys were found"
    return r


def seekrandom(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    count = p["seeks"]
    idx = d.stream("seekrandom", count)
    seek_next, kb = store.seek_next, d.keys
    rows = [0]
    short = [0]

    def op(i: int) -> None:
        j = idx[i]
        got = seek_next(kb[j * 16: j * 16 + 16], 10)
        rows[0] += len(got)
        if not got or got[0][0] != kb[j * 16: j * 16 + 16]:
            short[0] += 1

    secs, lat = _loop(count, op, max(1, p["sample_every"] // 4))
    r = _result(count, secs, rows[0] * d.record_bytes, lat, rows=rows[0], next_per_seek=10)
    if short[0]:
        r["error"] = f"{short[0]} of {count} seeks did not land on the existing key"
    return r


def scan(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    expected = p.get("expected_entries", d.n)
    t0 = time.perf_counter_ns()
    n = nbytes = disorder = 0
    prev = b""
    for k, v in store.scan():
        n += 1
        nbytes += len(k) + len(v)
        if k <= prev:
            disorder += 1
        prev = k
    secs = (time.perf_counter_ns() - t0) / 1e9
    r = _result(n, secs, nbytes, None, entries=n, expected_entries=expected)
    errs = []
    if n != expected:
        errs.append(f"scan returned {n} entries, expected {expected}")
    if disorder:
        errs.append(f"{disorder} keys out of order")
    if errs:
        r["error"] = "; ".join(errs)
    return r


def deleterandom(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    count = min(p["deletes"], d.n)
    delete, kb = store.delete, d.keys

    def op(i: int) -> None:  # keys 0..count-1 are random and distinct
        delete(kb[i * 16: i * 16 + 16])

    secs, lat = _loop(count, op, p["sample_every"])
    # Spot-check that deleted keys are gone and others are not.
    get = store.get
    gone = sum(get(d.key(i)) is None for i in range(0, count, max(1, count // 1000)))
    kept = sum(get(d.key(i)) is not None for i in range(count, d.n, max(1, d.n // 1000)))
    checked_gone = len(range(0, count, max(1, count // 1000)))
    checked_kept = len(range(count, d.n, max(1, d.n // 1000)))
    r = _result(count, secs, count * KEY_SIZE, lat, user_writes=count)
    if gone != checked_gone or kept != checked_kept:
        r["error"] = (f"after deletes: {checked_gone - gone} deleted keys still present, "
                      f"{checked_kept - kept} other keys missing")
    return r


def _views(store: Store, k: int) -> list[Store]:
    if not store.THREADSAFE:
        shared = Serialized(store)
        return [shared] * k
    return [store.thread_view() for _ in range(k)]


def _threaded_sync_fill(store: Store, d: Dataset, p: dict[str, Any],
                        threads: int) -> dict[str, Any]:
    total = p["sync_ops"]
    kb, pool, vs = d.keys, d.pool, d.value_size
    views = _views(store, threads)
    lats = [array("q") for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)

    def worker(t: int) -> None:
        put = views[t].put
        lat = lats[t]
        ns = time.perf_counter_ns
        start.wait()
        try:
            for i in range(t, total, threads):
                o = (i * STRIDE) & MASK
                s = ns()
                put(kb[i * 16: i * 16 + 16], pool[o: o + vs])
                lat.append(ns() - s)
        except BaseException as exc:  # noqa: BLE001 - reported in the result
            errors.append(exc)

    ths = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    secs, all_lat = _run_threads(ths, start, store, views, lats)
    r = _result(total, secs, total * d.record_bytes, all_lat, threads=threads,
                user_writes=total)
    if errors:
        r["error"] = f"{len(errors)} writer thread(s) failed: {errors[0]!r}"
    return r


def fillsync(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    return _threaded_sync_fill(store, d, p, 1)


def fillsync8(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    return _threaded_sync_fill(store, d, p, 8)


def readwhilewriting(store: Store, d: Dataset, p: dict[str, Any]) -> dict[str, Any]:
    """``readers`` threads read existing keys while one writer inserts new keys (one put per
    call) for ``rww_seconds``; reports the readers' rate and latency, and the writer's rate."""
    readers = p["rww_readers"]
    seconds = p["rww_seconds"]
    limit = p["reads"]
    new_keys = d.missing_keys(limit)  # keys absent from the data set: the writer adds them
    kb, pool, vs = d.keys, d.pool, d.value_size
    stop = threading.Event()
    start = threading.Barrier(readers + 2)
    views = _views(store, readers + 1)
    rlat = [array("q") for _ in range(readers)]
    wlat = array("q")
    written = [0]
    misses = [0] * readers
    errors: list[BaseException] = []

    def writer() -> None:
        put = views[-1].put
        ns = time.perf_counter_ns
        start.wait()
        deadline = ns() + int(seconds * 1e9)
        try:
            i = 0
            while i < limit:
                o = ((i + 2 * d.n) * STRIDE) & MASK
                s = ns()
                put(new_keys[i * 16: i * 16 + 16], pool[o: o + vs])
                e = ns()
                wlat.append(e - s)
                i += 1
                if e >= deadline:
                    break
            written[0] = i
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()

    def reader(t: int) -> None:
        get = views[t].get
        idx = d.stream(f"rww{t}", min(limit, 1 << 20))
        m = len(idx)
        lat = rlat[t]
        ns = time.perf_counter_ns
        start.wait()
        try:
            i = 0
            while not stop.is_set():
                j = idx[i % m]
                s = ns()
                v = get(kb[j * 16: j * 16 + 16])
                lat.append(ns() - s)
                if v is None:
                    misses[t] += 1
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    for t in range(readers):  # build the index streams before the clock starts
        d.stream(f"rww{t}", min(limit, 1 << 20))
    ths = [threading.Thread(target=reader, args=(t,)) for t in range(readers)]
    ths.append(threading.Thread(target=writer))
    secs, all_lat = _run_threads(ths, start, store, views, rlat)
    reads = len(all_lat)
    r = _result(reads, secs, reads * d.record_bytes, all_lat, readers=readers,
                writer_ops=written[0], writer_ops_per_sec=written[0] / secs if secs else 0.0,
                writer_latency_us=percentiles(wlat), user_writes=written[0])
    r["note"] = "ops = reads by the reader threads; the writer's rate is writer_ops_per_sec"
    errs = []
    if errors:
        errs.append(f"{len(errors)} thread(s) failed: {errors[0]!r}")
    if sum(misses):
        errs.append(f"{sum(misses)} reads of existing keys returned nothing")
    if errs:
        r["error"] = "; ".join(errs)
    return r


WORKLOAD_FUNCS: dict[str, Callable[[Store, Dataset, dict[str, Any]], dict[str, Any]]] = {
    "fillseq": fillseq, "fillrandom": fillrandom, "fillbatch": fillbatch,
    "overwrite": overwrite, "readrandom": readrandom, "readhot": readhot,
    "readmissing": readmissing, "seekrandom": seekrandom, "scan": scan,
    "deleterandom": deleterandom, "fillsync": fillsync, "fillsync8": fillsync8,
    "readwhilewriting": readwhilewriting,
}

#: Display order, and one line on each.
DESCRIPTIONS: dict[str, str] = {
    "fillseq": "N puts, ascending keys, one put per call, fresh store",
    "fillrandom": "N puts, random keys, one put per call, fresh store",
    "fillbatch": "N puts, random keys, batches (transactions) of 1000, fresh store",
    "overwrite": "random puts to existing keys, one per call (after fillrandom)",
    "readrandom": "random gets of existing keys (every value checked), in a new process "
                  "after close, with the store's files dropped from the page cache",
    "readhot": "random gets within 1% of the keys (after readrandom)",
    "readmissing": "gets of absent random keys",
    "seekrandom": "seek to a random existing key and read the next 10 pairs",
    "scan": "full ordered scan of every pair",
    "deleterandom": "delete random existing keys, one per call",
    "fillsync": "durable (fsynced) puts, one per call, 1 thread, fresh store",
    "fillsync8": "durable (fsynced) puts, one per call, 8 threads, fresh store",
    "readwhilewriting": "reader threads' gets while one writer thread inserts new keys",
}
ALL_WORKLOADS = list(DESCRIPTIONS)
ORDERED_ONLY = {"seekrandom", "scan"}


@dataclasses.dataclass(frozen=True)
class Group:
    """Workloads run in one subprocess, in order, on one open store."""

    name: str
    workloads: tuple[str, ...]
    mode: str = PROCESS_CRASH
    uses: str | None = None      # run in the directory left by this group (else fresh)
    keep: bool = False           # keep the directory for later groups
    drop_cache: bool = False     # drop the directory's files from the page cache first


GROUPS: tuple[Group, ...] = (
    Group("fillseq", ("fillseq",)),
    Group("fillrandom", ("fillrandom", "overwrite")),
    Group("fillbatch", ("fillbatch",), keep=True),
    Group("read", ("readrandom", "readhot", "readmissing", "seekrandom", "scan"),
          uses="fillbatch", keep=True, drop_cache=True),
    Group("mixed", ("readwhilewriting", "deleterandom"), uses="fillbatch"),
    Group("fillsync", ("fillsync",), mode=POWER_LOSS),
    Group("fillsync8", ("fillsync8",), mode=POWER_LOSS),
)

#: Workloads that need the one before them in the same group to have run.
REQUIRES = {"overwrite": "fillrandom"}


def plan(selected: list[str]) -> list[tuple[Group, tuple[str, ...]]]:
    """The groups to run for the selected workloads, each with the workloads it runs (a
    dependency such as fillbatch for the reads is added and run as set-up)."""
    want = set(selected)
    for w, dep in REQUIRES.items():
        if w in want:
            want.add(dep)
    needed_groups = {g.name for g in GROUPS if want & set(g.workloads)}
    for g in GROUPS:
        if g.name in needed_groups and g.uses:
            needed_groups.add(g.uses)
    out = []
    for g in GROUPS:
        if g.name not in needed_groups:
            continue
        ws = tuple(w for w in g.workloads if w in want)
        if not ws:  # a set-up group: run all of it
            ws = g.workloads
        out.append((g, ws))
    return out


def default_params(keys: int, quick: bool, reads: int | None = None,
                   sync_ops: int | None = None, rww_seconds: float | None = None,
                   rww_readers: int = 2) -> dict[str, Any]:
    """Operation counts for each workload, from the number of keys."""
    r = reads if reads is not None else keys
    return {
        "reads": r,
        "overwrite_ops": keys,
        "seeks": max(1, r // 10),
        "deletes": max(1, min(keys, r) // 2),
        "hot_keys": max(1, keys // 100),
        "sync_ops": sync_ops if sync_ops is not None else (200 if quick else 5000),
        "rww_seconds": rww_seconds if rww_seconds is not None else (1.0 if quick else 15.0),
        "rww_readers": rww_readers,
        "sample_every": 1 if quick else 8,
    }
