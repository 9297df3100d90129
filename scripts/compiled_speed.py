"""What the compiled build buys, per operation: the same workload in a process of each build,
alternating, CPU time (so a busy shared machine skews it less than wall time).

    .venv/bin/python scripts/compiled_speed.py [--rounds 3] [--keys 200000]

Each round runs this file as a child twice, compiled and with SHALEDB_PURE_PYTHON=1: random
puts into a new database (100-byte values), then random gets, a full scan and seeks of ten
keys on a compacted copy of ``--keys`` keys. Prints each round and the medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time


def child(path: str, n: int) -> dict[str, float]:
    import shaledb

    if not os.path.exists(path):
        with shaledb.open(path) as db:
            keys = list(range(n))
            random.Random(1).shuffle(keys)
            for i in keys:
                db.put(b"key%012d" % i, b"v" * 100)
            db.compact_range()
    res: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d, shaledb.open(os.path.join(d, "fill")) as db:
        keys = list(range(100_000))
        random.Random(5).shuffle(keys)
        put = db.put
        t = time.process_time()
        for i in keys:
            put(b"key%012d" % i, b"v" * 100)
        res["put"] = len(keys) / (time.process_time() - t)
    with shaledb.open(path) as db:
        r = random.Random(3)
        rk = [b"key%012d" % r.randrange(n) for _ in range(100_000)]
        get = db.get
        t = time.process_time()
        for k in rk:
            get(k)
        res["get"] = len(rk) / (time.process_time() - t)
        t = time.process_time()
        count = sum(1 for _ in db.range())
        res["scan"] = count / (time.process_time() - t)
        t = time.process_time()
        for k in rk[:10_000]:
            list(db.range(start=k, limit=10))
        res["seek10"] = 10_000 / (time.process_time() - t)
    res["compiled"] = float(shaledb.build.info()["compiled"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.keys)))
        return
    runs: dict[str, list[dict[str, float]]] = {"compiled": [], "pure": []}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "db")
        for rnd in range(args.rounds):
            for build in ("compiled", "pure"):
                env = dict(os.environ)
                env.pop("SHALEDB_PURE_PYTHON", None)
                if build == "pure":
                    env["SHALEDB_PURE_PYTHON"] = "1"
                out = subprocess.run([sys.executable, __file__, "--child", path,
                                      "--keys", str(args.keys)], env=env, check=True,
                                     capture_output=True, text=True).stdout
                res = json.loads(out.strip().splitlines()[-1])
                if bool(res.pop("compiled")) != (build == "compiled"):
                    raise SystemExit(f"the {build} round ran the other build: run make build")
                runs[build].append(res)
                print(f"round {rnd + 1} {build:8}", "  ".join(
                    f"{k} {v:,.0f}/s" for k, v in res.items()), flush=True)
    print("medians (ops/s, CPU time) and compiled/pure:")
    for k in runs["compiled"][0]:
        c = statistics.median(r[k] for r in runs["compiled"])
        p = statistics.median(r[k] for r in runs["pure"])
        print(f"  {k:7} compiled {c:12,.0f}  pure {p:12,.0f}  {c / p:5.2f}x")


if __name__ == "__main__":
    main()
