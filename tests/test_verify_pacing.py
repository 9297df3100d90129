"""Pacing and stopping ``DB.verify()`` (what the server's background scrub relies on).

A rate-limited check over N bytes at R bytes/s takes at least N / R seconds and not much
more; the limit is shared by every read of the pass (tables, WAL, manifest) and follows a
changed rate while the pass runs; ``should_stop`` ends the check promptly, also in the
middle of a table or of a long wait for the rate, with a partial report, and leaves the
database as it was (the pinned version released, writes served, a later check complete).
The bucket itself is checked on a fake clock, so its bounds are exact.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import shaledb
from _helpers import files, key
from shaledb.engine.verify import (
    MAX_PACED_CHUNK,
    MIN_PACED_CHUNK,
    READ_CHUNK,
    STOP_POLL,
    ReadBudget,
    VerifyStopped,
)

# Latency and wall-clock bounds: `make test` runs these alone, after the parallel run.
pytestmark = [pytest.mark.timing, pytest.mark.timeout(120)]


def _db(path: str, n: int = 3000, size: int = 200, flush: bool = True) -> shaledb.DB:
    """An open database of ``n`` incompressible values (about n * size bytes of tables, or
    of WAL without ``flush``)."""
    db = shaledb.open(path, block_size=4096, compression="none")
    for i in range(n):
        db.put(key(i), os.urandom(size))
    if flush:
        db.flush()
    return db


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


# -- the bucket, on a fake clock ----------------------------------------------------------------

def test_budget_holds_the_rate_over_every_window() -> None:
    clock = FakeClock()
    budget = ReadBudget(100_000, clock=clock, sleep=clock.sleep)
    reads: list[tuple[float, int]] = []  # (time the read is made, bytes)
    for i in range(200):
        n = 5_000 + (i * 7919) % 20_000
        budget.charge(n)
        reads.append((clock.now, n))
        clock.now += 0.001 * (i % 3)  # some work between reads
    total = sum(n for _, n in reads)
    # Starts empty: N bytes take at least N / rate.
    assert clock.now - 100.0 >= total / 100_000
    # No window of any length holds more than rate x length + one second's burst.
    for a in range(len(reads)):
        for b in range(a, len(reads)):
            span = reads[b][0] - reads[a][0]
            assert sum(n for _, n in reads[a:b + 1]) <= 100_000 * (span + 1) + 25_000
    # It waits in slices, so a stop is seen within STOP_POLL.
    assert max(clock.sleeps) <= STOP_POLL + 1e-9
    assert budget.waited == pytest.approx(sum(clock.sleeps))


def test_budget_follows_a_changed_rate_and_unlimited() -> None:
    clock = FakeClock()
    rate = [10_000]
    budget = ReadBudget(lambda: rate[0], clock=clock, sleep=clock.sleep)
    budget.charge(10_000)
    assert clock.now - 100.0 == pytest.approx(1.0)
    rate[0] = 1_000_000  # raised while a pass runs: the next reads go faster
    start = clock.now
    budget.charge(100_000)
    assert clock.now - start == pytest.approx(0.1, abs=0.01)
    rate[0] = 0  # 0: unlimited
    start = clock.now
    budget.charge(10**9)
    assert clock.now == start
    assert ReadBudget(None).chunk() == READ_CHUNK
    assert ReadBudget(1 << 20).chunk() == (1 << 20) // 8
    assert ReadBudget(1 << 30).chunk() == MAX_PACED_CHUNK
    assert ReadBudget(1000).chunk() == MIN_PACED_CHUNK
    with pytest.raises(shaledb.InvalidArgument):
        ReadBudget(-1)


def test_budget_stops_inside_a_long_wait() -> None:
    clock = FakeClock()
    stop = [False]

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now - 100.0 > 0.3:
            stop[0] = True

    budget = ReadBudget(1_000, lambda: stop[0], clock=clock, sleep=sleep)
    from shaledb.engine.verify import _Stop
    with pytest.raises(_Stop):
        budget.charge(1_000_000)  # would wait 1000 s
    assert clock.now - 100.0 < 0.3 + 2 * STOP_POLL


# -- DB.verify on a real database ---------------------------------------------------------------

def test_rate_limited_verify_takes_bytes_over_rate(tmp_path: Path) -> None:
    with _db(str(tmp_path / "db")) as db:
        started = time.monotonic()
        fast = db.verify()
        unlimited = time.monotonic() - started
        assert fast.ok and fast.totals.tables >= 1
        n = fast.totals.bytes
        rate = int(n / 1.5)  # about 1.5 s at this rate
        started = time.monotonic()
        slow = db.verify(rate=rate)
        elapsed = time.monotonic() - started
    assert slow.ok and slow.totals.bytes == n and slow.totals.blocks == fast.totals.blocks
    assert elapsed >= 0.98 * n / rate, (elapsed, n, rate)
    assert elapsed <= n / rate + unlimited + 1.0, (elapsed, n, rate)


def test_rate_limit_covers_the_wal(tmp_path: Path) -> None:
    with _db(str(tmp_path / "db"), n=2000, flush=False) as db:
        fast = db.verify()
        assert fast.totals.wal_records >= 2000 and fast.totals.tables == 0
        n = fast.totals.bytes
        started = time.monotonic()
        db.verify(rate=n)  # about 1 s
        elapsed = time.monotonic() - started
    assert elapsed >= 0.98, elapsed


@pytest.mark.parametrize("flush", [True, False], ids=["tables", "wal"])
def test_should_stop_ends_a_paced_check_promptly_with_a_partial_report(
        tmp_path: Path, flush: bool) -> None:
    db = _db(str(tmp_path / "db"), flush=flush)
    try:
        total = db.verify().totals.bytes
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        started = time.monotonic()
        with pytest.raises(VerifyStopped) as caught:
            db.verify(rate=total // 20, should_stop=stop.is_set)  # would take ~20 s
        elapsed = time.monotonic() - started
        assert 0.45 <= elapsed < 0.5 + 0.5, elapsed
        partial = caught.value.report
        assert partial.live and 0 < partial.totals.bytes < total
        assert "stopped" in str(caught.value)
        # Nothing is left behind: the version is released, writes go on, a later check runs
        # to the end.
        assert not db._engine._pinned
        db.put(b"after", b"stop")
        report = db.verify()
        assert report.ok and report.totals.bytes >= total
    finally:
        db.close()


def test_should_stop_without_a_rate_and_before_the_start(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with _db(path, n=3000) as db:
        with pytest.raises(VerifyStopped) as caught:
            db.verify(should_stop=lambda: True)
        assert caught.value.report.totals.bytes == 0 and caught.value.report.ok
        calls = [0]

        def after_three_reads() -> bool:
            calls[0] += 1
            return calls[0] > 3

        with pytest.raises(VerifyStopped):
            db.verify(should_stop=after_three_reads)
        assert not db._engine._pinned
    # The closed-database check takes the same arguments.
    with pytest.raises(VerifyStopped):
        shaledb.verify(path, should_stop=lambda: True)
    assert shaledb.verify(path, rate=10**9, should_stop=lambda: False).ok
    assert len(files(path, ".sst")) >= 1
