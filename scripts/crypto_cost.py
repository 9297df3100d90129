"""The cost of encryption at rest, plain against encrypted, in alternating runs.

    python scripts/crypto_cost.py [--rounds 6] [--keys 300000] [--only fillseq,getnocache]
                                  [--src OTHER_TREE/src]

Each measurement runs in a fresh subprocess (same interpreter, same source tree), and the
variants alternate (plain, encrypted, encrypted, plain, ...) so that the machine's drift
hits both alike; the medians are printed, with every run, as a JSON line at the end.

Workloads (16-byte keys, 100-byte random values, default options otherwise):

- ``fillseq`` / ``fillrandom``: put ``--keys`` keys (ascending / random order), then close.
  Reported: puts per second of wall time, and main-thread CPU microseconds per put (the
  writer's own cost; flushes and compactions run on other threads and in a worker process),
  over the whole run and in the 10th-percentile batch of 1000 (steadier on a busy machine).
- ``getnocache``: a database of 100k keys (written and compacted once per variant), reopened
  with ``block_cache_size=0``; 20k random gets after a warm-up pass (the page cache is
  warm, so every get reads, checks and -- encrypted -- decrypts one whole data block).
  Reported: main-thread CPU microseconds per get (whole run; 10th-percentile batch of 1000).
- ``getcache``: the same with the default 64 MiB block cache (decrypted blocks are cached).
- ``fillseqpair`` / ``fillrandompair``: the fills into a plain and an encrypted database
  in one process, alternating batches of 1000 puts: main-thread CPU of the median batch.
- ``getpair`` / ``getpaircache``: the same gets from both databases in one process,
  alternating batches of 1000, so that both variants meet the same interference; the
  median batch of each, and their ratio (the steadiest number on a shared machine).

Keep the machine otherwise idle; the numbers are for comparing variants of one tree.
``--src`` runs the children on another source tree (e.g. an older commit, unpacked with
``git archive COMMIT src | tar -x -C DIR``) through PYTHONPATH, for before/after numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

KEY = bytes(range(32))
VALUE_SIZE = 100
GET_KEYS = 100_000
GETS = 20_000
#: Operations per timed batch: the 10th-percentile batch is the least disturbed by other
#: processes (a shared machine only ever adds time).
BATCH = 1000


def _values(n: int) -> list[bytes]:
    pool = random.Random(7).randbytes(1 << 20)
    return [pool[(i * 104_729) % ((1 << 20) - VALUE_SIZE):][:VALUE_SIZE] for i in range(n)]


def _open(path: str, encrypted: bool, **opts: object):  # type: ignore[no-untyped-def]
    import shaledb

    if encrypted:
        opts["encryption_key"] = KEY
    return shaledb.open(path, **opts)


def fill(path: str, encrypted: bool, n: int, sequential: bool) -> dict[str, float]:
    rng = random.Random(1)
    if sequential:
        step = ((1 << 128) - 1) // n
        keys = [(i * step + 0x5A5A5A5A).to_bytes(16, "big") for i in range(n)]
    else:
        keys = [rng.randbytes(16) for _ in range(n)]
    values = _values(n)
    db = _open(path, encrypted)
    put = db.put
    batches = []
    wall, cpu = time.perf_counter(), time.thread_time()
    for start in range(0, n, BATCH):
        t = time.thread_time()
        for k, v in zip(keys[start:start + BATCH], values[start:start + BATCH], strict=True):
            put(k, v)
        batches.append((time.thread_time() - t) / len(keys[start:start + BATCH]))
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    db.close()
    batches.sort()
    return {"ops_per_sec": n / wall, "cpu_us_per_op": cpu / n * 1e6,
            "cpu_us_p10_batch": batches[len(batches) // 10] * 1e6}


def fill_pair(base: str, n: int, sequential: bool) -> dict[str, float]:
    """Puts into a plain and an encrypted database in one process, alternating batches of
    1000 (both meet the same interference): main-thread CPU of the median batch of each."""
    rng = random.Random(1)
    if sequential:
        step = ((1 << 128) - 1) // n
        keys = [(i * step + 0x5A5A5A5A).to_bytes(16, "big") for i in range(n)]
    else:
        keys = [rng.randbytes(16) for _ in range(n)]
    values = _values(n)
    dbs = [_open(os.path.join(base, v), v == "encrypted") for v in ("plain", "encrypted")]
    times: list[list[float]] = [[], []]
    try:
        for start in range(0, n, BATCH):
            for i in ((0, 1) if (start // BATCH) % 2 == 0 else (1, 0)):
                put = dbs[i].put
                t = time.thread_time()
                for k, v in zip(keys[start:start + BATCH], values[start:start + BATCH],
                                strict=True):
                    put(k, v)
                times[i].append((time.thread_time() - t) / BATCH * 1e6)
    finally:
        for db in dbs:
            db.close()
    p, e = statistics.median(times[0]), statistics.median(times[1])
    return {"plain_us": p, "encrypted_us": e, "cost_pct": (e / p - 1) * 100}


def build(path: str, encrypted: bool) -> None:
    rng = random.Random(2)
    values = _values(GET_KEYS)
    with _open(path, encrypted) as db:
        for i in range(GET_KEYS):
            db.put(rng.randbytes(16), values[i])
        db.flush()
        db.compact_range()


def get(path: str, encrypted: bool, cache: bool) -> dict[str, float]:
    rng = random.Random(2)
    keys = [rng.randbytes(16) for _ in range(GET_KEYS)]
    opts = {} if cache else {"block_cache_size": 0}
    with _open(path, encrypted, **opts) as db:
        g = db.get
        pick = random.Random(3)
        sample = [keys[pick.randrange(GET_KEYS)] for _ in range(GETS)]
        for k in sample:  # warm: page cache (and block cache, when on)
            assert g(k) is not None
        batches = []
        cpu = time.thread_time()
        for start in range(0, GETS, BATCH):
            t = time.thread_time()
            for k in sample[start:start + BATCH]:
                g(k)
            batches.append((time.thread_time() - t) / BATCH)
        cpu = time.thread_time() - cpu
    batches.sort()
    return {"cpu_us_per_op": cpu / GETS * 1e6, "cpu_us_p10_batch": batches[len(batches) // 10]
            * 1e6}


def get_pair(base: str, cache: bool) -> dict[str, float]:
    """Gets from the plain and the encrypted database in one process, alternating batches of
    1000 (both see the same interference from the rest of the machine): the median batch."""
    rng = random.Random(2)
    keys = [rng.randbytes(16) for _ in range(GET_KEYS)]
    opts = {} if cache else {"block_cache_size": 0}
    pick = random.Random(3)
    sample = [keys[pick.randrange(GET_KEYS)] for _ in range(GETS)]
    dbs = [_open(os.path.join(base, f"get-{v}"), v == "encrypted", **opts)
           for v in ("plain", "encrypted")]
    try:
        for db in dbs:
            for k in sample:
                assert db.get(k) is not None
        times: list[list[float]] = [[], []]
        for rep in range(4):
            for start in range(0, GETS, BATCH):
                for i in ((0, 1) if (start // BATCH + rep) % 2 == 0 else (1, 0)):
                    g = dbs[i].get
                    t = time.thread_time()
                    for k in sample[start:start + BATCH]:
                        g(k)
                    times[i].append((time.thread_time() - t) / BATCH * 1e6)
    finally:
        for db in dbs:
            db.close()
    p, e = statistics.median(times[0]), statistics.median(times[1])
    return {"plain_us": p, "encrypted_us": e, "cost_pct": (e / p - 1) * 100}


WORKLOADS = ("fillseq", "fillrandom", "getnocache", "getcache", "fillseqpair",
             "fillrandompair", "getpair", "getpaircache")


def child(argv: list[str]) -> None:
    workload, variant, path, n = argv[0], argv[1], argv[2], int(argv[3])
    enc = variant == "encrypted"
    if workload in ("fillseq", "fillrandom"):
        result = fill(path, enc, n, workload == "fillseq")
    elif workload in ("fillseqpair", "fillrandompair"):
        result = fill_pair(path, n, workload == "fillseqpair")
    elif workload in ("getpair", "getpaircache"):
        result = get_pair(path, workload == "getpaircache")
    elif workload == "build":
        build(path, enc)
        result = {}
    else:
        result = get(path, enc, workload == "getcache")
    print(json.dumps(result))


SRC: str | None = None


def run(workload: str, variant: str, path: str, n: int) -> dict[str, float]:
    env = dict(os.environ)
    if SRC is not None:
        env["PYTHONPATH"] = SRC
    out = subprocess.run([sys.executable, __file__, "--child", workload, variant, path, str(n)],
                         check=True, capture_output=True, text=True, env=env)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--keys", type=int, default=300_000)
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--src", help="source tree (its src/) the children import")
    args = ap.parse_args()
    global SRC
    SRC = args.src
    base = tempfile.mkdtemp(prefix="crypto_cost_")
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        workloads = args.only.split(",")
        if any(w.startswith("get") for w in workloads):
            for variant in ("plain", "encrypted"):
                run("build", variant, os.path.join(base, f"get-{variant}"), 0)
        for w in workloads:
            results[w] = {"plain": [], "encrypted": []}
            for r in range(args.rounds):
                order = ("plain", "encrypted") if r % 2 == 0 else ("encrypted", "plain")
                if w.endswith(("pair", "paircache")):  # both variants in one process
                    if w.startswith("fill"):
                        path = os.path.join(base, f"{w}-{r}")
                        os.makedirs(path)
                        res = run(w, "both", path, args.keys)
                        shutil.rmtree(path)
                    else:
                        res = run(w, "both", base, 0)
                    results[w]["plain"].append(res)
                    results[w]["encrypted"].append(res)
                    break
                for variant in order:
                    if w.startswith("fill"):
                        path = os.path.join(base, f"{w}-{variant}-{r}")
                        res = run(w, variant, path, args.keys)
                        shutil.rmtree(path)
                    else:
                        res = run(w, variant, os.path.join(base, f"get-{variant}"), 0)
                    results[w][variant].append(res)
            if w.endswith(("pair", "paircache")):
                runs = results[w]["plain"]
                p = statistics.median(x["plain_us"] for x in runs)
                e = statistics.median(x["encrypted_us"] for x in runs)
                c = statistics.median(x["cost_pct"] for x in runs)
                print(f"{w:11} median batch  plain {p:10.2f}  encrypted {e:10.2f}  "
                      f"cost {c:+.1f}% (median of the runs' own ratios)", flush=True)
                continue
            for metric in results[w]["plain"][0]:
                p = statistics.median(x[metric] for x in results[w]["plain"])
                e = statistics.median(x[metric] for x in results[w]["encrypted"])
                cost = (p / e - 1) if metric == "ops_per_sec" else (e / p - 1)
                print(f"{w:11} {metric:14} plain {p:10.2f}  encrypted {e:10.2f}  "
                      f"cost {cost * 100:+.1f}%", flush=True)
        print(json.dumps(results))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
