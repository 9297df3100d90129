"""Measure ``shaledb verify`` on a large database: its speed in MB/s.

Creates the database at PATH first when PATH holds none (random 16-byte keys, values of
``--value-size`` bytes, written with WriteBatch in batches of 1000, then compacted until
the background work is done), then runs the verifier on the closed database ``--repeat``
times and prints bytes, tables, blocks, entries, seconds and MB/s (10^6 bytes per second)
of each run. The data is not part of the repository: put PATH outside it.

    .venv/bin/python scripts/verify_speed.py /tmp/shaledb-1g --gib 1
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import shaledb
from shaledb.engine.verify import verify

BATCH = 1000


def build(path: str, total_bytes: int, value_size: int, compression: str, seed: int) -> None:
    rng = random.Random(seed)
    pool = rng.randbytes(1 << 20)
    n = total_bytes // (16 + value_size)
    t0 = time.perf_counter()
    with shaledb.open(path, compression=compression) as db:
        for start in range(0, n, BATCH):
            wb = shaledb.WriteBatch()
            for i in range(start, min(n, start + BATCH)):
                off = (i * 104_729) % ((1 << 20) - value_size)
                wb.put(rng.randbytes(16), pool[off:off + value_size])
            db.write(wb)
            if start % 500_000 == 0:
                print(f"  {start:,} / {n:,} keys, {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr)
        db.flush()
        # Let the background compactions settle, so the shape is what a long-lived DB has.
        while True:
            time.sleep(2)
            st = db.stats()
            if st["compactions"] == getattr(build, "_last", -1):
                break
            build._last = st["compactions"]  # type: ignore[attr-defined]
    print(f"built {n:,} keys in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--gib", type=float, default=1.0, help="user bytes to write (GiB)")
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--compression", default="lz4")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.path, "CURRENT")):
        build(args.path, int(args.gib * (1 << 30)), args.value_size, args.compression,
              args.seed)
    for run in range(args.repeat):
        report = verify(args.path)
        t = report.totals
        print(f"run {run + 1}: {t.bytes / 1e6:,.0f} MB, {t.tables} tables, {t.blocks:,} blocks, "
              f"{t.entries:,} entries, {t.seconds:.2f} s, {t.mb_per_s:.0f} MB/s, "
              f"{len(report.damage)} damage, {len(report.notices)} notices")


if __name__ == "__main__":
    main()
