#!/usr/bin/env python3
"""Quick single-machine measurement of ShaleDB (not a test, not a comparison with peers).

    python bench/quick.py [--keys 1000000] [--value-size 100] [--reads 200000] [--dir DIR]

Measures, on random 16-byte keys:

- fill, one ``put`` per call (``sync=False``);
- fill, batches of 1000 (``sync=False``), into a second fresh database;
- random reads after close + reopen (``--reads`` keys in shuffled order, every value checked);
- a full ordered scan;
- reopen time after SIGKILL of a child process that filled the default-size memtable
  (so the whole memtable is replayed from the WAL);
- size on disk of the batch-filled database.

Prints a table, then the same numbers as JSON. Rates include the cost of slicing each value
out of a shared random pool (a few hundred nanoseconds), not of generating it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import shaledb
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import shaledb

BATCH = 1000
VALUE_POOL = 1 << 20
STRIDE = 104_729  # a prime: consecutive keys get far-apart slices of the pool


class Records:
    """Random distinct 16-byte keys; value ``i`` is a fixed slice of a random pool."""

    def __init__(self, n: int, value_size: int, seed: int) -> None:
        rng = random.Random(seed)
        self.value_size = value_size
        self.pool = rng.randbytes(VALUE_POOL + value_size)
        raw = rng.randbytes(16 * n)
        self.keys = list(dict.fromkeys(raw[i : i + 16] for i in range(0, len(raw), 16)))
        self.rng = rng

    def value(self, i: int) -> bytes:
        off = (i * STRIDE) % VALUE_POOL
        return self.pool[off : off + self.value_size]


def fill_single(path: str, rec: Records) -> dict[str, float]:
    """One put per call, sync=False; the close (WAL sync) is timed separately."""
    keys, value = rec.keys, rec.value
    db = shaledb.open(path)
    t0 = time.perf_counter()
    for i, k in enumerate(keys):
        db.put(k, value(i))
    secs = time.perf_counter() - t0
    t1 = time.perf_counter()
    db.close()
    return {"seconds": secs, "ops_per_sec": len(keys) / secs,
            "close_seconds": time.perf_counter() - t1}


def fill_batch(path: str, rec: Records) -> dict[str, float]:
    """Batches of BATCH puts, sync=False."""
    keys, value = rec.keys, rec.value
    n = len(keys)
    db = shaledb.open(path)
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        with db.batch() as b:
            for i in range(start, min(start + BATCH, n)):
                b.put(keys[i], value(i))
    secs = time.perf_counter() - t0
    t1 = time.perf_counter()
    db.close()
    return {"seconds": secs, "ops_per_sec": n / secs, "close_seconds": time.perf_counter() - t1}


def random_reads(path: str, rec: Records, count: int) -> dict[str, float]:
    """Reopen, then read ``count`` keys in shuffled order, checking every value."""
    t0 = time.perf_counter()
    db = shaledb.open(path)
    open_secs = time.perf_counter() - t0
    try:
        order = rec.rng.sample(range(len(rec.keys)), count)
        keys, value = rec.keys, rec.value
        wrong = 0
        t0 = time.perf_counter()
        for i in order:
            if db.get(keys[i]) != value(i):
                wrong += 1
        secs = time.perf_counter() - t0
        cache = db.stats().get("block_cache", {})
    finally:
        db.close()
    if wrong:
        raise SystemExit(f"FAIL: {wrong} of {count} reads returned a wrong value")
    lookups = cache.get("hits", 0) + cache.get("misses", 0)
    return {"reads": count, "seconds": secs, "ops_per_sec": count / secs,
            "open_seconds": open_secs,
            "block_cache_hit_ratio": cache.get("hits", 0) / lookups if lookups else 0.0}


def full_scan(path: str, expected: int) -> dict[str, float]:
    """Count every entry of an ordered scan over the whole database."""
    with shaledb.open(path) as db:
        t0 = time.perf_counter()
        n = 0
        nbytes = 0
        for k, v in db.range():
            n += 1
            nbytes += len(k) + len(v)
        secs = time.perf_counter() - t0
    if n != expected:
        raise SystemExit(f"FAIL: scan returned {n} entries, expected {expected}")
    return {"entries": n, "seconds": secs, "ops_per_sec": n / secs,
            "mib_per_sec": nbytes / secs / 2**20}


def _child_fill(path: str, value_size: int) -> None:
    """(Child process.) Fill the default memtable without triggering a flush, report, wait."""
    limit = shaledb.Options().memtable_size
    rec = Records(0, value_size, 1)
    rng = random.Random(2)
    db = shaledb.open(path)
    i = 0
    while True:
        st = db.stats()
        mem, entries = st["memtable_bytes"], st["memtable_entries"]
        per_entry = mem / entries if entries else 200
        if st["flushes"] or mem + 1.1 * BATCH * per_entry >= limit:
            break
        with db.batch() as b:
            for _ in range(BATCH):
                b.put(rng.randbytes(16), rec.value(i))
                i += 1
    st = db.stats()
    print(json.dumps({"entries": st["memtable_entries"], "memtable_bytes": st["memtable_bytes"],
                      "memtable_size": limit, "flushes": st["flushes"]}), flush=True)
    time.sleep(3600)  # the parent SIGKILLs us here, with the database open


def reopen_after_sigkill(path: str, value_size: int) -> dict[str, Any]:
    """SIGKILL a child holding a full memtable, then time shaledb.open on its directory."""
    env = dict(os.environ)
    src = str(Path(shaledb.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-fill", path,
           "--value-size", str(value_size)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise SystemExit(f"FAIL: fill child exited with status {child.wait()}")
        filled = json.loads(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    t0 = time.perf_counter()
    db = shaledb.open(path)
    secs = time.perf_counter() - t0
    try:
        st = db.stats()
    finally:
        db.close()
    return {"seconds": secs, "entries_written": filled["entries"],
            "memtable_bytes_written": filled["memtable_bytes"],
            "memtable_size": filled["memtable_size"],
            "entries_recovered": st["memtable_entries"],  # replayed into the memtable
            "recovery_seconds_reported": st.get("recovery_seconds"),
            "flushes_before_kill": filled["flushes"]}


def disk_usage(path: str) -> dict[str, int]:
    """Apparent bytes (sum of file sizes) and allocated bytes (what `du` counts)."""
    apparent = allocated = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(root, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return {"files": files, "apparent_bytes": apparent, "allocated_bytes": allocated}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000, help="number of keys (default 1M)")
    ap.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    ap.add_argument("--reads", type=int, default=200_000,
                    help="random reads after reopen (default 200k, capped at --keys)")
    ap.add_argument("--dir", default=None,
                    help="parent directory for the databases (default: system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--child-fill", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_fill:
        _child_fill(args.child_fill, args.value_size)
        return
    if args.keys < 1 or args.value_size < 0:
        ap.error("--keys must be >= 1 and --value-size >= 0")
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="shaledb-quick-", dir=args.dir)

    rec = Records(args.keys, args.value_size, args.seed)
    n = len(rec.keys)
    reads = min(args.reads, n)
    raw = n * (16 + args.value_size)
    results: dict[str, Any] = {
        "shaledb_version": shaledb.__version__, "python": sys.version.split()[0],
        "keys": n, "value_size": args.value_size, "raw_bytes": raw, "dir": base,
    }
    try:
        print(f"ShaleDB {shaledb.__version__}: {n:,} keys x {args.value_size} B in {base}",
              file=sys.stderr)
        single, batch, crash = (os.path.join(base, d) for d in ("single", "batch", "crash"))
        steps = [
            ("fill_put", lambda: fill_single(single, rec)),
            ("fill_batch", lambda: fill_batch(batch, rec)),
            ("random_read", lambda: random_reads(batch, rec, reads)),
            ("scan", lambda: full_scan(batch, n)),
            ("reopen_after_sigkill", lambda: reopen_after_sigkill(crash, args.value_size)),
        ]
        for name, step in steps:
            print(f"  {name} ...", file=sys.stderr, flush=True)
            results[name] = step()
        results["disk"] = disk_usage(batch)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    d = results["disk"]
    rows = [
        ("fill, put per call", f"{results['fill_put']['ops_per_sec']:,.0f} ops/s",
         f"{results['fill_put']['seconds']:.2f} s"),
        ("fill, batches of 1000", f"{results['fill_batch']['ops_per_sec']:,.0f} ops/s",
         f"{results['fill_batch']['seconds']:.2f} s"),
        (f"random read ({reads:,}) after reopen",
         f"{results['random_read']['ops_per_sec']:,.0f} ops/s",
         f"{results['random_read']['seconds']:.2f} s"),
        ("full ordered scan", f"{results['scan']['ops_per_sec']:,.0f} entries/s",
         f"{results['scan']['mib_per_sec']:.1f} MiB/s"),
        ("reopen after SIGKILL, full memtable",
         f"{results['reopen_after_sigkill']['seconds'] * 1000:,.0f} ms",
         f"{results['reopen_after_sigkill']['entries_recovered']:,} entries replayed"),
        ("size on disk (batch-filled DB)", f"{d['allocated_bytes'] / 2**20:,.1f} MiB",
         f"{d['allocated_bytes'] / raw:.2f}x raw key+value bytes"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print()
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:>{w1}}  {c}")
    print()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
