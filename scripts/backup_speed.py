"""Backup and restore speed of a ~1 GB database, and the size of an incremental backup
after 1% of the keys changed (the closing note of issue 12; docs/operations.md).

    python scripts/backup_speed.py [--keys N] [--value-size B] [--dir /tmp/...]
                                   [--repo-key-file F]

Builds the database in a fresh temporary directory (deleted at the end): N keys of B random
(incompressible) bytes, flushed and compacted; then a full backup, 1% of the keys rewritten,
a second (incremental) backup, a restore, and a verify of the repository. Prints one JSON
document. MB/s are 10^6 bytes per second of the files copied. With --repo-key-file the
repository is encrypted with that key (AES-256-GCM chunks, HMAC names).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import shaledb
from shaledb.backup import Repository


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-size", type=int, default=10_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--repo-key-file", default=None)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="shaledb-backup-speed-", dir=args.dir)
    try:
        path = os.path.join(root, "db")
        repo = Repository(os.path.join(root, "repo"), encryption_key_file=args.repo_key_file)
        t = time.perf_counter()
        with shaledb.open(path, compression="none") as db:
            for i in range(args.keys):
                db.put(b"key%09d" % i, os.urandom(args.value_size))
            db.flush()
            db.compact_range()
            build = time.perf_counter() - t
            size = db.stats()["total_table_bytes"]
            t = time.perf_counter()
            full = db.backup(repo)
            full_s = time.perf_counter() - t
            for i in range(0, args.keys, 100):
                db.put(b"key%09d" % i, os.urandom(args.value_size))
            t = time.perf_counter()
            incr = db.backup(repo)
            incr_s = time.perf_counter() - t
        t = time.perf_counter()
        restored = shaledb.restore(repo, os.path.join(root, "restored"))
        restore_s = time.perf_counter() - t
        t = time.perf_counter()
        report = repo.verify()
        verify_s = time.perf_counter() - t
        with shaledb.open(restored.path) as db:
            assert db.stats()["last_sequence"] == incr.sequence
        print(json.dumps({
            "keys": args.keys, "value_size": args.value_size,
            "table_bytes": size, "build_seconds": round(build, 1),
            "full_backup": {"bytes": full.bytes, "seconds": round(full_s, 2),
                            "MB_per_s": round(full.bytes / full_s / 1e6, 1)},
            "incremental_after_1pct": {"bytes": incr.bytes, "new_bytes": incr.new_bytes,
                                       "seconds": round(incr_s, 2)},
            "restore": {"bytes": incr.bytes, "seconds": round(restore_s, 2),
                        "MB_per_s": round(incr.bytes / restore_s / 1e6, 1)},
            "verify": {"bytes": report.bytes, "seconds": round(verify_s, 2), "ok": report.ok,
                       "MB_per_s": round(report.bytes / verify_s / 1e6, 1)},
        }, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
