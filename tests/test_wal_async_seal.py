"""The WAL segment a memtable switch replaces is sealed off the writer's thread (database
format 4): the flush thread seals it, and nothing in the new segment is fsynced before it is.

Under the server's hostile soak the seal's fsync, on the writer's thread (the server's event
loop), held the loop up to 941 ms after the early write-back. These tests hold that fsync
(or the flush thread) back and check that plain writes go on, that a durable write still
waits for the old segment (a synced write never sits on an unsynced one), and that a power
loss while the old segment is unsealed opens in strict mode with a prefix that holds every
acknowledged write; verify agrees with the open.

Every test runs on a plain database (format 4) and on an encrypted one (format 5: the same
rules, with log format 3's 48-byte headers, sealed records and per-file keys, a prepared
segment's too).
"""

from __future__ import annotations

import os
import random
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

import format_reader as fr
import shaledb
from _helpers import SMALL, close_quietly, dir_emfile_fs, hold_seal, key, scan, value
from _helpers import in_thread as _in_thread
from _helpers import wal_logs as _logs
from conftest import pure_only
from shaledb.engine.db import Engine
from shaledb.engine.vfs import MappedFile, PosixFileSystem, WritableFile
from shaledb.engine.wal import WriteAheadLog
from shaledb.testing import FaultInjectionFS

#: The master key of the encrypted variants.
KEY = bytes(range(100, 132))


@pytest.fixture(params=["plain", "encrypted"])
def crypt(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Options of every open and verify: none, or the encrypted variant's key."""
    return {"encryption_key": KEY} if request.param == "encrypted" else {}


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


def test_a_slow_seal_of_the_old_segment_does_not_hold_up_writes(
        tmp_path: Path, crypt: dict[str, Any]) -> None:
    """Fails before format 4: the switch sealed the old segment on the writer's thread, so
    the write that switched waited for the held fsync."""
    path = tmp_path / "db"
    fs = SlowSealFS()
    db = shaledb.open(path, fs=fs, fsync_interval=None, **SMALL, **crypt)
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
    with shaledb.open(path, **SMALL, **crypt) as db:
        assert len(scan(db)) == n + 1


def test_a_memtable_switch_does_no_fsync_on_the_writers_thread(
        tmp_path: Path, crypt: dict[str, Any]) -> None:
    """Every fsync held (a disk so busy that each takes seconds): plain writes across a
    memtable switch still complete, because the switch only renames a segment prepared
    ahead. Failed while the switch created the new segment itself: its header fsync and the
    directory fsync held the server's event loop up to 1,197 ms in the hostile soak."""
    path = tmp_path / "db"
    fs = SlowSealFS()
    db = shaledb.open(path, fs=fs, fsync_interval=None, **SMALL, **crypt)
    try:
        fs.hold_all = True
        n = _fill_across_a_switch(db, path, "a write waited for an fsync at the switch")
    finally:
        fs.release.set()
        db.close()
    with shaledb.open(path, **SMALL, **crypt) as db:
        assert len(scan(db)) == n


def _power_loss_with_an_unsealed_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         rng: random.Random | None,
                                         crypt: dict[str, Any], names_durable: bool = False
                                         ) -> tuple[Path, list[dict[bytes, bytes]], int]:
    """Writes (the first ones durable), a memtable switch whose seal the flush thread holds
    back, more plain writes in the new segment, then a power loss. Returns the path, the
    model after each write and how many writes were acknowledged durable. With
    ``names_durable`` the directory's entries (the new segment's name) reach the disk
    before the power loss, as a journal commit of the file system may write them back at
    any time; without it the crash loses the new segment whole (its rename at the switch was
    never made durable: nothing in it was synced)."""
    gate = threading.Event()
    real = Engine._seal_retired_wals

    def held(self: Engine) -> None:
        gate.wait(30)
        real(self)

    monkeypatch.setattr(Engine, "_seal_retired_wals", held)
    path = tmp_path / "db"
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, fsync_interval=None, **SMALL, **crypt)
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
        if names_durable:
            fs.sync_dir(str(path))
            assert len(_logs(path)) == 2
        fs.crash(rng)
    finally:
        gate.set()
        close_quietly(db)
    monkeypatch.setattr(Engine, "_seal_retired_wals", real)
    return path, models, durable


@pure_only
@pytest.mark.parametrize("seed", [None, 1, 2, 3, 4, 5])
def test_power_loss_before_the_old_segment_is_sealed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      seed: int | None,
                                                      crypt: dict[str, Any]) -> None:
    """The old segment's unsynced tail may be torn (holes, out of order) while the new
    segment's pages reached the disk: that is a crash, not corruption. The default (strict)
    open succeeds, holds a prefix of the writes with every acknowledged one, and saves what
    it cut under lost/; verify reports notices only. Fails with database format 3's rule
    (damage or a sequence gap before a later segment is synced damage)."""
    rng = None if seed is None else random.Random(seed)
    path, models, durable = _power_loss_with_an_unsealed_segment(tmp_path, monkeypatch, rng,
                                                                 crypt)
    with shaledb.open(path, **SMALL, **crypt) as db:
        report = db.verify()
        state = scan(db)
        prefixes = [p for p, m in enumerate(models) if m == state]
        assert prefixes, "the state is no prefix of the writes"
        assert max(prefixes) >= durable, "an acknowledged write was lost"
    # verify on the closed directory too (after the open rewrote the WAL: clean)
    assert not [p for p in report.problems if p.severity.name == "DAMAGE"], report.problems


@pure_only
@pytest.mark.parametrize("seed", [None, 1, 2, 3, 4, 5, 6, 7, 8])
def test_power_loss_before_the_old_segment_is_sealed_with_both_names_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int | None,
        crypt: dict[str, Any]) -> None:
    """The same when the new segment's name survives the power loss (its records at random):
    recovery meets the unsealed old segment followed by the new one. Its records, written
    before any fsync of it, must not vouch for the old segment (on an encrypted database
    they say 48, its header's size, fsynced when it was prepared; failed when vouching took
    anything above 32 as an fsync of records), and the old segment's lost tail is a crash."""
    rng = None if seed is None else random.Random(seed)
    path, models, durable = _power_loss_with_an_unsealed_segment(tmp_path, monkeypatch, rng,
                                                                 crypt, names_durable=True)
    report = shaledb.verify(path, **crypt)
    assert not [p for p in report.problems if p.severity.name == "DAMAGE"], report.problems
    with shaledb.open(path, **SMALL, **crypt) as db:
        state = scan(db)
        prefixes = [p for p, m in enumerate(models) if m == state]
        assert prefixes, "the state is no prefix of the writes"
        assert max(prefixes) >= durable, "an acknowledged write was lost"


@pytest.mark.soak
def test_power_loss_before_the_old_segment_is_sealed_many_models(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crypt: dict[str, Any]) -> None:
    """make soak: the same with 300 random crash models (sectors kept at random)."""
    failures = []
    for seed in range(100, 400):
        sub = tmp_path / str(seed)
        sub.mkdir()
        path, models, durable = _power_loss_with_an_unsealed_segment(
            sub, monkeypatch, random.Random(seed), crypt)
        try:
            with shaledb.open(path, **SMALL, **crypt) as db:
                state = scan(db)
        except shaledb.ShaleError as exc:
            failures.append((seed, repr(exc)))
            continue
        prefixes = [p for p, m in enumerate(models) if m == state]
        if not prefixes or max(prefixes) < durable:
            failures.append((seed, f"prefixes {prefixes[-3:]}, durable {durable}"))
    assert not failures, failures


@pure_only
def test_verify_before_the_open_calls_the_unsealed_tail_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crypt: dict[str, Any]) -> None:
    """verify of the crashed directory, before any open, judges like the open: the old
    segment's torn tail is a notice, not damage."""
    for seed in range(1, 6):
        sub = tmp_path / str(seed)
        sub.mkdir()
        path, _, _ = _power_loss_with_an_unsealed_segment(sub, monkeypatch, random.Random(seed),
                                                          crypt)
        report = shaledb.verify(path, **crypt)
        damage = [p for p in report.problems if p.severity.name == "DAMAGE"]
        assert not damage, damage


def test_damage_in_an_old_segment_after_a_sync_in_a_newer_one_is_corruption(
        tmp_path: Path, crypt: dict[str, Any]) -> None:
    """The converse: once anything in a newer segment was synced, the older segment had
    been sealed, so damage at its end is damage to synced data (strict refuses), even with
    the seal itself destroyed."""
    path = tmp_path / "db"
    fs = FaultInjectionFS()
    fs.inject("create", path=".sst", count=None)  # flushes fail: both segments stay live
    db = shaledb.open(path, fs=fs, fsync_interval=None, **SMALL, **crypt)
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
        shaledb.open(path, **SMALL, **crypt)


# -- prepared segments (NNNNNN.log.new) -------------------------------------------------------

def _header_size(crypt: dict[str, Any]) -> int:
    """A WAL segment's file header: 32 bytes (log format 2), 48 encrypted (log format 3)."""
    return 48 if crypt else 32


def _keys(path: Path, crypt: dict[str, Any]) -> fr.Keys | None:
    return fr.read_keyring((path / "KEYRING").read_bytes(), KEY) if crypt else None


def _prepared(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".log.new"))


def test_a_prepared_segment_gets_a_file_key_of_its_own(tmp_path: Path) -> None:
    """Encrypted: the segment prepared ahead is a log of format 3 from its first byte, its
    header fsynced: its own number, a fresh salt (no other file's), the active data key
    (the new one after rotate_data_key); once switched to, its records decrypt with the key
    its header names (the independent reader, from docs/format.md)."""
    path = tmp_path / "db"
    salts: dict[str, bytes] = {}

    def header(name: str) -> tuple[int, int, bytes, int]:
        data = (path / name).read_bytes()
        version, number, salt, key_id = fr._encryption_header(data, b"SHALElog")
        assert (version, number) == (3, int(name.split(".")[0]))
        assert salt not in salts.values() or salts.get(name) == salt, name
        salts[name] = salt
        return version, number, salt, key_id

    for rotate in (False, True):
        db = shaledb.open(path, fsync_interval=None, rotate_data_key=rotate, **SMALL,
                          encryption_key=KEY)
        try:
            (prep,) = _prepared(path)
            assert header(prep)[3] == (2 if rotate else 1)  # the active data key
            for name in _logs(path):
                header(name)
            n = _fill_across_a_switch(db, path, "the switch stalled")
            # Switched to under its final name, with the header (salt) it was prepared with.
            assert prep[:-4] in _logs(path) and not (path / prep).exists()
            salts[prep[:-4]] = salts.pop(prep)
            header(prep[:-4])
            db.flush()
        finally:
            db.close()
        rd = fr.read_database(str(path), KEY)
        with shaledb.open(path, read_only=True, encryption_key=KEY, **SMALL) as ro:
            assert len(scan(ro)) >= n
            assert {k: v for k, (v, _) in rd.state(0).items()} == dict(scan(ro))
        for name in sorted(os.listdir(path)):
            if name.endswith(".log"):
                header(name)


def _rename_lost_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      crypt: dict[str, Any]) -> tuple[Path, dict[bytes, bytes], int, str, bytes]:
    """A crash right after a memtable switch whose rename (NNNNNN.log.new -> NNNNNN.log) did
    not reach the disk, while the new segment's records did (in the page cache, written
    back): a copy of the open database with the switched segment given back its prepared
    name. The flush thread is held, so the old segment stays unsealed and live. Returns the
    copy, the model of the writes before the switch, the switched segment's number, its
    prepared name and its bytes."""
    gate, _ = hold_seal(monkeypatch)
    path = tmp_path / "db"
    db = shaledb.open(path, fsync_interval=None, **SMALL, **crypt)
    model: dict[bytes, bytes] = {}
    try:
        (prep,) = _prepared(path)
        i = 0
        while prep[:-4] not in _logs(path):
            model[key(i)] = value(i, size=1000)
            db.put(key(i), model[key(i)])
            i += 1
        del model[key(i - 1)]  # the write that switched is in the new segment
        for j in range(i, i + 10):
            db.put(key(j), value(j, size=1000))
        copy = tmp_path / "copy"
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("LOCK", "*.log.new"))
    finally:
        gate.set()
        close_quietly(db)
    os.rename(copy / prep[:-4], copy / prep)
    data = (copy / prep).read_bytes()
    return copy, model, int(prep.split(".")[0]), prep, data


def test_a_prepared_segment_whose_rename_a_crash_lost_is_kept_in_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crypt: dict[str, Any]) -> None:
    """Records in a leftover NNNNNN.log.new are writes whose segment's new name a crash lost:
    never synced (its name is made durable before anything in it is), so the open keeps the
    writes before them, saves them under lost/ and removes the file. Encrypted, what is saved
    starts with the segment's 48-byte header, so the records decrypt with the database's key
    (docs/format.md, "lost/"): the key of a prepared segment is always durable once it holds
    records (its data key is in KEYRING, its salt in its header, fsynced when it was
    prepared). Failed before: the open read the encrypted file as a plain log, found no
    records, and removed it, keeping nothing."""
    copy, model, number, prep, data = _rename_lost_copy(tmp_path, monkeypatch, crypt)
    hsize = _header_size(crypt)
    with shaledb.open(copy, **SMALL, **crypt) as db:
        assert dict(scan(db)) == model
        cuts = db.stats()["wal_recovery"]["cut"]
    assert not (copy / prep).exists()
    (cut,) = [c for c in cuts if c["file"] == prep]
    assert cut["offset"] == hsize and not cut["synced"] and cut["saved_to"]
    lost = (copy / cut["saved_to"]).read_bytes()
    end = len(data.rstrip(b"\0"))
    if not crypt:
        assert lost == data[hsize:end]
        return
    assert lost == data[:end]  # the header, then the records from the cut (at 48) on
    log = fr.read_log(lost, number, _keys(copy, crypt), fr.WAL_FILE)
    ops = [op for p in log.payloads for op in fr.decode_wal_payload(p)]
    assert len(ops) == 11 and ops[-1].value == value(ops[-1].seq - 1, size=1000)


@pure_only
def test_a_discarded_prepared_segment_leaves_its_number_unused(tmp_path: Path,
                                                               crypt: dict[str, Any]) -> None:
    """File numbers are never reused. An open prepares the next WAL segment (taking a
    number after the one its new manifest records) and a close removes it unused: the close
    records the counter past it first, and so does an open that fails after preparing it.
    Failed before: every open-close without a flush gave the prepared segment's number to
    the next open's WAL segment (a file created twice under one number; encrypted, one
    number naming two file keys)."""
    path = tmp_path / "db"
    created: list[str] = []

    class Recording(PosixFileSystem):
        def create_mapped(self, p: str, *a: Any, **k: Any) -> MappedFile:
            created.append(os.path.basename(p))
            return super().create_mapped(p, *a, **k)

        def create(self, p: str, *a: Any, **k: Any) -> WritableFile:
            created.append(os.path.basename(p))
            return super().create(p, *a, **k)

    def cannot_start(self: Engine) -> None:
        raise RuntimeError("can't start new thread")

    fs = Recording()
    for round_ in range(4):
        with shaledb.open(path, fs=fs, fsync_interval=None, **SMALL, **crypt) as db:
            if round_ == 2:
                db.put(b"k", b"v")
        with shaledb.open(path, fs=fs, read_only=True, **SMALL, **crypt) as db:
            assert (db.get(b"k") is not None) == (round_ >= 2)
        if round_ == 1:  # an open that fails after preparing the segment (abandoned)
            with pytest.MonkeyPatch.context() as m:
                m.setattr(Engine, "_start_threads", cannot_start)
                with pytest.raises(RuntimeError):
                    shaledb.open(path, fs=fs, **SMALL, **crypt)
    numbers = [int(n.split(".")[0].split("-")[-1]) for n in created
               if n[0].isdigit() or n.startswith("MANIFEST-")]
    assert any(n.endswith(".log.new") for n in created)
    assert len(numbers) == len(set(numbers)), created


def _hold_seal_and_flush(monkeypatch: pytest.MonkeyPatch
                         ) -> tuple[threading.Event, threading.Event]:
    """Hold the flush thread before its seal of the retired segments and, once that gate is
    set, before it writes the memtable out (both segments stay live): (seal gate, flush
    gate)."""
    seal_gate, _ = hold_seal(monkeypatch)
    flush_gate = threading.Event()
    real_flush = Engine._flush_memtable

    def held_flush(self: Engine, *args: Any) -> Any:
        flush_gate.wait(30)
        return real_flush(self, *args)

    monkeypatch.setattr(Engine, "_flush_memtable", held_flush)
    return seal_gate, flush_gate


def _wait_for_the_note(segment: Path, crypt: dict[str, Any]) -> fr.LogFile:
    """The segment, read (independent reader) once it holds a sync mark: the "note" the flush
    thread writes after sealing the segment before it."""
    for _ in range(200):
        log = fr.read_log(segment.read_bytes(), None, _keys(segment.parent, crypt))
        if fr.SYNC in [r.type for r in log.records]:
            return log
        threading.Event().wait(0.05)
    raise AssertionError(f"no sync mark in {segment.name} after the seal: {log.records}")


@pure_only
def test_the_seal_note_makes_later_damage_in_the_old_segment_corruption(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crypt: dict[str, Any]) -> None:
    """Once the flush thread has sealed the segment a switch replaced, the new segment gets
    a sync mark (the "note") even if nothing in it is ever synced; its ``synced`` is the
    header's size (48 encrypted). Damage at the old segment's end is then corruption (strict
    refuses); before the note (seal held back) the same damage is a crash's torn tail."""
    seal_gate, flush_gate = _hold_seal_and_flush(monkeypatch)
    path = tmp_path / "db"
    db = shaledb.open(path, fsync_interval=None, **SMALL, **crypt)
    hsize = _header_size(crypt)
    try:
        i = 0
        while len(_logs(path)) < 2:
            db.put(key(i), value(i, size=1000))
            i += 1
        old, new = _logs(path)
        before = tmp_path / "before"
        shutil.copytree(path, before, ignore=shutil.ignore_patterns("LOCK"))
        seal_gate.set()
        log = _wait_for_the_note(path / new, crypt)
        notes = [r for r in log.records if r.type == fr.SYNC]
        assert notes and notes[0].synced == hsize, log.records
        assert fr.read_log((path / old).read_bytes(), None,
                           _keys(path, crypt)).records[-1].type == fr.SEAL
        after = tmp_path / "after"
        shutil.copytree(path, after, ignore=shutil.ignore_patterns("LOCK"))
    finally:
        seal_gate.set()
        flush_gate.set()
        close_quietly(db)
    for copy in (before, after):
        data = (copy / old).read_bytes()
        end = len(data.rstrip(b"\0"))
        with open(copy / old, "r+b") as fh:
            fh.truncate(end - 40)  # (after: the seal and part of the last record)
    with shaledb.open(before, **SMALL, **crypt) as db:
        assert len(scan(db)) < i
    with pytest.raises(shaledb.CorruptionError, match="synced"):
        shaledb.open(after, **SMALL, **crypt)
    with shaledb.open(after, wal_recovery="point_in_time", **SMALL, **crypt) as db:
        assert len(scan(db)) < i


@pure_only
def test_a_durable_write_refused_for_the_new_segments_name_can_be_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crypt: dict[str, Any]) -> None:
    """A ``sync=True`` write makes the new segment's name durable (a directory fsync: a
    descriptor) after its record was framed and before any byte of it is copied; an EMFILE
    there refuses the write, retryable. Encrypted, the record was sealed for its offset, and
    the retry seals it for that offset again: the cipher's nonce guard refused that
    (AssertionError, the write failed for good) unless the refused record was given back
    (WriteAheadLog.unframe; the discarded ciphertext never reached the file). Here the old
    segment is sealed and its "note" written before (the flush thread's own directory fsync
    left out), so nothing else moves the offset between the two tries."""
    seal_gate, flush_gate = _hold_seal_and_flush(monkeypatch)
    monkeypatch.setattr(WriteAheadLog, "make_name_durable", lambda self: None)
    path = tmp_path / "db"
    fs = dir_emfile_fs()
    db = shaledb.open(path, fs=fs, fsync_interval=None, **SMALL, **crypt)
    try:
        n = _fill_across_a_switch(db, path, "the switch stalled")
        seal_gate.set()
        _wait_for_the_note(path / _logs(path)[-1], crypt)
        fs.fail_dirs = 1
        with pytest.raises(shaledb.DescriptorsExhaustedError):
            db.put(b"durable", b"1", sync=True)
        db.put(b"durable", b"1", sync=True)  # retried, as the server's client would
        assert db.stats()["background_error"] is None and db.get(b"durable") == b"1"
    finally:
        seal_gate.set()
        flush_gate.set()
        close_quietly(db)
    with shaledb.open(path, **SMALL, **crypt) as db:
        assert len(scan(db)) == n + 1 and db.get(b"durable") == b"1"
