"""Everything ShaleDB creates is private: files 0600, directories 0700, whatever the umask.

The tests run with umask 0, so any file or directory created without an explicit private mode
(e.g. a plain ``open(path, "w")``, which asks for 0666) shows up.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import shaledb
from _helpers import SMALL, apply_op, do_op, make_op, scan, wait_for


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _bad_modes(root: Path) -> list[str]:
    bad = []
    for dirpath, _dirnames, filenames in os.walk(root):
        mode = stat.S_IMODE(os.stat(dirpath).st_mode)
        if mode != 0o700:
            bad.append(f"dir {dirpath}: {mode:#o}")
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            assert stat.S_ISREG(st.st_mode), f"unexpected non-regular file {p}"
            if stat.S_IMODE(st.st_mode) != 0o600:
                bad.append(f"file {p}: {stat.S_IMODE(st.st_mode):#o}")
    return bad


def test_all_files_0600_dirs_0700(tmp_path: Path, umask_zero: None) -> None:
    root = tmp_path / "parent"  # does not exist: open creates it and the db dir
    path = root / "nested" / "db"
    model: dict[bytes, bytes] = {}
    db = shaledb.open(path, **SMALL)
    try:
        for i in range(1500):
            op = make_op(3, i)
            do_op(db, op, sync=i % 50 == 0)
            apply_op(model, op)
        db.flush()
        assert wait_for(lambda: db.stats()["compactions"] + db.stats()["trivial_moves"] > 0)
        db.compact_range()
        with db.snapshot() as snap:
            db.put(b"during-snapshot", b"1")
            model[b"during-snapshot"] = b"1"
            list(snap.range())
        with db.transaction() as txn:
            txn.put(b"txn", b"1")
        model[b"txn"] = b"1"
    finally:
        db.close()
    bad = _bad_modes(path)
    assert not bad, "wrong permissions after create/flush/compaction:\n" + "\n".join(bad)
    # Reopen (new manifest, CURRENT rewrite, new WAL), read-only reopen, more writes.
    with shaledb.open(path, **SMALL) as db:
        assert scan(db) == model
        db.put(b"after-reopen", b"1", sync=True)
        db.flush()
    with shaledb.open(path, read_only=True) as db:
        assert db.get(b"after-reopen") == b"1"
    bad = _bad_modes(path)
    assert not bad, "wrong permissions after reopen:\n" + "\n".join(bad)
    names = set(os.listdir(path))
    assert {"CURRENT", "LOCK"} <= names
    assert any(n.endswith(".sst") for n in names)
    assert any(n.startswith("MANIFEST-") for n in names)


def test_missing_parent_directories_are_0700(tmp_path: Path, umask_zero: None) -> None:
    """open() creates missing parents too (FileSystem.mkdirs documents "path and missing
    parents with mode 0700"); none of them may be readable by others."""
    root = tmp_path / "a"
    with shaledb.open(root / "b" / "c" / "db", **SMALL) as db:
        db.put(b"k", b"v")
    bad = _bad_modes(root)
    assert not bad, "\n".join(bad)


def test_existing_directory_is_not_loosened_or_required_private(tmp_path: Path,
                                                                umask_zero: None) -> None:
    """Opening inside an existing directory: the files ShaleDB creates are still 0600."""
    path = tmp_path / "db"
    path.mkdir(mode=0o700)
    with shaledb.open(path, **SMALL) as db:
        for i in range(400):
            db.put(b"k%05d" % i, b"v" * 300)
        db.flush()
    bad = _bad_modes(path)
    assert not bad, "\n".join(bad)


def test_crash_recovery_files_are_private(tmp_path: Path, umask_zero: None) -> None:
    """Files written during recovery (replayed WAL flushed to a table, truncated WAL,
    new manifest) are private too."""
    from shaledb.testing import FaultInjectionFS

    path = tmp_path / "db"
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, memtable_size=4 * 64 * 1024)
    for i in range(800):
        db.put(b"k%05d" % i, b"v" * 300, sync=i % 100 == 0)
    fs.crash()
    try:
        db.close()
    except shaledb.ShaleError:
        pass
    with shaledb.open(path, memtable_size=64 * 1024) as db:  # replay flushes on recovery
        assert db.get(b"k00000") == b"v" * 300
    bad = _bad_modes(path)
    assert not bad, "\n".join(bad)
