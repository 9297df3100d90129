"""Self-tests of the fault injector (shaledb.testing.FaultInjectionFS): a harness with a bug
hides engine bugs, so its power-loss model is checked here against hand-worked outcomes.

The model (see the faultfs module docstring): synced data survives; unsynced 512-byte sectors
survive or read as before the write; an appended file's length is anywhere between its synced
and written lengths; a mapped file keeps its allocated length or is cut back; creations,
renames, removals and new directories are durable once a directory fsync commits them (in
order), and at a crash a random prefix of the rest survives.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import threading
from pathlib import Path

import pytest

from shaledb.errors import StorageError
from shaledb.testing import FaultInjectionFS
from shaledb.testing.faultfs import SECTOR


def _write(fs: FaultInjectionFS, path: str, data: bytes, *, sync: bool = True) -> None:
    f = fs.create(path)
    try:
        f.append(data)
        if sync:
            f.sync()
    finally:
        f.close()


def _sectors(data: bytes) -> list[bytes]:
    return [data[i:i + SECTOR] for i in range(0, len(data), SECTOR)]


# ---------------------------------------------------------------------------------------------
# Metadata


def test_crash_brings_back_the_target_of_a_lost_rename(tmp_path: Path) -> None:
    """Rename A over an existing, durable B without a directory fsync: the rename is not
    durable, so after the crash B is back with its OLD content (a bug once deleted B)."""
    d = str(tmp_path)
    a, b = os.path.join(d, "A"), os.path.join(d, "B")
    fs = FaultInjectionFS()
    _write(fs, b, b"old content of B")
    fs.sync_dir(d)
    _write(fs, a, b"new content")
    fs.rename(a, b)
    fs.crash()
    assert os.path.exists(b), "the target of a lost rename-over-existing was deleted"
    assert Path(b).read_bytes() == b"old content of B"
    assert not os.path.exists(a), "A was created without a directory fsync: it is lost too"


def test_durable_rename_over_existing_keeps_the_new_file(tmp_path: Path) -> None:
    d = str(tmp_path)
    a, b = os.path.join(d, "A"), os.path.join(d, "B")
    fs = FaultInjectionFS()
    _write(fs, b, b"old")
    fs.sync_dir(d)
    _write(fs, a, b"new")
    fs.rename(a, b)
    fs.sync_dir(d)
    fs.crash()
    assert Path(b).read_bytes() == b"new" and not os.path.exists(a)


def test_write_file_atomic_is_durable_and_a_lost_one_leaves_the_old_file(tmp_path: Path) -> None:
    d = str(tmp_path)
    p = os.path.join(d, "CURRENT")
    fs = FaultInjectionFS()
    fs.write_file_atomic(p, b"one\n")
    fs.crash()
    assert Path(p).read_bytes() == b"one\n"
    fs = FaultInjectionFS()
    fs.inject("sync_dir")  # the rename happens, its directory fsync fails
    with pytest.raises(StorageError):
        fs.write_file_atomic(p, b"two\n")
    assert Path(p).read_bytes() == b"two\n"
    fs.crash()
    assert Path(p).read_bytes() == b"one\n"
    assert sorted(os.listdir(d)) == ["CURRENT"]


def test_lost_removal_brings_the_file_back_with_its_content(tmp_path: Path) -> None:
    d = str(tmp_path)
    p = os.path.join(d, "000005.sst")
    fs = FaultInjectionFS()
    _write(fs, p, b"table bytes" * 100)
    fs.sync_dir(d)
    fs.remove(p)
    assert not os.path.exists(p)
    fs.crash()
    assert Path(p).read_bytes() == b"table bytes" * 100


def test_durable_removal_stays_removed(tmp_path: Path) -> None:
    d = str(tmp_path)
    p = os.path.join(d, "x")
    fs = FaultInjectionFS()
    _write(fs, p, b"x")
    fs.sync_dir(d)
    fs.remove(p)
    fs.sync_dir(d)
    fs.crash()
    assert not os.path.exists(p)


def test_removal_of_a_file_written_by_another_process_is_undone(tmp_path: Path) -> None:
    """Files the injector never wrote (an earlier session's) count as durable."""
    p = tmp_path / "old.log"
    p.write_bytes(b"from before")
    fs = FaultInjectionFS()
    fs.remove(str(p))
    fs.crash()
    assert p.read_bytes() == b"from before"


def test_new_nested_directory_disappears_without_a_directory_fsync(tmp_path: Path) -> None:
    """A new directory's entry is durable only once its parent is fsynced. mkdirs does that
    for every directory it creates (it did not: a database directory created by open() could
    vanish at a power loss); when that fsync fails, the directory is lost at a crash."""
    top = tmp_path / "a"
    fs = FaultInjectionFS()
    fs.mkdirs(str(top / "b" / "c"))
    fs.crash()
    assert (top / "b" / "c").is_dir(), "mkdirs did not make the new directories durable"
    other = tmp_path / "x"
    fs = FaultInjectionFS()
    fs.inject("sync_dir", count=None)
    with pytest.raises(StorageError):
        fs.mkdirs(str(other / "y"))
    assert other.is_dir()
    fs.crash()
    assert not other.exists(), "a new directory whose parent was never fsynced survived"


def test_directory_fsync_commits_earlier_metadata_in_order(tmp_path: Path) -> None:
    """The fsync of a directory commits every metadata operation before the last one it
    covers (journaling file systems commit in order): here the new directories too."""
    db = tmp_path / "a" / "db"
    fs = FaultInjectionFS()
    fs.mkdirs(str(db))
    _write(fs, str(db / "CURRENT"), b"x")
    fs.sync_dir(str(db))
    _write(fs, str(db / "later"), b"y")  # after the fsync: lost
    fs.crash()
    assert (db / "CURRENT").read_bytes() == b"x"
    assert not (db / "later").exists()


def test_metadata_survives_as_a_prefix(tmp_path: Path) -> None:
    """With an rng, a random prefix of the non-durable metadata operations survives: never a
    later one without every earlier one; every prefix length happens."""
    seen = set()
    for seed in range(60):
        d = tmp_path / f"r{seed}"
        d.mkdir()
        fs = FaultInjectionFS()
        for i in range(4):
            _write(fs, str(d / f"f{i}"), b"%d" % i)
        fs.crash(random.Random(seed))
        present = [(d / f"f{i}").exists() for i in range(4)]
        n = sum(present)
        assert present == [True] * n + [False] * (4 - n), present
        seen.add(n)
    assert seen == {0, 1, 2, 3, 4}


def test_a_lost_directory_takes_its_durable_files_with_it(tmp_path: Path) -> None:
    """A file made durable in a directory whose own creation was lost is lost too (the tree
    is unreachable); the crash never leaves half a tree."""
    fs = FaultInjectionFS()
    sub = tmp_path / "new"
    fault = fs.inject("sync_dir")  # mkdirs cannot make ``sub`` durable
    with pytest.raises(StorageError):
        fs.mkdirs(str(sub))
    assert fault.hits == 1 and sub.is_dir()
    f = str(sub / "f")
    _write(fs, f, b"data")
    fs.crash()
    assert not sub.exists()


# ---------------------------------------------------------------------------------------------
# Data


def test_no_rng_drops_every_unsynced_byte(tmp_path: Path) -> None:
    d = str(tmp_path)
    p = os.path.join(d, "f")
    fs = FaultInjectionFS()
    f = fs.create(p)
    fs.sync_dir(d)
    f.append(b"a" * 1000)
    f.sync()
    f.append(b"b" * 3000)
    fs.crash()
    f.close()
    assert Path(p).read_bytes() == b"a" * 1000


def test_unsynced_sectors_survive_or_read_as_zeros_with_holes(tmp_path: Path) -> None:
    """Each unsynced sector independently survives or reads as zeros (never-written space);
    the length is between the synced and the written size; the synced prefix always survives.
    Across seeds: holes before surviving sectors (out of order) and pure prefixes both occur."""
    synced = bytes(range(256)) * 4 + b"s" * 100  # 1124 bytes: the last sector is shared
    unsynced = b"".join(bytes([65 + i]) * SECTOR for i in range(10))
    holes = prefixes = 0
    for seed in range(80):
        d = tmp_path / f"r{seed}"
        d.mkdir()
        p = str(d / "f")
        fs = FaultInjectionFS()
        f = fs.create(p)
        fs.sync_dir(str(d))
        f.append(synced)
        f.sync()
        f.append(unsynced)
        fs.crash(random.Random(seed))
        f.close()
        got = Path(p).read_bytes()
        assert len(synced) <= len(got) <= len(synced) + len(unsynced)
        assert got[:len(synced)] == synced, "synced bytes changed"
        full = synced + unsynced
        kept = []
        for i in range(len(synced), len(got)):
            assert got[i] in (full[i], 0), (seed, i)
        for s in range(len(synced) // SECTOR, -(-len(got) // SECTOR)):
            lo, hi = max(s * SECTOR, len(synced)), min((s + 1) * SECTOR, len(got))
            part = got[lo:hi]
            assert part in (full[lo:hi], bytes(hi - lo)), f"sector {s} is torn inside: {seed}"
            kept.append(part == full[lo:hi])
        if kept and not all(kept) and any(kept[kept.index(False):]):
            holes += 1
        if kept and all(kept):
            prefixes += 1
    assert holes > 5 and prefixes > 5, (holes, prefixes)


def test_overwritten_synced_content_comes_back(tmp_path: Path) -> None:
    """create() over an existing synced file truncates it; without an fsync after the new
    content, a crash brings back the old content (sectors not surviving read as the old)."""
    d = str(tmp_path)
    p = os.path.join(d, "f")
    old = b"o" * 2000
    fs = FaultInjectionFS()
    _write(fs, p, old)
    fs.sync_dir(d)
    _write(fs, p, b"n" * 3000, sync=False)
    fs.crash()
    assert Path(p).read_bytes() == old
    for seed in range(30):
        fs = FaultInjectionFS()
        _write(fs, p, old)
        _write(fs, p, b"n" * 3000, sync=False)
        fs.crash(random.Random(seed))
        got = Path(p).read_bytes()
        for s, part in enumerate(_sectors(got)):
            lo = s * SECTOR
            allowed = {(b"n" * 3000)[lo:lo + len(part)], old[lo:lo + len(part)]}
            if lo + len(part) > len(old):
                allowed.add(old[lo:] + bytes(lo + len(part) - len(old)))
                allowed.add(bytes(len(part)))
            assert part in allowed, (seed, s)
        _write(FaultInjectionFS(), p, old)  # the next round starts from the old content


def test_mapped_file_keeps_allocated_length_or_is_cut_back(tmp_path: Path) -> None:
    """A WAL segment is written through a map into fallocated space: after a crash it keeps
    its allocated length (zeros past the data) or is cut back; lost sectors read as zeros."""
    lengths = set()
    for seed in range(40):
        d = tmp_path / f"r{seed}"
        d.mkdir()
        p = str(d / "000007.log")
        fs = FaultInjectionFS()
        f = fs.create_mapped(p)
        fs.sync_dir(str(d))
        f.append(b"a" * 700)
        f.sync()
        f.append(b"b" * 2000)
        capacity = os.path.getsize(p)
        if seed % 2:
            f.close()  # cut to 2700 bytes (not durable until an fsync)
        fs.crash(random.Random(seed))
        f.close()
        got = Path(p).read_bytes()
        lengths.add(len(got))
        assert got[:700] == b"a" * 700
        assert len(got) in (capacity, 2700)
        for s, part in enumerate(_sectors(got[:2700])):
            lo = s * SECTOR
            want = (b"a" * 700 + b"b" * 2000)[lo:lo + len(part)]
            keep = min(len(part), max(0, 700 - lo))  # synced bytes of the sector
            zeroed = want[:keep] + bytes(len(part) - keep)
            assert part in (want, zeroed), (seed, s)
        assert not got[2700:].strip(b"\0")
    assert len(lengths) == 2


def test_mapped_file_no_rng_is_cut_to_synced_content(tmp_path: Path) -> None:
    d = str(tmp_path)
    p = os.path.join(d, "m.log")
    fs = FaultInjectionFS()
    f = fs.create_mapped(p)
    fs.sync_dir(d)
    f.append(b"a" * 100)
    f.sync()
    f.append(b"b" * 100)
    fs.crash()
    f.close()
    assert Path(p).read_bytes() == b"a" * 100


def test_fsync_covers_only_what_was_written_before_it(tmp_path: Path) -> None:
    d = str(tmp_path)
    p = os.path.join(d, "f")
    fs = FaultInjectionFS()
    f = fs.create(p)
    fs.sync_dir(d)
    f.append(b"x" * 10)
    fs.sync_file(p)  # fsync by path (recovery syncs an old WAL segment like this)
    f.append(b"y" * 10)
    fs.crash()
    f.close()
    assert Path(p).read_bytes() == b"x" * 10


def test_truncate_is_durable(tmp_path: Path) -> None:
    d = str(tmp_path)
    p = os.path.join(d, "f")
    fs = FaultInjectionFS()
    _write(fs, p, b"z" * 5000)
    fs.sync_dir(d)
    fs.truncate(p, 1000)
    fs.crash(random.Random(1))
    assert Path(p).read_bytes() == b"z" * 1000


# ---------------------------------------------------------------------------------------------
# Crash points, failures after the crash, concurrency


def _script(fs: FaultInjectionFS, d: str) -> None:
    fs.mkdirs(os.path.join(d, "db"))                           # 1 mkdir, 2-3 sync_dir
    p = os.path.join(d, "db", "f")                             # (the parents of d and db)
    f = fs.create(p)                                           # 4 create
    try:
        f.append(b"1" * 600)                                   # 5 write
        f.sync()                                               # 6 fsync
        fs.sync_dir(os.path.join(d, "db"))                     # 7 sync_dir
        f.append(b"2" * 600)                                   # 8 write
    finally:
        f.close()
    fs.write_file_atomic(os.path.join(d, "db", "C"), b"c")     # 9-13 create write fsync
    fs.remove(p)                                               #       rename sync_dir, 14


def test_crash_at_every_operation(tmp_path: Path) -> None:
    fs = FaultInjectionFS()
    fs.trace = True
    _script(fs, str(tmp_path / "clean"))
    assert fs.mutations == 14
    assert [op for _, op, _ in fs.traced] == [
        "mkdir", "sync_dir", "sync_dir", "create", "write", "fsync", "sync_dir", "write",
        "create", "write", "fsync", "rename", "sync_dir", "remove"]
    for k in range(1, 15):
        d = str(tmp_path / f"k{k}")
        fs = FaultInjectionFS(crash_at=k)
        with pytest.raises(StorageError) as info:
            _script(fs, d)
        assert info.value.errno == errno.EIO and "simulated crash" in str(info.value)
        assert fs.crashed and fs.crash_point is not None and fs.crash_point[0] == k
        assert fs.mutations == k
        db = os.path.join(d, "db")
        f = os.path.join(db, "f")
        # The operation at the crash point did not happen; the no-rng model keeps only what
        # an fsync made durable.
        if k <= 2:
            assert not os.path.exists(d), k  # no directory fsync returned yet
        elif k >= 4:
            assert os.path.isdir(db), k  # mkdirs made both directories durable
        if k <= 7:
            assert not os.path.exists(f), k  # its entry is durable from op 7 on
        else:
            assert Path(f).read_bytes() == b"1" * 600, k
            c = os.path.join(db, "C")  # durable once its sync_dir (op 13) returned
            assert Path(c).read_bytes() == b"c" if k == 14 else not os.path.exists(c), k
        with pytest.raises(StorageError):
            fs.create(os.path.join(d, "after"))


def test_every_operation_fails_after_crash(tmp_path: Path) -> None:
    d = str(tmp_path)
    p = os.path.join(d, "f")
    fs = FaultInjectionFS()
    f = fs.create(p)
    m = fs.create_mapped(os.path.join(d, "m.log"))
    m.append(b"m")
    fs.crash()
    calls = [lambda: fs.create(os.path.join(d, "g")), lambda: f.append(b"x"), f.sync,
             lambda: m.append(b"y"), m.sync, lambda: fs.rename(p, p + "2"),
             lambda: fs.remove(p), lambda: fs.mkdirs(os.path.join(d, "x")),
             lambda: fs.sync_dir(d), lambda: fs.truncate(p, 0), lambda: fs.sync_file(p),
             lambda: fs.open_read(p), lambda: fs.listdir(d), lambda: fs.read_file(p),
             lambda: fs.create_mapped(os.path.join(d, "n.log")), fs.worker_state]
    for call in calls:
        with pytest.raises(StorageError):
            call()
    f.close()
    m.close()  # after the crash, close leaves the file as the crash left it


def test_crash_waits_for_operations_in_flight_and_nothing_is_written_after(
        tmp_path: Path) -> None:
    """Threads append and fsync while another thread crashes: afterwards no byte changes
    (no thread writes past the power loss), and the file holds its synced prefix (no rng)."""
    d = str(tmp_path)
    fs = FaultInjectionFS()
    files = [fs.create(os.path.join(d, f"t{i}")) for i in range(4)]
    mapped = fs.create_mapped(os.path.join(d, "w.log"))
    fs.sync_dir(d)
    synced = [0] * 5
    stop = threading.Event()

    def run(i: int) -> None:
        f = files[i] if i < 4 else mapped
        n = 0
        try:
            while not stop.is_set():
                f.append(b"%d" % (n % 10) * 37)
                n += 1
                if n % 5 == 0:
                    f.sync()
                    synced[i] = f.size
        except StorageError:
            pass

    threads = [threading.Thread(target=run, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    threading.Event().wait(0.2)
    fs.crash()
    sizes = [os.path.getsize(os.path.join(d, f"t{i}")) for i in range(4)]
    threading.Event().wait(0.1)
    stop.set()
    for t in threads:
        t.join()
    assert [os.path.getsize(os.path.join(d, f"t{i}")) for i in range(4)] == sizes
    for i in range(4):
        assert sizes[i] >= synced[i]  # an fsync that returned was durable
    mapped.close()
    for f in files:
        f.close()


def test_op_counts_and_faults(tmp_path: Path) -> None:
    d = str(tmp_path)
    fs = FaultInjectionFS()
    fault = fs.inject("write", path="f", errno=errno.ENOSPC, skip=1, count=1)
    f = fs.create(os.path.join(d, "f"))
    f.append(b"1")
    with pytest.raises(StorageError) as info:
        f.append(b"2")
    assert info.value.errno == errno.ENOSPC
    f.append(b"3")
    f.close()
    assert fault.hits == 3
    assert fs.op_counts["write"] == 3 and fs.op_counts["create"] == 1
    assert fs.mutations == 4


def test_side_directory_is_private_and_outside(tmp_path: Path) -> None:
    d = str(tmp_path / "db")
    os.mkdir(d)
    fs = FaultInjectionFS()
    _write(fs, os.path.join(d, "f"), b"x")
    fs.remove(os.path.join(d, "f"))
    side = fs._side
    assert side is not None and not side.startswith(d)
    assert stat.S_IMODE(os.stat(side).st_mode) == 0o700
    fs.crash()
    assert not os.path.exists(side), "the side directory outlived the crash"
