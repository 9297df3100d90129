"""I/O faults (ENOSPC, EIO, torn writes) injected with FaultInjectionFS on every step of the
write path, and simulated power loss with ``FaultInjectionFS.crash``.

After a write-path fault the database must stop taking writes (ReadOnlyError), keep serving
the acknowledged data, report ``stats()["background_error"]``, and, reopened on a healthy
file system, hold exactly the acknowledged data (plus, at most, the one write that failed),
with no corruption.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import shaledb
from _helpers import (
    SMALL,
    apply_op,
    check_gets,
    close_quietly,
    diff,
    do_op,
    key,
    make_op,
    scan,
    value,
    wait_for,
)
from shaledb.testing import FaultInjectionFS

pytestmark = pytest.mark.timeout(120)

ERRNOS = [pytest.param(errno.ENOSPC, id="ENOSPC"), pytest.param(errno.EIO, id="EIO")]


class AtomicCrashFS(FaultInjectionFS):
    """FaultInjectionFS whose crash() cannot interleave with an operation in flight.

    FaultInjectionFS checks ``crashed`` and then does the real I/O; a background thread
    between the two would write *after* the crash truncated its file, which no real power
    loss can do. Serializing the mutating operations with crash() removes that artifact.
    """

    def __init__(self) -> None:
        super().__init__()
        self._io = threading.RLock()

    def _write(self, f: Any, fd: int, data: Any) -> int:
        with self._io:
            return super()._write(f, fd, data)

    def _fsync(self, f: Any, fd: int) -> None:
        with self._io:
            super()._fsync(f, fd)

    def create(self, path: str, *, exclusive: bool = False) -> Any:
        with self._io:
            return super().create(path, exclusive=exclusive)

    def rename(self, src: str, dst: str) -> None:
        with self._io:
            super().rename(src, dst)

    def remove(self, path: str) -> None:
        with self._io:
            super().remove(path)

    def truncate(self, path: str, size: int) -> None:
        with self._io:
            super().truncate(path, size)

    def sync_dir(self, path: str) -> None:
        with self._io:
            super().sync_dir(path)

    def crash(self, rng: random.Random | None = None) -> None:
        with self._io:
            super().crash(rng)


# ---------------------------------------------------------------------------------------------
# Write-path faults


class Workload:
    """Acknowledged writes and their model."""

    def __init__(self, db: Any, seed: int = 11) -> None:
        self.db = db
        self.seed = seed
        self.n = 0
        self.model: dict[bytes, bytes] = {}

    def run(self, count: int, sync: bool = False) -> None:
        for _ in range(count):
            op = make_op(self.seed, self.n)
            do_op(self.db, op, sync=sync)
            apply_op(self.model, op)
            self.n += 1

    def model_with_next(self) -> dict[bytes, bytes]:
        """The model plus the next (failed, so maybe or maybe not applied) operation."""
        m = dict(self.model)
        apply_op(m, make_op(self.seed, self.n))
        return m


def _assert_state(actual: dict[bytes, bytes], allowed: list[dict[bytes, bytes]], what: str) -> None:
    assert any(actual == m for m in allowed), f"{what}: {diff(actual, allowed[0])}"


def _assert_read_only(db: Any, allowed: list[dict[bytes, bytes]]) -> None:
    assert wait_for(lambda: db.stats()["background_error"] is not None, timeout=10), \
        "stats()['background_error'] not set after a write-path I/O error"
    st = db.stats()
    assert isinstance(st["background_error"], str) and st["background_error"]
    assert st["read_only"] is True
    with pytest.raises(shaledb.ReadOnlyError):
        db.put(b"after-error", b"x")
    with pytest.raises(shaledb.ReadOnlyError):
        db.delete(key(0))
    with pytest.raises(shaledb.ReadOnlyError), db.batch() as b:
        b.put(b"after-error-batch", b"x")
    with pytest.raises(shaledb.ReadOnlyError):
        db.put(b"after-error-sync", b"x", sync=True)
    # Reads keep working and show the acknowledged data.
    _assert_state(scan(db), allowed, "reads of the read-only database")
    check_gets(db, allowed[0] if len(allowed) == 1 else
               {k: v for k, v in allowed[0].items() if all(m.get(k) == v for m in allowed)})
    assert db.get(b"after-error") is None


def _reopen_and_check(path: str, allowed: list[dict[bytes, bytes]], opts: dict[str, Any]) -> None:
    db = shaledb.open(path, **opts)
    try:
        assert db.stats()["background_error"] is None
        state = scan(db)
        _assert_state(state, allowed, "after reopening on a healthy file system")
        check_gets(db, state)
        # The database is writable again, and what it writes now survives another reopen.
        db.put(b"zz-after-reopen", b"ok", sync=True)
        db.flush()
        db.compact_range()
        state[b"zz-after-reopen"] = b"ok"
    finally:
        db.close()
    db = shaledb.open(path, **opts)
    try:
        final = scan(db)
        assert final == state, diff(final, state)
    finally:
        db.close()


def _base_opts(**extra: Any) -> dict[str, Any]:
    # No periodic WAL sync: a background fsync must not consume a fault meant for a foreground
    # call.
    return {**SMALL, "fsync_interval": None, **extra}


Action = Callable[[Any, Workload], None]


def _act_put(db: Any, w: Workload) -> None:
    do_op(db, make_op(w.seed, w.n), sync=False)


def _act_put_sync(db: Any, w: Workload) -> None:
    do_op(db, make_op(w.seed, w.n), sync=True)


def _act_flush(db: Any, w: Workload) -> None:
    db.flush()


def _act_compact(db: Any, w: Workload) -> None:
    db.compact_range()


def _populate_deeper_levels(path: str) -> Workload:
    """A database with tables below L0 (automatic compaction on, healthy disk)."""
    db = shaledb.open(path, **_base_opts())
    try:
        w = Workload(db)
        for _ in range(3):
            w.run(120)
            db.flush()
        assert wait_for(lambda: db.stats()["compactions"] + db.stats()["trivial_moves"] > 0
                        and db.stats()["levels"][0]["files"] < 2), db.stats()["levels"]
    finally:
        db.close()
    return w


# (id, op, path, torn, action, foreground, failed op may be applied)
SCENARIOS = [
    ("wal-append", "write", ".log", False, _act_put, True, True),
    ("wal-append-torn", "write", ".log", True, _act_put, True, True),
    ("wal-fsync", "fsync", ".log", False, _act_put_sync, True, True),
    ("wal-create-on-switch", "create", ".log", False, _act_flush, False, False),
    ("wal-rename-on-switch", "rename", ".log.new", False, _act_flush, False, False),
    ("wal-fsync-on-switch", "fsync", ".log", False, _act_flush, False, False),
    ("flush-write", "write", ".sst", False, _act_flush, False, False),
    ("flush-write-torn", "write", ".sst", True, _act_flush, False, False),
    ("flush-fsync", "fsync", ".sst", False, _act_flush, False, False),
    ("compaction-write", "write", ".sst", False, _act_compact, False, False),
    ("compaction-fsync", "fsync", ".sst", False, _act_compact, False, False),
    ("manifest-write", "write", "MANIFEST", False, _act_flush, False, False),
    ("manifest-write-torn", "write", "MANIFEST", True, _act_flush, False, False),
    ("manifest-fsync", "fsync", "MANIFEST", False, _act_flush, False, False),
    ("manifest-on-compaction", "write", "MANIFEST", False, _act_compact, False, False),
    ("dir-sync-on-flush", "sync_dir", "", False, _act_flush, False, False),
]


@pytest.mark.parametrize("err", ERRNOS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_write_path_fault(tmp_path: Path, scenario: tuple[Any, ...], err: int) -> None:
    name, op, pattern, torn, action, foreground, maybe_applied = scenario
    path = str(tmp_path / "db")
    # Compaction only when asked for (compact_range), so the fault hits the intended step.
    opts = _base_opts(l0_compaction_trigger=8, l0_slowdown_trigger=8, l0_stop_trigger=12)
    w = _populate_deeper_levels(path)
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, **opts)
    try:
        w.db = db
        # Data in L1+, in several L0 files (so compact_range has work) and in the memtable/WAL.
        for _ in range(2):
            w.run(60)
            db.flush()
        w.run(40, sync=True)
        w.run(10)  # unsynced WAL tail (the memtable switch must fsync it)
        if action is _act_compact:
            db.flush()  # the fault must hit the compaction, not the flush before it
        fault = fs.inject(op, path=pattern, errno=err, torn=torn, count=None)
        allowed = [w.model, w.model_with_next()] if maybe_applied else [w.model]
        try:
            action(db, w)
        except shaledb.StorageError as exc:
            assert exc.errno == err, f"StorageError.errno is {exc.errno}, injected {err}"
        except shaledb.ReadOnlyError:
            # A background job (flush/compaction) met the fault; the call reports read-only.
            assert not foreground, "a foreground write must raise StorageError itself"
        else:
            assert not foreground, f"{name}: the failing write call did not raise"
        assert fault.hits > fault.skip, f"{name}: the fault never fired (op not exercised)"
        _assert_read_only(db, allowed)
        fs.clear()
        # Still read-only after the disk "recovered": only a reopen retries.
        with pytest.raises(shaledb.ReadOnlyError):
            db.put(b"after-clear", b"x")
    finally:
        close_quietly(db)
    _reopen_and_check(path, allowed, _base_opts())


@pytest.mark.parametrize("err", ERRNOS)
def test_periodic_wal_sync_fault_sets_read_only(tmp_path: Path, err: int) -> None:
    """The background WAL fsync (fsync_interval) fails: after a failed fsync the log's state
    is unknown, so the database must refuse writes."""
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, **_base_opts(fsync_interval=0.05))
    w = Workload(db, seed=9)
    try:
        w.run(30)
        fault = fs.inject("fsync", path=".log", errno=err, count=None)
        w.run(5)
        assert wait_for(lambda: fault.hits > 0, timeout=10), "periodic sync never ran"
        _assert_read_only(db, [w.model])
    finally:
        close_quietly(db)
    _reopen_and_check(path, [w.model], _base_opts())


def test_mkdir_fault_on_create(tmp_path: Path) -> None:
    fs = FaultInjectionFS()
    fs.inject("mkdir", errno=errno.EACCES, count=None)
    with pytest.raises(shaledb.StorageError) as info:
        shaledb.open(str(tmp_path / "new" / "db"), fs=fs)
    assert info.value.errno == errno.EACCES
    with shaledb.open(str(tmp_path / "new" / "db")) as db:
        db.put(b"k", b"v")


@pytest.mark.parametrize("err", ERRNOS)
def test_background_flush_fault_sets_read_only(tmp_path: Path, err: int) -> None:
    """A flush triggered by a full memtable (not by db.flush) fails: writes become
    read-only shortly after, reads keep working, reopen has every acknowledged write."""
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, **_base_opts())
    w = Workload(db, seed=5)
    try:
        w.run(50)
        fs.inject("write", path=".sst", errno=err, count=None)
        got_error = None
        for _ in range(5000):
            try:
                op = make_op(w.seed, w.n)
                do_op(db, op, sync=False)
            except shaledb.ReadOnlyError as exc:
                got_error = exc
                break
            apply_op(w.model, op)
            w.n += 1
        assert got_error is not None, "writes never became read-only after a failed flush"
        _assert_read_only(db, [w.model])
    finally:
        close_quietly(db)
    _reopen_and_check(path, [w.model], _base_opts())


@pytest.mark.parametrize("err", ERRNOS)
def test_current_rename_fault_at_open(tmp_path: Path, err: int) -> None:
    """Every open writes a new manifest and renames CURRENT.tmp over CURRENT: a failure there
    is a typed error, and the database is intact afterwards."""
    path = str(tmp_path / "db")
    db = shaledb.open(path, **_base_opts())
    w = Workload(db)
    w.run(150)
    db.flush()
    w.run(30)
    db.close()
    for op, pattern in (("rename", "CURRENT"), ("write", "CURRENT"), ("fsync", "CURRENT"),
                        ("write", "MANIFEST"), ("fsync", "MANIFEST"), ("create", ".log"),
                        ("sync_dir", "")):
        fs = FaultInjectionFS()
        fault = fs.inject(op, path=pattern, errno=err, count=None)
        with pytest.raises(shaledb.ShaleError) as info:
            shaledb.open(path, fs=fs, **_base_opts())
        assert fault.hits > 0, (op, pattern)
        assert isinstance(info.value, shaledb.StorageError), (op, pattern, info.value)
        assert info.value.errno == err
        # The lock was released and nothing was damaged.
        db = shaledb.open(path, **_base_opts())
        try:
            state = scan(db)
            assert state == w.model, f"after failed open ({op} {pattern}): {diff(state, w.model)}"
        finally:
            db.close()


def test_current_rename_fault_then_power_loss(tmp_path: Path) -> None:
    """A failed CURRENT switch at open followed by power loss still leaves a good database."""
    path = str(tmp_path / "db")
    db = shaledb.open(path, **_base_opts())
    w = Workload(db)
    w.run(200, sync=True)
    db.close()
    fs = AtomicCrashFS()
    fs.inject("rename", path="CURRENT", count=None)
    with pytest.raises(shaledb.StorageError):
        shaledb.open(path, fs=fs, **_base_opts())
    fs.crash(random.Random(3))
    db = shaledb.open(path, **_base_opts())
    try:
        assert scan(db) == w.model
    finally:
        db.close()


@pytest.mark.parametrize("target", ["MANIFEST", "CURRENT", ".log", ".sst", "OPTIONS"])
def test_read_fault_during_open_is_typed(tmp_path: Path, target: str) -> None:
    """EIO while reading MANIFEST / CURRENT / WAL / tables during open (or, for tables, the
    first read): a typed ShaleError, never a bare exception; a later healthy open sees
    everything."""
    path = str(tmp_path / "db")
    db = shaledb.open(path, **_base_opts())
    w = Workload(db)
    w.run(200)
    db.flush()
    w.run(30)
    db.close()
    fs = FaultInjectionFS()
    fault = fs.inject("read", path=target, errno=errno.EIO, count=None)
    err: BaseException | None = None
    try:
        opened = shaledb.open(path, fs=fs, **_base_opts())
    except shaledb.ShaleError as exc:
        err = exc
    else:
        try:
            state = scan(opened)
            assert state == w.model or fault.hits > 0, diff(state, w.model)
            check_gets(opened, w.model)
        except shaledb.ShaleError as exc:
            err = exc
        finally:
            close_quietly(opened)
    if target == "OPTIONS" and err is None:
        pass  # OPTIONS is advisory: ignoring an unreadable one is acceptable
    else:
        assert fault.hits > 0, f"{target} was never read"
        assert err is not None, f"EIO reading {target} went unnoticed"
        assert isinstance(err, shaledb.StorageError), repr(err)
        assert err.errno == errno.EIO
    db = shaledb.open(path, **_base_opts())
    try:
        assert scan(db) == w.model
    finally:
        db.close()


def test_read_fault_after_open_is_typed(tmp_path: Path) -> None:
    """EIO reading a table during get/range: StorageError; the database keeps working."""
    path = str(tmp_path / "db")
    db = shaledb.open(path, block_cache_size=0, **_base_opts())
    w = Workload(db)
    w.run(200)
    db.flush()
    db.close()
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, block_cache_size=0, **_base_opts())
    try:
        fs.inject("read", path=".sst", errno=errno.EIO, count=None)
        with pytest.raises(shaledb.StorageError):
            scan(db)
        with pytest.raises(shaledb.StorageError):
            check_gets(db, w.model)
        fs.clear()
        assert scan(db) == w.model
        db.put(b"still", b"writable")
        assert db.get(b"still") == b"writable"
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------
# Power loss


def _power_loss_run(path: str, seed: int, n_ops: int, sync_prob: float,
                    rng: random.Random | None, **extra: Any) -> tuple[int, int]:
    """Write ``n_ops`` operations, then crash. Returns (durable prefix, issued ops)."""
    fs = AtomicCrashFS()
    db = shaledb.open(path, fs=fs, **_base_opts(**extra))
    durable = 0
    choose = random.Random(seed)
    try:
        for i in range(n_ops):
            sync = choose.random() < sync_prob
            do_op(db, make_op(seed, i), sync=sync)
            if sync:
                durable = i + 1
    finally:
        fs.crash(rng)
        close_quietly(db)
    return durable, n_ops


def _matching_prefixes(state: dict[bytes, bytes], seed: int, n_ops: int) -> list[int]:
    model: dict[bytes, bytes] = {}
    out = [0] if state == model else []
    for i in range(n_ops):
        apply_op(model, make_op(seed, i))
        if state == model:
            out.append(i + 1)
    return out


def test_power_loss_keeps_every_synced_write(tmp_path: Path) -> None:
    """sync=True writes (with flushes and compactions running) all survive a power loss."""
    path = str(tmp_path / "db")
    durable, n = _power_loss_run(path, seed=21, n_ops=600, sync_prob=1.0, rng=None)
    assert durable == n
    db = shaledb.open(path, **_base_opts())
    try:
        st = db.stats()
        state = scan(db)
        expected: dict[bytes, bytes] = {}
        for i in range(n):
            apply_op(expected, make_op(21, i))
        assert state == expected, diff(state, expected)
        check_gets(db, expected)
        assert any(x["files"] for x in st["levels"]), "no flush happened: test too small"
    finally:
        db.close()


@pytest.mark.parametrize("seed", range(8))
def test_power_loss_with_torn_tails_is_a_prefix(tmp_path: Path, seed: int) -> None:
    """Mixed sync/async writes, power loss keeping a random part of every unsynced tail:
    the database opens (strict mode: a torn tail is normal after a crash), holds the state
    after some prefix of the writes, and that prefix covers every synced write."""
    path = str(tmp_path / "db")
    durable, n = _power_loss_run(path, seed=100 + seed, n_ops=500, sync_prob=0.15,
                                 rng=random.Random(seed))
    db = shaledb.open(path, **_base_opts())
    try:
        state = scan(db)
        prefixes = _matching_prefixes(state, 100 + seed, n)
        expected: dict[bytes, bytes] = {}
        for i in range(durable):
            apply_op(expected, make_op(100 + seed, i))
        assert prefixes, ("after power loss the state is not the result of any prefix of the "
                          f"writes; vs the synced prefix ({durable}): {diff(state, expected)}")
        assert max(prefixes) >= durable, (
            f"synced writes lost: state matches prefixes {prefixes[:5]}..{prefixes[-5:]}, "
            f"but {durable} ops were synced: {diff(state, expected)}")
        check_gets(db, state)
        # The recovered database takes writes, and a second crash-free reopen agrees.
        db.put(b"zz-after", b"1", sync=True)
        state[b"zz-after"] = b"1"
    finally:
        db.close()
    db = shaledb.open(path, **_base_opts())
    try:
        assert scan(db) == state
    finally:
        db.close()


@pytest.mark.parametrize("seed", range(4))
def test_repeated_power_loss(tmp_path: Path, seed: int) -> None:
    """Several crash/reopen cycles on one directory, each continuing from the recovered state
    (crashes also hit recovery's own writes: new manifest, truncated WAL)."""
    path = str(tmp_path / "db")
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    for cycle in range(4):
        fs = AtomicCrashFS()
        db = shaledb.open(path, fs=fs, **_base_opts())
        pending: list[tuple[bytes, bytes]] = []  # unsynced writes since the last synced one
        try:
            assert scan(db) == model, f"cycle {cycle}: {diff(scan(db), model)}"
            for i in range(rng.randint(50, 300)):
                k, v = key(rng.randrange(400)), value(cycle * 1000 + i)
                sync = rng.random() < 0.2
                db.put(k, v, sync=sync)
                pending.append((k, v))
                if sync:
                    for kk, vv in pending:
                        model[kk] = vv
                    pending = []
        finally:
            fs.crash(rng)
            close_quietly(db)
        db = shaledb.open(path, **_base_opts())
        try:
            state = scan(db)
            # Some prefix of the pending (unsynced) writes may have survived.
            cand = dict(model)
            ok = state == cand
            for kk, vv in pending:
                cand[kk] = vv
                ok = ok or state == cand
            assert ok, f"cycle {cycle}: not a prefix: {diff(state, model)}"
            model = state
        finally:
            db.close()


def test_power_loss_right_after_open_of_crashed_db(tmp_path: Path) -> None:
    """Crash twice in a row with no writes in between (recovery's own files torn)."""
    path = str(tmp_path / "db")
    durable, n = _power_loss_run(path, seed=7, n_ops=300, sync_prob=0.3,
                                 rng=random.Random(1))
    fs = AtomicCrashFS()
    db = shaledb.open(path, fs=fs, **_base_opts())
    first = scan(db)
    fs.crash(random.Random(2))
    close_quietly(db)
    db = shaledb.open(path, **_base_opts())
    try:
        second = scan(db)
        assert second == first, diff(second, first)
        prefixes = _matching_prefixes(second, 7, n)
        assert prefixes and max(prefixes) >= durable
    finally:
        db.close()


def _process_crash(db: Any, fs: FaultInjectionFS) -> None:
    """Drop a database object the way a killed process would: nothing more reaches the disk
    (close cannot fsync the WAL), but what was written stays in the "OS" (the same fs object,
    which keeps tracking unsynced bytes across the simulated process restart)."""
    fs.inject("fsync", count=None)
    close_quietly(db)
    fs.clear()


@pytest.mark.parametrize("fsync_interval", [None, 0.05])
def test_power_loss_after_process_crash_and_recovery(tmp_path: Path,
                                                      fsync_interval: float | None) -> None:
    """Process crash with unsynced (acknowledged) writes, restart, recovery replays them and
    serves them, then a sync=True write, then power loss. The synced write is ordered after
    the recovered ones, so they must survive too (the state must be a prefix of history)."""
    path = str(tmp_path / "db")
    fs = AtomicCrashFS()
    db = shaledb.open(path, fs=fs, **_base_opts())
    w = Workload(db, seed=17)
    w.run(150)  # more than a memtable: partly in a table, the rest only in the WAL
    _process_crash(db, fs)
    db = shaledb.open(path, fs=fs, **_base_opts(fsync_interval=fsync_interval))
    w.db = db
    try:
        assert scan(db) == w.model
        if fsync_interval:
            wait_for(lambda: False, timeout=4 * fsync_interval)  # the periodic syncer runs
        w.run(5, sync=True)
    finally:
        fs.crash()
        close_quietly(db)
    db = shaledb.open(path, **_base_opts())
    try:
        state = scan(db)
        assert state == w.model, (
            f"a synced write survived power loss but the recovered writes before it did not: "
            f"{diff(state, w.model)}")
    finally:
        db.close()


def test_enospc_then_space_freed_then_reopen(tmp_path: Path) -> None:
    """The disk fills during a workload (every write fails from some point on); after space is
    freed, a reopen recovers all acknowledged writes and takes new ones."""
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, **_base_opts())
    w = Workload(db, seed=33)
    maybe = False
    try:
        w.run(100)
        fs.inject("write", path="", errno=errno.ENOSPC, skip=25, count=None)
        for _ in range(10_000):
            op = make_op(w.seed, w.n)
            try:
                do_op(db, op, sync=False)
            except shaledb.StorageError as exc:
                assert exc.errno == errno.ENOSPC
                maybe = True  # the failing write may or may not have reached the WAL
                break
            except shaledb.ReadOnlyError:
                break  # a background flush met the full disk first
            apply_op(w.model, op)
            w.n += 1
        else:
            pytest.fail("writes kept succeeding on a full disk")
        allowed = [w.model, w.model_with_next()] if maybe else [w.model]
        _assert_read_only(db, allowed)
    finally:
        close_quietly(db)
    _reopen_and_check(path, allowed, _base_opts())


def test_fault_fs_sanity(tmp_path: Path) -> None:
    """Guards the test tooling: AtomicCrashFS drops unsynced data like FaultInjectionFS."""
    fs = AtomicCrashFS()
    p = str(tmp_path / "f")
    f = fs.create(p)
    f.append(b"abc")
    f.sync()
    fs.sync_dir(str(tmp_path))
    f.append(b"def")
    fs.crash()
    f.close()
    with open(p, "rb") as fh:
        assert fh.read() == b"abc"
    assert os.path.exists(p)


# ---------------------------------------------------------------------------------------------
# Concurrent writers (group commit) under faults and power loss


def _concurrent_writers(db: Any, n_threads: int, per_thread: int, sync_every: int,
                        stop: threading.Event) -> tuple[list[list[int]], list[int | None],
                                                        list[BaseException]]:
    """Each thread puts its own keys in order; returns acked indexes, the index of the write
    that failed (if any) and unexpected errors."""
    acked: list[list[int]] = [[] for _ in range(n_threads)]
    failed: list[int | None] = [None] * n_threads
    unexpected: list[BaseException] = []

    def run(t: int) -> None:
        for i in range(per_thread):
            if stop.is_set():
                return
            try:
                db.put(b"t%d-%06d" % (t, i), value(t * 1_000_000 + i),
                       sync=sync_every > 0 and i % sync_every == 0)
            except (shaledb.StorageError, shaledb.ReadOnlyError):
                failed[t] = i
                return
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                unexpected.append(exc)
                return
            acked[t].append(i)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads), "writers hung"
    return acked, failed, unexpected


def _check_concurrent_state(state: dict[bytes, bytes], acked: list[list[int]],
                            failed: list[int | None], sync_only: bool = False) -> None:
    for t, idx in enumerate(acked):
        present = sorted(int(k.split(b"-")[1]) for k in state if k.startswith(b"t%d-" % t))
        for i in present:
            assert state[b"t%d-%06d" % (t, i)] == value(t * 1_000_000 + i)
        allowed_extra = {failed[t]} if failed[t] is not None else set()
        assert set(idx) <= set(present), (
            f"thread {t}: acknowledged writes lost: {sorted(set(idx) - set(present))[:10]}")
        assert set(present) <= set(idx) | allowed_extra, (
            f"thread {t}: writes never issued are present: "
            f"{sorted(set(present) - set(idx) - allowed_extra)[:10]}")


@pytest.mark.parametrize("op", ["write", "fsync"])
def test_wal_fault_with_concurrent_writers(tmp_path: Path, op: str) -> None:
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, **_base_opts())
    stop = threading.Event()
    fs.inject(op, path=".log", errno=errno.EIO, skip=300, count=None)
    try:
        acked, failed, unexpected = _concurrent_writers(db, 6, 5000, 3, stop)
        assert not unexpected, unexpected
        assert all(f is not None for f in failed), "some writer never saw the failure"
        assert db.stats()["background_error"] is not None
        _check_concurrent_state(scan(db), acked, [None] * len(acked))
    finally:
        close_quietly(db)
    db = shaledb.open(path, **_base_opts())
    try:
        _check_concurrent_state(scan(db), acked, failed)
    finally:
        db.close()


@pytest.mark.parametrize("seed", range(4))
def test_power_loss_with_concurrent_sync_writers(tmp_path: Path, seed: int) -> None:
    """Threads doing sync=True puts (grouped commits) while flushes and compactions run;
    power fails at a random moment: every acknowledged write survives."""
    path = str(tmp_path / "db")
    fs = AtomicCrashFS()
    db = shaledb.open(path, fs=fs, **_base_opts())
    stop = threading.Event()
    rng = random.Random(seed)

    def crasher() -> None:
        stop.wait(rng.uniform(0.2, 1.0))
        fs.crash(random.Random(seed))
        stop.set()

    th = threading.Thread(target=crasher)
    th.start()
    try:
        acked, failed, unexpected = _concurrent_writers(db, 4, 1_000_000, 1, stop)
        th.join()
        assert not unexpected, unexpected
    finally:
        stop.set()
        th.join()
        close_quietly(db)
    assert sum(map(len, acked)) > 10, "too few writes before the crash"
    db = shaledb.open(path, **_base_opts())
    try:
        _check_concurrent_state(scan(db), acked, failed)
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------
# The compaction worker process under fault injection (compaction_process_threshold=0: every
# compaction takes the worker path, the default for compactions of 4 MiB and more)


def _worker_opts(**extra: Any) -> dict[str, Any]:
    return _base_opts(compaction_process_threshold=0, l0_compaction_trigger=8,
                      l0_slowdown_trigger=8, l0_stop_trigger=12, **extra)


def _worker_db(path: str, fs: FaultInjectionFS) -> tuple[Any, Workload]:
    db = shaledb.open(path, fs=fs, **_worker_opts())
    w = Workload(db, seed=41)
    for _ in range(3):
        w.run(80)
        db.flush()
    w.run(30, sync=True)
    db.flush()  # compact_range's own flush has nothing to do: faults hit the compaction
    return db, w


def test_compaction_worker_runs_under_fault_injection(tmp_path: Path) -> None:
    """With a fault-injecting file system the worker path runs (it used to be disabled), and
    the worker's operations are counted and modelled by the parent's file system."""
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db, w = _worker_db(path, fs)
    try:
        before = fs.mutations
        db.compact_range()
        st = db.stats()
        assert st["compactions_in_worker"] > 0, "the worker never ran under FaultInjectionFS"
        assert fs.worker_ops and min(fs.worker_ops) > before
        assert scan(db) == w.model
    finally:
        db.close()
    db = shaledb.open(path, **_base_opts())
    try:
        assert scan(db) == w.model
    finally:
        db.close()


@pytest.mark.parametrize("err", ERRNOS)
@pytest.mark.parametrize("op", ["write", "fsync", "create"])
def test_compaction_worker_fault_sets_read_only(tmp_path: Path, op: str, err: int) -> None:
    """ENOSPC/EIO on the worker's table writes: the fault fires in the worker process, the
    compaction fails with the typed error, the database becomes read-only (ReadOnlyError on
    later writes), and a reopen on a healthy disk loses nothing acknowledged."""
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db, w = _worker_db(path, fs)
    try:
        fault = fs.inject(op, path=".sst", errno=err, count=None)
        with pytest.raises(shaledb.StorageError) as info:
            db.compact_range()
        assert info.value.errno == err, info.value
        assert fault.hits > 0, "the fault never fired"
        assert fs.worker_ops, "the compaction did not run in the worker"
        _assert_read_only(db, [w.model])
    finally:
        close_quietly(db)
    _reopen_and_check(path, [w.model], _base_opts())


def test_power_loss_inside_the_compaction_worker(tmp_path: Path) -> None:
    """The power fails at an operation of the worker (crash_at): the worker writes nothing
    more, the parent simulates the loss with what the worker had written, and the database
    reopens with every synced write."""
    path = str(tmp_path / "clean")
    fs = FaultInjectionFS()
    db, w = _worker_db(path, fs)
    start = fs.mutations
    db.compact_range()
    db.close()
    inside = [n for n in fs.worker_ops if n > start]
    assert len(inside) >= 3, "the worker did too little to crash inside it"
    for i, k in enumerate(sorted({inside[0], inside[len(inside) // 2], inside[-1]})):
        path = str(tmp_path / f"k{k}")
        fs = FaultInjectionFS(crash_at=k, crash_rng=random.Random(i) if i else None)
        db, w = _worker_db(path, fs)
        with pytest.raises((shaledb.StorageError, shaledb.ReadOnlyError)):
            db.compact_range()
        assert fs.crashed and fs.crash_point is not None and fs.crash_point[0] == k
        close_quietly(db)
        db = shaledb.open(path, **_base_opts())
        try:
            assert scan(db) == w.model, diff(scan(db), w.model)  # every write was synced
        finally:
            db.close()


def _dead(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except OSError:
        return True


def test_crash_kills_a_running_compaction_worker(tmp_path: Path) -> None:
    """crash() while a worker job runs (slowed down by the write rate limit): the worker is
    SIGKILLed first, so no file changes after the power loss."""
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, **_worker_opts(compaction_write_rate=64 * 1024))
    rng = random.Random(43)
    model: dict[bytes, bytes] = {}
    for t in range(3):  # 300 KiB that do not compress: a job of seconds at 64 KiB/s
        for i in range(100):
            k, v = key(i * 3 + t), rng.randbytes(1000)
            db.put(k, v, sync=i == 99)
            model[k] = v
        db.flush()
    errors: list[BaseException] = []

    def compact() -> None:
        try:
            db.compact_range()
        except shaledb.ShaleError as exc:
            errors.append(exc)

    th = threading.Thread(target=compact)
    th.start()
    try:
        def worker_writing() -> bool:
            # The worker's journal (see faultfs) records each table write before it happens.
            for j in list(fs._journals):
                try:
                    with open(j, "rb") as fh:
                        if b'["write"' in fh.read():
                            return True
                except OSError:
                    pass
            return False

        assert wait_for(worker_writing, timeout=20), "the worker never started writing"
        proc = db._engine._worker._proc
        assert proc is not None
        fs.crash()
        assert fs.worker_ops, "the crash did not account for the worker's operations"
        assert _dead(proc.pid), "the worker was still running after the power loss"

        def listing() -> dict[str, int]:
            return {n: os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)}

        after = listing()
        time.sleep(0.5)
        assert listing() == after, "a file changed after the power loss"
    finally:
        th.join(30)
        close_quietly(db)
    assert not th.is_alive()
    assert errors, "compact_range did not fail after the power loss"
    db = shaledb.open(path, **_base_opts())
    try:
        assert scan(db) == model
    finally:
        db.close()
