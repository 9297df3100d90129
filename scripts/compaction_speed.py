"""Measure the compaction merge loop: entries per second of ``run_merge``.

Builds ``--tables`` overlapping tables of ``--entries`` random 16-byte keys each (values of
``--value-size`` bytes, a tenth of the keys overwritten across tables and a few deletions,
so the dropping rules do work) in a scratch directory, then merges them ``--repeat`` times
into new tables the way a compaction does (an L0 compaction: every table its own source; or
``--run`` to pass them as one sorted run of disjoint tables, as an Ln compaction does), in
this process, without the worker process, and prints entries/s (input entries merged per
second of CPU time of the merge) for each repeat and their median.

    .venv/bin/python scripts/compaction_speed.py --tables 4 --entries 100000
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

from shaledb.engine.compaction import MergeJob, merge_writer, run_merge
from shaledb.engine.dbformat import DELETE, PUT
from shaledb.engine.filenames import table_name
from shaledb.engine.sstable import TableReader
from shaledb.engine.sstable.builder import TableBuilder
from shaledb.engine.vfs import default_fs


def build(dirpath: str, tables: int, entries: int, value_size: int, disjoint: bool,
          seed: int) -> tuple[list[int], int]:
    rng = random.Random(seed)
    fs = default_fs()
    pool = rng.randbytes((1 << 20) + value_size)
    shared = [rng.randbytes(16) for _ in range(entries // 10)]
    seq = 1
    numbers = []
    total = 0
    for t in range(tables):
        if disjoint:
            keys = sorted({bytes([t]) + rng.randbytes(15) for _ in range(entries)})
        else:
            keys = sorted({rng.randbytes(16) for _ in range(entries - len(shared))}
                          | set(shared))
        number = t + 1
        b = TableBuilder(fs, table_name(dirpath, number), number, block_size=4096,
                         compression="lz4")
        for k in keys:
            kind = DELETE if rng.random() < 0.02 else PUT
            off = rng.randrange(1 << 20)
            b.add(k, seq, kind, 0, b"" if kind == DELETE else pool[off:off + value_size])
            seq += 1
        b.finish()
        numbers.append(number)
        total += len(keys)
    return numbers, total


def merge_once(dirpath: str, numbers: list[int], run: bool, out_base: int) -> float:
    fs = default_fs()
    job = MergeJob(dirpath=dirpath, l0_inputs=() if run else tuple(numbers),
                   level_inputs=tuple(numbers) if run else (), below=(),
                   smallest_snapshot=1 << 62, now_ms=int(time.time() * 1000),
                   drop_tombstones=True, block_size=4096, compression="lz4",
                   target_file_size=64 << 20)
    counter = iter(range(out_base, out_base + 1000))
    writer = merge_writer(job, fs, lambda: next(counter))
    readers: dict[int, TableReader] = {}

    def open_table(n: int) -> TableReader:
        if n not in readers:
            readers[n] = TableReader(fs, table_name(dirpath, n), n, None)
        return readers[n]

    t0 = time.process_time()
    run_merge(job, open_table, writer, lambda: False)
    secs = time.process_time() - t0
    for n in writer.created:
        os.remove(table_name(dirpath, n))
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", type=int, default=4)
    ap.add_argument("--entries", type=int, default=100_000, help="entries per table")
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--run", action="store_true",
                    help="disjoint tables merged as one sorted run (an Ln compaction)")
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    dirpath = tempfile.mkdtemp(prefix="shaledb-compaction-speed-")
    try:
        numbers, total = build(dirpath, args.tables, args.entries, args.value_size, args.run,
                               args.seed)
        rates = []
        for r in range(args.repeat):
            secs = merge_once(dirpath, numbers, args.run, 1000 * (r + 1))
            rates.append(total / secs)
            print(f"repeat {r + 1}: {total:,} entries in {secs:.2f} s CPU: "
                  f"{total / secs:,.0f} entries/s", file=sys.stderr)
        print(f"median: {statistics.median(rates):,.0f} entries/s "
              f"({args.tables} tables x {args.entries:,} entries, "
              f"{'one sorted run' if args.run else 'overlapping L0 tables'})")
    finally:
        shutil.rmtree(dirpath, ignore_errors=True)


if __name__ == "__main__":
    main()
