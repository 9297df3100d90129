"""The WAL segment a memtable switch replaces is sealed off the writer's thread (database
format 4): the flush thread seals it, and nothing in the new segment is fsynced before it is.

Under the server's hostile soak the seal's fsync, on the writer's thread (the server's event
loop), held the loop up to 941 ms after the early write-back. These tests hold that fsync
(or the flush thread) back and check that plain writes go on, that a durable write still
waits for the old segment (a synced write never sits on an unsynced one), and that a power
loss while the old segment is unsealed opens in strict mode with a prefix that holds every
acknowledged write; verify agrees with the open.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

import shaledb
from _helpers import SMALL, close_quietly, key, scan, value
from _helpers import in_thread as _in_thread
from _helpers import wal_logs as _logs
from shaledb.engine.db import Engine
from shaledb.engine.vfs import MappedFile, PosixFileSystem, WritableFile
from shaledb.testing import FaultInjectionFS


class SlowSealFS(PosixFileSystem):
    """fsyncs of the WAL segment named ``hold`` wait until ``release`` is set; with
    ``hold_all``, every fsync (files and directories) does, in any thread but ``free``."""

    def __init__(self) -> None:
        self.hold: str | None = None
        self.hold_all = False
        self.free: int | None = None
        self.release = threading.Event()
        self.waiting = threading.Event()

    def _held(self, name: str) -> bool:
        if self.release.is_set() or threading.get_ident() == self.free:
            return False
        return self.hold_all or name == self.hold

    def _fsync(self, f: WritableFile | MappedFile, fd: int) -> None:
        if self._held(os.path.basename(f.path)):
            self.waiting.set()
            self.release.wait(30)
        super()._fsync(f, fd)

    def sync_dir(self, path: str) -> None:
        if self._held(""):
            self.waiting.set()
            self.release.wait(30)
        super().sync_dir(path)


def _fill_across_a_switch(db: Any, path: Path, stalled: str) -> int:
    """Plain writes (in a thread, given 10 s) until a memtable switch starts a new WAL
    segment, then 20 more into it; returns how many."""
    def fill() -> int:
        first = _logs(path)
        n = 0
        while _logs(path) == first:
            db.put(key(n), value(n, size=1000))
            n += 1
        for _ in range(20):
            db.put(key(n), value(n, size=1000))
            n += 1
        return n

    t, out = _in_thread(fill)
    t.join(10)
    assert not t.is_alive(), stalled
    assert out and isinstance(out[0], int), out
    return out[0]


def test_a_slow_seal_of_the_old_segment_does_not_hold_up_writes(tmp_path: Path) -> None:
    """Fails before format 4: the switch sealed the old segment on the writer's thread, so
    the write that switched waited for the held fsync."""
    path = tmp_path / "db"
    fs = SlowSealFS()
    db = shaledb.open(path, fs=fs, fsync_interval=None, **SMALL)
    try:
        (first,) = _logs(path)
        fs.hold = first
        n = _fill_across_a_switch(db, path, "writes stalled behind the old segment's seal")
        assert fs.waiting.wait(5), "nobody sealed the old segment"

        # A durable write must not be acknowledged while the old segment is unsynced.
        t2, out2 = _in_thread(lambda: db.put(b"durable", b"1", sync=True))
        t2.join(0.5)
        assert t2.is_alive() and not out2, "a sync write returned before the old segment's seal"
        fs.release.set()
        t2.join(10)
        assert out2 == [None]
        assert db.get(b"durable") == b"1"
    finally:
        fs.release.set()
        db.close()
    with shaledb.open(path, **SMALL) as db:
        assert len(scan(db)) == n + 1


def test_a_memtable_switch_does_no_fsync_on_the_writers_thread(tmp_path: Path) -> None:
    """Every fsync held (a disk so busy that each takes seconds): plain writes across a
    memtable switch still complete, because the switch only renames a segment prepared
    ahead. Failed while the switch created the new segment itself: its header fsync and the
    directory fsync held the server's event loop up to 1,197 ms in the hostile soak."""
    path = tmp_path / "db"
    fs = SlowSealFS()
    db = shaledb.open(path, fs=fs, fsync_interval=None, **SMALL)
    try:
        fs.hold_all = True
        n = _fill_across_a_switch(db, path, "a write waited for an fsync at the switch")
    finally:
        fs.release.set()
        db.close()
    with shaledb.open(path, **SMALL) as db:
        assert len(scan(db)) == n


def _power_loss_with_an_unsealed_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         rng: random.Random | None
                                         ) -> tuple[Path, list[dict[bytes, bytes]], int]:
    """Writes (the first ones durable), a memtable switch whose seal the flush thread holds
    back, more plain writes in the new segment, then a power loss. Returns the path, the
    model after each write and how many writes were acknowledged durable."""
    gate = threading.Event()
    real = Engine._seal_retired_wals

    def held(self: Engine) -> None:
        gate.wait(30)
        real(self)

    monkeypatch.setattr(Engine, "_seal_retired_wals", held)
    path = tmp_path / "db"
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, fsync_interval=None, **SMALL)
    models: list[dict[bytes, bytes]] = [{}]
    durable = 0
    try:
        i = 0
        for _ in range(10):
            db.put(key(i), value(i, size=500), sync=True)
            models.append({**models[-1], key(i): value(i, size=500)})
            i += 1
        durable = i
        while len(_logs(path)) < 2:
            db.put(key(i), value(i, size=1000))
            models.append({**models[-1], key(i): value(i, size=1000)})
            i += 1
        for _ in range(30):
            db.put(key(i), value(i, size=1000))
            models.append({**models[-1], key(i): value(i, size=1000)})
            i += 1
        fs.crash(rng)
    finally:
        gate.set()
        close_quietly(db)
    monkeypatch.setattr(Engine, "_seal_retired_wals", real)
    return path, models, durable


@pytest.mark.parametrize("seed", [None, 1, 2, 3, 4, 5])
def test_power_loss_before_the_old_segment_is_sealed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      seed: int | None) -> None:
    """The old segment's unsynced tail may be torn (holes, out of order) while the new
    segment's pages reached the disk: that is a crash, not corruption. The default (strict)
    open succeeds, holds a prefix of the writes with every acknowledged one, and saves what
    it cut under lost/; verify reports notices only. Fails with database format 3's rule
    (damage or a sequence gap before a later segment is synced damage)."""
    rng = None if seed is None else random.Random(seed)
    path, models, durable = _power_loss_with_an_unsealed_segment(tmp_path, monkeypatch, rng)
    with shaledb.open(path, **SMALL) as db:
        report = db.verify()
        state = scan(db)
        prefixes = [p for p, m in enumerate(models) if m == state]
        assert prefixes, "the state is no prefix of the writes"
        assert max(prefixes) >= durable, "an acknowledged write was lost"
    # verify on the closed directory too (after the open rewrote the WAL: clean)
    assert not [p for p in report.problems if p.severity.name == "DAMAGE"], report.problems


@pytest.mark.soak
def test_power_loss_before_the_old_segment_is_sealed_many_models(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make soak: the same with 300 random crash models (sectors kept at random)."""
    failures = []
    for seed in range(100, 400):
        sub = tmp_path / str(seed)
        sub.mkdir()
        path, models, durable = _power_loss_with_an_unsealed_segment(
            sub, monkeypatch, random.Random(seed))
        try:
            with shaledb.open(path, **SMALL) as db:
                state = scan(db)
        except shaledb.ShaleError as exc:
            failures.append((seed, repr(exc)))
            continue
        prefixes = [p for p, m in enumerate(models) if m == state]
        if not prefixes or max(prefixes) < durable:
            failures.append((seed, f"prefixes {prefixes[-3:]}, durable {durable}"))
    assert not failures, failures


def test_verify_before_the_open_calls_the_unsealed_tail_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify of the crashed directory, before any open, judges like the open: the old
    segment's torn tail is a notice, not damage."""
    for seed in range(1, 6):
        sub = tmp_path / str(seed)
        sub.mkdir()
        path, _, _ = _power_loss_with_an_unsealed_segment(sub, monkeypatch, random.Random(seed))
        report = shaledb.verify(path)
        damage = [p for p in report.problems if p.severity.name == "DAMAGE"]
        assert not damage, damage


def test_damage_in_an_old_segment_after_a_sync_in_a_newer_one_is_corruption(
        tmp_path: Path) -> None:
    """The converse: once anything in a newer segment was synced, the older segment had
    been sealed, so damage at its end is damage to synced data (strict refuses), even with
    the seal itself destroyed."""
    path = tmp_path / "db"
    fs = FaultInjectionFS()
    fs.inject("create", path=".sst", count=None)  # flushes fail: both segments stay live
    db = shaledb.open(path, fs=fs, fsync_interval=None, **SMALL)
    try:
        i = 0
        while len(_logs(path)) < 2:
            db.put(key(i), value(i, size=1000))
            i += 1
        db.put(b"synced", b"1", sync=True)
    except shaledb.ShaleError:
        pass
    finally:
        close_quietly(db)
    old = path / _logs(path)[0]
    size = old.stat().st_size
    with open(old, "r+b") as fh:
        fh.truncate(size - 40)  # the seal and part of the last record
    with pytest.raises(shaledb.CorruptionError):
        shaledb.open(path, **SMALL)
