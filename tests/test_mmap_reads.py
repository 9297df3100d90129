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
import mmap
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import shaledb
from _helpers import SstLayout, files, flip
from shaledb.engine.sstable.reader import _READAHEAD, _READAHEAD_START, TableReader
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
    """The fault seam still covers reads of mapped tables (as the StorageError pread would
    raise; a real EIO on a mapped page is a SIGBUS, docs/design.md)."""
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


def _recorded_table(tmp_path: Path) -> tuple[TableReader, _Recorder]:
    """The biggest table of a 40k-key database, mapped, its read-ahead requests recorded."""
    path = str(tmp_path / "db")
    _table_db(path, n=40000, block_cache_size=0, compression="none").close()
    sst = max(files(path, ".sst"), key=os.path.getsize)
    number = int(os.path.basename(sst).split(".")[0])
    r = TableReader(PosixFileSystem(), sst, number, None, None, mapped=True)
    rec = _Recorder(r._file)  # type: ignore[arg-type]
    r._file = rec
    return r, rec


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("how", ["iter_range", "iter_chunks"])
def test_iterators_read_ahead_over_every_block_they_read(tmp_path: Path, reverse: bool,
                                                         how: str) -> None:
    """The map gets no read-ahead from the kernel (MADV_RANDOM), so an iterator asks for
    it: from its third block on (a seek reads one or two), in windows growing from
    _READAHEAD_START to _READAHEAD bytes that together cover every later block."""
    r, rec = _recorded_table(tmp_path)
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
        # Every block from the third read on, in windows that grow to _READAHEAD.
        read_first = {len(blocks) - 1, len(blocks) - 2} if reverse else {0, 1}
        assert covered >= set(range(len(blocks))) - read_first
        assert not covered & read_first
        assert rec.windows[0][1] <= _READAHEAD_START + max(s for _o, s in blocks) + 64
        assert len(rec.windows) <= sum(s for _o, s in blocks) // _READAHEAD + 6
    finally:
        r.close()


@pytest.mark.parametrize("reverse", [False, True])
def test_a_short_range_asks_for_no_read_ahead(tmp_path: Path, reverse: bool) -> None:
    """A seek and a few next calls (here up to two blocks' worth of entries) must not make
    the kernel read hundreds of KiB: on data larger than RAM that evicts what is cached."""
    r, rec = _recorded_table(tmp_path)
    try:
        per_block = r.properties["entries"] // r.nblocks
        for start in range(0, 40000, 997):
            lo = None if reverse else _key(start)
            hi = _key(start) if reverse else None
            it = r.iter_range(lo, hi, reverse)
            for _ in range(per_block):  # at most two blocks
                if next(it, None) is None:
                    break
            it.close()
        assert rec.windows == []
    finally:
        r.close()


def test_read_ahead_outside_the_file_is_ignored(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 10000)
    f = PosixFileSystem().open_read(str(p), mapped=True)
    try:
        for offset, length in ((2**63, 10), (10000, 10), (-5, 10), (0, 2**63), (5, -1)):
            f.readahead(offset, length)  # a hint: never raises
        assert f.pread(3, 2**40) == b""
    finally:
        f.close()


class _CountingMap:
    """A map that records the MADV_WILLNEED requests made of it."""

    def __init__(self, m: Any) -> None:
        self.m = m
        self.asked: list[tuple[int, int]] = []

    def madvise(self, option: int, start: int = 0, length: int = 0) -> None:
        self.asked.append((start, length))
        self.m.madvise(option, start, length)

    def __getitem__(self, s: slice) -> bytes:
        return bytes(self.m[s])

    def close(self) -> None:
        self.m.close()


def test_a_range_is_asked_for_once(tmp_path: Path) -> None:
    """MADV_WILLNEED is a system call costing twice the copy of a warm 16 KiB block
    (gets and seeks were 10-15% slower for it): a range whose pages were all asked for
    before (by a read or a read-ahead) is copied without it; any page not asked for yet
    makes the read ask again."""
    page = mmap.PAGESIZE
    p = tmp_path / "f"
    data = os.urandom(10 * page + 100)
    p.write_bytes(data)
    f = PosixFileSystem().open_read(str(p), mapped=True)
    cm = _CountingMap(f.map)
    f.map = cm  # type: ignore[assignment]
    try:
        assert f.pread(page + 100, 100) == data[100:page + 200]
        assert cm.asked == [(0, page + 200)]
        assert f.pread(page + 100, 100) == data[100:page + 200]
        assert f.pread(100, page + 7) == data[page + 7:page + 107]
        assert len(cm.asked) == 1  # pages 0 and 1 were asked for
        assert f.pread(10, 3 * page + 1) == data[3 * page + 1:3 * page + 11]
        assert cm.asked[-1] == (3 * page, 11)
        # Pages 1 and 3 were asked for, page 2 was not: the read asks for all three.
        assert f.pread(2 * page, page + 10) == data[page + 10:3 * page + 10]
        assert cm.asked[-1] == (page, 2 * page + 10)
        n = len(cm.asked)
        f.readahead(5 * page, 3 * page)
        assert cm.asked[-1] == (5 * page, 3 * page)
        assert f.pread(3 * page, 5 * page) == data[5 * page:8 * page]
        assert len(cm.asked) == n + 1  # read ahead before
        f.readahead(5 * page, 3 * page)  # read-ahead always asks
        assert len(cm.asked) == n + 2
        # The last page, cut at the end of the file.
        assert f.pread(500, 10 * page) == data[10 * page:]
        assert cm.asked[-1] == (10 * page, 100)
        assert f.pread(500, 10 * page) == data[10 * page:]
        assert len(cm.asked) == n + 3
    finally:
        f.close()


def _drop_from_page_cache(path: str) -> None:
    for name in os.listdir(path):
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_BIG = (b"%01000d" % 7)[:1000]


def _big_values_db(path: str) -> bytes:
    """A closed, compacted database of 20,000 keys of 1 KB (uncompressed): about four
    pages a block. Returns the value every key holds."""
    db = shaledb.open(path, block_cache_size=0, compression="none")
    for start in range(0, 20000, 500):
        with db.batch() as b:
            for i in range(start, start + 500):
                b.put(_key(i), _BIG)
    db.compact_range()
    db.close()
    return _BIG


def test_a_cold_block_is_one_read_request_not_one_per_page(tmp_path: Path) -> None:
    """MADV_RANDOM alone faults a 16 KiB block in page by page (4 serial reads, each a
    major fault: cold gets were 2.6-5x slower than pread); each read asks for its whole
    range first, so the copy finds the pages in the page cache (minor faults)."""
    path = str(tmp_path / "db")
    big = _big_values_db(path)
    _drop_from_page_cache(path)
    db = shaledb.open(path, block_cache_size=0)
    try:
        rng = __import__("random").Random(5)
        keys = [_key(rng.randrange(20000)) for _ in range(300)]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
        for k in keys:
            assert db.get(k) == big
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - before
    finally:
        db.close()
    # Without the request: ~3.6 major faults a get; with it ~0 (the index and filter were
    # read at open; a page of the block may still fault if its read is not done yet).
    assert faults <= 0.5 * len(keys), faults


def test_blocks_evicted_while_open_are_asked_for_again(tmp_path: Path) -> None:
    """Pages asked for once and evicted later (memory pressure, data larger than RAM) must
    not be faulted in page by page from then on: a copy that faulted forgets what its file
    asked for, so the next reads ask again (before: 4.4 major faults a get after eviction,
    3.3x slower gets, 7-11x slower scans; found by review)."""
    path = str(tmp_path / "db")
    big = _big_values_db(path)
    db = shaledb.open(path, block_cache_size=0)
    try:
        rng = __import__("random").Random(5)
        keys = [_key(rng.randrange(20000)) for _ in range(300)]
        for k in keys:  # every block read once: its pages are asked for
            assert db.get(k) == big
        maps = [o.map for o in __import__("gc").get_objects()
                if isinstance(o, RandomAccessFile) and o.map is not None]
        assert maps
        for m in maps:  # what reclaim does to clean mapped pages
            m.madvise(mmap.MADV_DONTNEED)
        _drop_from_page_cache(path)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
        for k in keys:
            assert db.get(k) == big
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - before
        n = sum(1 for _ in db.range())  # and a scan after another eviction
        assert n == 20000
        for m in maps:
            m.madvise(mmap.MADV_DONTNEED)
        _drop_from_page_cache(path)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
        assert sum(1 for _ in db.range()) == 20000
        scan_faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - before
    finally:
        db.close()
    assert faults <= 0.5 * len(keys), faults
    assert scan_faults <= 200, scan_faults  # ~5,000 pages: page by page was 5,017


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
    code takes a switch interval: readers that miss the block cache beside a busy writer
    mostly wait. Through the map they keep the GIL. The switch interval is raised from
    5 ms to 50 ms here, which multiplies what each release costs and leaves the fair
    rotation of busy threads alone, so the comparison holds on a loaded machine (compiled:
    17-21x, pure: 3-16x; 1.3-10x at 5 ms). Incompressible values: LZ4's decompress gives
    the GIL up as well (docs/design.md). Alternating runs, best of three each."""
    path = str(tmp_path / "db")
    _table_db(path, n=60000, value=_random_value).close()
    mapped, pread = [], []
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    try:
        for _ in range(3):
            pread.append(_readers_beside_a_writer(path, False, 1.5))
            mapped.append(_readers_beside_a_writer(path, True, 1.5))
    finally:
        sys.setswitchinterval(old)
    assert max(mapped) >= 2 * max(pread), (mapped, pread)
