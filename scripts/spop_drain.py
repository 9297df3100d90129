"""Drain a 40,000-member set with single-member SPOPs through the server's keyspace layer,
in-process, and print the cost per SPOP every 5,000 pops (docs/design.md, "Hashes and sets":
the tombstones of popped members stay in the member range until compaction).

    python scripts/spop_drain.py
"""

from __future__ import annotations

import random
import tempfile
import time

import shaledb
from shaledb.server.keyspace.keyspace import Keyspace
from shaledb.server.keyspace.values import TAG_SET


def main() -> None:
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as d, shaledb.open(d) as db:
        ks = Keyspace(db)
        for _ in range(40):
            t = ks.begin()
            e = t.get_coll(0, b"s", TAG_SET)
            t.put_members(0, b"s", e, TAG_SET,
                          [(b"element:%06d" % rng.randrange(100_000), b"") for _ in range(1000)])
            t.commit()
        n, t0 = 0, time.perf_counter()
        last = t0
        while True:
            t = ks.begin()
            e = t.get_coll(0, b"s", TAG_SET)
            if e is None or e.coll is None:
                break
            member = next(t.random_members(e.coll, 1, distinct=True))[0]
            t.remove_members(0, b"s", e, [member])
            t.commit()
            n += 1
            if n % 5000 == 0:
                now = time.perf_counter()
                print(f"{n:6d} pops: {(now - last) / 5000 * 1000:.3f} ms per SPOP")
                last = now
        print(f"{n} members drained in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
