"""Shared pytest fixtures and helpers for the ShaleDB test suite.

Several test modules (written by different people) share this file: keep it small and
additive, and do not remove helpers you did not add.
"""

from __future__ import annotations

import pytest


class FakeClock:
    """A deterministic clock for TTL tests: pass it as ``shaledb.open(..., clock=clock)``.

    Calling it returns ``now`` (float seconds since the epoch); ``advance(s)`` moves time
    forward. The default start is a round number so ``now * 1000`` stays exact.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds``; returns the new time."""
        self.now += seconds
        return self.now

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"


#: Options that make flushes and compactions happen after a few hundred KiB of writes.
SMALL_OPTS: dict[str, int] = {
    "memtable_size": 64 * 1024,
    "target_file_size": 64 * 1024,
    "max_bytes_for_level_base": 128 * 1024,
    "block_size": 1024,
    "l0_compaction_trigger": 2,
}


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fresh :class:`FakeClock`."""
    return FakeClock()


@pytest.fixture
def db_path(tmp_path):
    """A not-yet-existing database directory inside the test's tmp dir."""
    return tmp_path / "db"


@pytest.fixture
def small_opts() -> dict[str, int]:
    """A copy of :data:`SMALL_OPTS` (tests may add keys to it)."""
    return dict(SMALL_OPTS)
