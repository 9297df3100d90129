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


# -- which build runs (issue 14) ------------------------------------------------------------
def pytest_sessionstart(session: pytest.Session) -> None:
    """`make test` sets SHALEDB_EXPECT_BUILD=compiled, `make test-pure` =pure: a suite that
    silently ran the other build would prove nothing about the one it claims to test."""
    import os

    import shaledb.build

    expect = os.environ.get("SHALEDB_EXPECT_BUILD", "")
    info = shaledb.build.choose()
    got = "compiled" if info["compiled"] else "pure"
    if expect and expect != got:
        pytest.exit(f"SHALEDB_EXPECT_BUILD={expect} but ShaleDB runs {got}"
                    f" ({info['reason'] or 'compiled'}); run `make build`", returncode=3)


def pytest_report_header(config: pytest.Config) -> str:
    import shaledb.build

    info = shaledb.build.choose()
    if info["compiled"]:
        return f"shaledb: compiled build ({len(info['modules'])} modules by mypyc)"
    return f"shaledb: pure Python ({info['reason']})"


def compiled_build() -> bool:
    import shaledb.build

    return bool(shaledb.build.choose()["compiled"])


def _guard_monkeypatch() -> None:
    """In the compiled build, make ``monkeypatch.setattr`` refuse to replace a function, a
    class attribute or an instance attribute of compiled code: compiled callers would never
    see the replacement, and the test would pass without testing anything. (Module
    variables are fine: compiled code reads them at run time, unless they are ``Final``; a
    function meant to be replaced is a variable named in the module's ``__test_seams__``.)"""
    import types

    import shaledb.build

    compiled = set(shaledb.build.info()["modules"])
    real = pytest.MonkeyPatch.setattr

    def guarded(self: pytest.MonkeyPatch, target: object, name: object = None,
                *args: object, **kwargs: object) -> None:
        if isinstance(target, types.ModuleType):
            module = target.__name__
            attr = getattr(target, str(name), None)
            seams = getattr(target, "__test_seams__", ())
            hit = (module in compiled and name not in seams
                   and (isinstance(attr, type) or callable(attr)))
        elif isinstance(target, type):
            module = target.__module__
            hit = module in compiled
        else:
            module = type(target).__module__
            hit = module in compiled
        if hit:
            pytest.fail(f"monkeypatch.setattr({module}..., {name!r}): compiled code would not "
                        "see the replacement; mark the test pure_only (conftest.py)")
        real(self, target, name, *args, **kwargs)  # type: ignore[arg-type]

    pytest.MonkeyPatch.setattr = guarded  # type: ignore[method-assign]


if compiled_build():
    _guard_monkeypatch()


#: For a test that replaces a method or function of a compiled module at run time (pytest's
#: monkeypatch): compiled code binds calls early, and a compiled class refuses new
#: attributes, so such a test runs in the pure build (`make test-pure`, .ci/run) only.
pure_only = pytest.mark.skipif(
    compiled_build(),
    reason="patches a compiled module at run time; runs in the pure build (make test-pure)")
