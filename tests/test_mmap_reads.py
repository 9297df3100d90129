"""Tables read through read-only memory maps (``Options.mmap_reads``, the default).

A map changes how bytes reach a table reader, not what is checked: damage is still named, a
read racing a close still gets ClosedError, injected faults still reach the engine, and
``mmap_reads=False`` really reads with ``pread``. Iterators ask for read-ahead themselves
(the map is MADV_RANDOM). The reason for the maps, readers beside a busy writer, is the
timing test at the end.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import shaledb
from _helpers import SstLayout, files, flip
from shaledb.engine.sstable.reader import _READAHEAD, TableReader
from shaledb.engine.vfs import PosixFileSystem, RandomAccessFile
from shaledb.testing import FaultInjectionFS

pytestmark = pytest.mark.timeout(120)


def _key(i: int) -> bytes:
    return b"k%08d" % i


def _value(i: int) -> bytes:
    return (b"v%08d" % i) * 12


def _random_value(i: int) -> bytes:
    """100 incompressible bytes (the same for the same ``i``)."""
    return hashlib.blake2b(b"%d" % i, digest_size=64).digest() + hashlib.blake2b(
        b"%d" % i, digest_size=36, person=b"v").digest()


def _table_db(path: str, n: int = 3000, value: Any = _value, **kw: Any) -> Any:
    """A database holding ``n`` keys in tables (flushed), open."""
    db = shaledb.open(path, **kw)
    for start in range(0, n, 500):
        with db.batch() as b:
            for i in range(start, min(n, start + 500)):
                b.put(_key(i), value(i))
    db.flush()
    return db


def _mapped_paths() -> set[str]:
    """Files this process has mapped (from /proc/self/maps)."""
    out = set()
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].strip().startswith("/"):
                out.add(parts[5].strip())
    return out


@pytest.mark.parametrize("mmap_reads", [True, False])
def test_tables_are_mapped_only_when_asked(tmp_path: Path, mmap_reads: bool) -> None:
    path = str(tmp_path / "db")
    db = _table_db(path, mmap_reads=mmap_reads, block_cache_size=0)
    try:
        assert db.get(_key(7)) == _value(7)
        tables = {os.path.realpath(p) for p in files(path, ".sst")}
        assert tables
        mapped = {os.path.realpath(p) for p in _mapped_paths()}
        assert (tables <= mapped) if mmap_reads else not (tables & mapped)
    finally:
        db.close()
    # Closing unmaps every table.
    assert not ({os.path.realpath(p) for p in files(path, ".sst")}
                & {os.path.realpath(p) for p in _mapped_paths()})


@pytest.mark.parametrize("mmap_reads", [True, False])
def test_a_byte_damaged_while_the_table_is_open_is_named(tmp_path: Path,
                                                         mmap_reads: bool) -> None:
    """The map shares the page cache with the file: a byte flipped on disk after the table
    was opened (and mapped) is read as flipped and fails its checksum."""
    path = str(tmp_path / "db")
    db = _table_db(path, n=3000, mmap_reads=mmap_reads, block_cache_size=0,
                   compression="none")
    try:
        expected = {_key(i): _value(i) for i in range(3000)}
        assert all(db.get(k) == v for k, v in expected.items())  # every table open now
        ssts = files(path, ".sst")
        assert len(ssts) == 1
        lay = SstLayout(ssts[0])
        assert len(lay.data_blocks) >= 3
        _last, off, size = lay.data_blocks[1]
        flip(ssts[0], off + size // 2, 0x04)
        bad = set(lay.block_keys(1, expected))
        assert bad
        for k in sorted(bad):
            with pytest.raises(shaledb.CorruptionError, match="block"):
                db.get(k)
        with pytest.raises(shaledb.CorruptionError):
            list(db.range())
        good = {k: v for k, v in expected.items() if k not in bad}
        assert all(db.get(k) == v for k, v in good.items())
    finally:
        db.close()


def test_a_read_racing_close_gets_closed_error(tmp_path: Path) -> None:
    """Readers on several threads while the database closes: every read returns the right
    value or raises ClosedError (never a crash, never another error)."""
    path = str(tmp_path / "db")
    n = 3000
    _table_db(path, n=n, block_cache_size=0).close()
    for _round in range(5):
        db = shaledb.open(path, block_cache_size=0)
        errors: list[BaseException] = []
        started = threading.Barrier(4)

        def reader(t: int, db: Any = db, started: threading.Barrier = started,
                   errors: list[BaseException] = errors) -> None:
            started.wait()
            i = t
            try:
                while True:
                    k = i % n
                    assert db.get(_key(k)) == _value(k)
                    i += 7
            except shaledb.ClosedError:
                return
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(t,)) for t in range(3)]
        for th in threads:
            th.start()
        started.wait()
        time.sleep(0.05)
        db.close()
        for th in threads:
            th.join(10)
        assert not errors, errors


def test_a_map_closed_under_a_reader_is_closed_error(tmp_path: Path) -> None:
    """The window the GIL leaves: a reader took the map, another thread closed it."""
    p = tmp_path / "f"
    p.write_bytes(b"x" * 10000)
    fs = PosixFileSystem()
    f = fs.open_read(str(p), mapped=True)
    assert f.map is not None and f.pread(4, 9998) == b"xx"
    m = f.map
    f.close()
    assert f.map is None
    with pytest.raises(shaledb.ClosedError):
        f.pread(4, 0)
    f.map = m  # as seen by a reader that loaded it before the close
    with pytest.raises(shaledb.ClosedError):
        fs._pread(f, -1, 4, 0)


def test_an_empty_file_is_read_without_a_map(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    f = PosixFileSystem().open_read(str(p), mapped=True)
    try:
        assert f.map is None and f.pread(10, 0) == b""
    finally:
        f.close()
    f.close()  # idempotent


def test_injected_read_errors_reach_reads_of_mapped_tables(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db = _table_db(path, fs=fs, block_cache_size=0)
    try:
        assert db.get(_key(1)) == _value(1)
        fs.inject("read", ".sst", errno.EIO, count=None)
        with pytest.raises(shaledb.StorageError) as info:
            db.get(_key(2))
        assert info.value.errno == errno.EIO
        fs.clear()
        assert db.get(_key(2)) == _value(2)
    finally:
        db.close()


class _Recorder:
    """A ReadFile that records read-ahead requests."""

    def __init__(self, f: RandomAccessFile) -> None:
        self.f = f
        self.path = f.path
        self.size = f.size
        self.windows: list[tuple[int, int]] = []

    def pread(self, length: int, offset: int) -> bytes:
        return self.f.pread(length, offset)

    def readahead(self, offset: int, length: int) -> None:
        self.windows.append((offset, length))
        self.f.readahead(offset, length)

    def close(self) -> None:
        self.f.close()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("how", ["iter_range", "iter_chunks"])
def test_iterators_read_ahead_over_every_block_they_read(tmp_path: Path, reverse: bool,
                                                         how: str) -> None:
    """The map gets no read-ahead from the kernel (MADV_RANDOM), so an iterator asks for
    it: windows of at most _READAHEAD bytes that together cover every block after the
    first it reads, each asked for before the block is read."""
    path = str(tmp_path / "db")
    _table_db(path, n=40000, block_cache_size=0, compression="none").close()
    sst = max(files(path, ".sst"), key=os.path.getsize)
    number = int(os.path.basename(sst).split(".")[0])
    r = TableReader(PosixFileSystem(), sst, number, None, None, mapped=True)
    rec = _Recorder(r._file)  # type: ignore[arg-type]
    r._file = rec
    try:
        blocks = [(int(r._offsets[i]), int(r._sizes[i])) for i in range(r.nblocks)]
        assert len(blocks) > 40  # several windows
        if how == "iter_range":
            n = sum(1 for _ in r.iter_range(None, None, reverse))
        else:
            n = sum(len(c) for c in r.iter_chunks(None, None, reverse))
        assert n == r.properties["entries"]
        assert rec.windows
        covered = set()
        for off, length in rec.windows:
            assert length <= _READAHEAD + max(s for _o, s in blocks) + 64
            for i, (o, s) in enumerate(blocks):
                if off <= o and o + s <= off + length:
                    covered.add(i)
        read_first = len(blocks) - 1 if reverse else 0
        assert covered >= set(range(len(blocks))) - {read_first}
        assert len(rec.windows) <= 2 * (sum(s for _o, s in blocks) // _READAHEAD + 1)
    finally:
        r.close()


def test_mmap_reads_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(shaledb.InvalidArgument, match="mmap_reads"):
        shaledb.open(str(tmp_path / "db"), mmap_reads=1)


def _readers_beside_a_writer(path: str, mmap_reads: bool, seconds: float) -> float:
    """Gets per second of two reader threads while one thread writes as fast as it can."""
    db = shaledb.open(path, mmap_reads=mmap_reads, block_cache_size=1 << 20)
    stop = threading.Event()
    counts = [0, 0]
    n = 60000

    def reader(t: int) -> None:
        i = t * 7919
        c = 0
        while not stop.is_set():
            k = (i * 2654435761) % n
            assert db.get(_key(k)) == _random_value(k)
            i += 1
            c += 1
        counts[t] = c

    def writer() -> None:
        i = 0
        while not stop.is_set():
            db.put(b"w%09d" % i, b"x" * 100)
            i += 1

    threads = [threading.Thread(target=reader, args=(t,)) for t in range(2)]
    threads.append(threading.Thread(target=writer))
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    db.close()
    return sum(counts) / seconds


@pytest.mark.timing
@pytest.mark.timeout(300)
def test_readers_beside_a_busy_writer_are_faster_through_maps(tmp_path: Path) -> None:
    """Each ``pread`` gives the GIL up, and getting it back from a thread running Python
    code takes a switch interval (5 ms): readers that miss the block cache beside a busy
    writer mostly wait. Through the map they keep the GIL. Incompressible values: LZ4's
    decompress gives the GIL up as well (docs/design.md). Measured alternately, best of
    three each (the machine is shared)."""
    path = str(tmp_path / "db")
    _table_db(path, n=60000, value=_random_value).close()
    mapped, pread = [], []
    for _ in range(3):
        pread.append(_readers_beside_a_writer(path, False, 1.5))
        mapped.append(_readers_beside_a_writer(path, True, 1.5))
    assert max(mapped) >= 1.5 * max(pread), (mapped, pread)
