"""Unit tests of the engine's pieces, below the public API: log framing, batches, the table
format, the filter, the caches, the manifest and the compaction dropping rules."""

from __future__ import annotations

import errno
import os
import random
from array import array

import pytest
import xxhash

from shaledb.engine import logfile
from shaledb.engine.batch import WriteBatch, decode_batch, encode_batch
from shaledb.engine.cache import LRUCache
from shaledb.engine.compaction import drop_obsolete
from shaledb.engine.dbformat import DELETE, PUT
from shaledb.engine.manifest import Version, VersionEdit, VersionSet
from shaledb.engine.memtable import MemTable
from shaledb.engine.sstable import FileMeta, TableBuilder, TableReader
from shaledb.engine.sstable.filter import KeyFilter, build_filter
from shaledb.engine.vfs import PosixFileSystem as FileSystem
from shaledb.errors import CorruptionError, InvalidArgument


# -- log framing ------------------------------------------------------------------------------
def _log(payloads: list[bytes], salt: bytes = b"12345678", sync_after: int = -1) -> bytes:
    out = [logfile.encode_file_header(9, salt)]
    size = len(out[0])
    for i, p in enumerate(payloads):
        out.append(logfile.encode_record_v2(p, salt, size if i > sync_after else 0))
        if i == sync_after:
            size = sum(map(len, out))
    return b"".join(out)


def test_log_roundtrip_and_torn_tail_vs_corruption() -> None:
    payloads = [b"", b"a", b"hello" * 100, bytes(range(256))]
    data = _log(payloads)
    scan = logfile.scan_log(data)
    assert scan.records == payloads and scan.damage is None and scan.number == 9

    # Every truncation point is a tear no later record vouches for: the complete records
    # before it survive.
    for cut in range(logfile.FILE_HEADER_SIZE, len(data)):
        r = logfile.scan_log(data[:cut])
        assert payloads[: len(r.records)] == r.records
        assert r.damage is None or not r.damage.vouched

    # A flipped byte in the first record, with records after it that say it was synced
    # (written after an fsync covered it), is damage to durable data.
    synced = _log(payloads, sync_after=0)
    bad = bytearray(synced)
    bad[logfile.FILE_HEADER_SIZE + logfile.HEADER_SIZE - 1] ^= 0x01  # record 0's crc
    r = logfile.scan_log(bytes(bad))
    assert r.records == [] and r.damage is not None and r.damage.vouched
    assert r.damage.resumes_at is not None
    # Without that claim (nothing was synced), the same damage is an unsynced tear.
    bad = bytearray(data)
    bad[logfile.FILE_HEADER_SIZE + logfile.HEADER_SIZE - 1] ^= 0x01
    r = logfile.scan_log(bytes(bad))
    assert r.damage is not None and not r.damage.vouched


def test_log_records_need_the_salt() -> None:
    """A record framed with another salt (bytes a client wrote inside a value) is never taken
    for one of the log's records, even right after damage."""
    fake = logfile.encode_record_v2(b"evil", b"otherslt", 10**9)
    data = _log([b"x" * 50 + fake + b"y" * 50])
    r = logfile.scan_log(data[:-20])  # torn inside the value, after the fake record
    assert r.records == [] and r.damage is not None
    assert r.damage.resumes_at is None and not r.damage.vouched


def test_log_zero_filled_tail_is_the_end() -> None:
    data = _log([b"abc"]) + b"\0" * 4096
    r = logfile.scan_log(data)
    assert r.records == [b"abc"] and r.damage is None


def test_legacy_log_format_is_read() -> None:
    data = b"".join(logfile.encode_record(p) for p in (b"a", b"bc"))
    r = logfile.scan_log(data + b"\0" * 100)
    assert r.version == 1 and r.records == [b"a", b"bc"] and r.damage is None


# -- batches ----------------------------------------------------------------------------------
def test_batch_encoding_roundtrip() -> None:
    b = WriteBatch()
    b.put(b"k", b"v")
    b.delete("s")
    b.put(bytearray(b"x"), memoryview(b"y"))
    first, ops = decode_batch(encode_batch(42, b._ops))
    assert first == 42
    assert ops == [PUT, b"k", 0, b"v", DELETE, b"s", 0, b"", PUT, b"x", 0, b"y"]
    with pytest.raises(CorruptionError):
        decode_batch(encode_batch(1, b._ops)[:-3])
    with pytest.raises(TypeError):
        b.put(1, b"v")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        b.put(b"k", b"v", ttl=-1)


# -- memtable ---------------------------------------------------------------------------------
def test_memtable_versions_and_scan() -> None:
    m = MemTable()
    m.apply(1, [PUT, b"b", 0, b"1", PUT, b"a", 0, b"2", PUT, b"b", 0, b"3", DELETE, b"c", 0, b""])
    assert m.get(b"b", 3) == (3, PUT, 0, b"3")
    assert m.get(b"b", 2) == (1, PUT, 0, b"1")
    assert m.get(b"a", 1) is None
    chunk = m.scan_chunk(None, True, None, False, False, 4, 10)
    assert [(e[0], -e[1]) for e in chunk] == [(b"a", 2), (b"b", 3), (b"c", 4)]
    chunk = m.scan_chunk(None, True, b"c", False, True, 2, 10)
    assert [(e[0], -e[1]) for e in chunk] == [(b"b", 1), (b"a", 2)]
    m.frozen = True
    assert [(e[0], -e[1]) for e in m.iter_all()] == [(b"a", 2), (b"b", 3), (b"b", 1), (b"c", 4)]


# -- tables -----------------------------------------------------------------------------------
def _build(tmp_path, entries, **kw):
    fs = FileSystem()
    path = str(tmp_path / "000007.sst")
    b = TableBuilder(fs, path, 7, block_size=kw.get("block_size", 256),
                     compression=kw.get("compression", "lz4"))
    for e in entries:
        b.add(*e)
    meta = b.finish()
    return fs, path, meta


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_table_roundtrip(tmp_path, compression) -> None:
    rnd = random.Random(5)
    keys = sorted({rnd.randbytes(rnd.randint(0, 12)) for _ in range(2000)})
    entries = []
    seq = 10_000
    for k in keys:
        for _ in range(rnd.choice((1, 1, 1, 3))):  # some keys have several versions
            entries.append((k, seq, PUT, 0, rnd.randbytes(rnd.randint(0, 40))))
            seq -= 1
    # table order: key ascending, seq descending within a key
    entries.sort(key=lambda e: (e[0], -e[1]))
    fs, path, meta = _build(tmp_path, entries, compression=compression)
    assert meta.entries == len(entries)
    assert meta.smallest == keys[0] and meta.largest == keys[-1]
    r = TableReader(fs, path, 7, LRUCache(1 << 20))
    got = [(k, -ns, kind, exp, v) for k, ns, kind, exp, v in r.iter_range(None, None)]
    assert got == entries
    rev = [(k, -ns, kind, exp, v) for k, ns, kind, exp, v in r.iter_range(None, None, True)]
    assert rev == entries[::-1]
    # Point reads: newest version <= seq.
    newest = {}
    for e in entries:
        newest.setdefault(e[0], e)
    for k, e in list(newest.items())[:300]:
        assert r.get(k, 1 << 62) == (e[1], e[2], e[3], e[4])
    assert r.get(b"\xff" * 20, 1 << 62) is None
    # Bounded ranges agree with slicing the entry list.
    for _ in range(50):
        lo, hi = sorted(rnd.sample(keys, 2))
        want = [e for e in entries if lo <= e[0] < hi]
        assert [(k, -ns, kd, x, v) for k, ns, kd, x, v in r.iter_range(lo, hi)] == want
    r.close()


def test_table_versions_of_a_key_share_a_block(tmp_path) -> None:
    entries = [(b"k", 100 - i, PUT, 0, b"x" * 100) for i in range(50)] + [(b"l", 1, PUT, 0, b"y")]
    fs, path, _ = _build(tmp_path, entries, block_size=256)
    r = TableReader(fs, path, 7, None)
    assert r.nblocks == 2  # 50 versions of b"k" never split across blocks
    assert r.get(b"k", 60) == (60, PUT, 0, b"x" * 100)


def test_table_detects_every_flipped_byte_in_footer(tmp_path) -> None:
    fs, path, meta = _build(tmp_path, [(b"a", 1, PUT, 0, b"1")])
    with open(path, "rb") as f:
        raw = f.read()
    for i in range(len(raw) - 64, len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x10
        with open(path, "wb") as f:
            f.write(bad)
        with pytest.raises(CorruptionError):
            TableReader(fs, path, 7, None)


# -- filter -----------------------------------------------------------------------------------
def test_filter_has_no_false_negatives_and_few_false_positives() -> None:
    rnd = random.Random(1)
    keys = [rnd.randbytes(16) for _ in range(50_000)]
    f = KeyFilter(build_filter(keys))
    assert all(f.may_contain(k) for k in keys)
    assert f.nbytes < 2.2 * len(keys)  # ~2.1 bytes per key
    others = [rnd.randbytes(16) for _ in range(50_000)]
    fp = sum(f.may_contain(k) for k in others)
    assert fp < 60  # ~24 keys per bucket / 65536 remainders: ~18 expected
    # Format 1 (one sorted array of 32-bit hashes) is still read.
    v1 = array("I", sorted({xxhash.xxh32_intdigest(k) for k in keys}))
    f1 = KeyFilter(v1.tobytes(), version=1)
    assert all(f1.may_contain(k) for k in keys)
    assert sum(f1.may_contain(k) for k in others) < 10
    # Every size, including the empty filter and a single key.
    for n in (0, 1, 2, 33, 1000, 70_000):
        ks = keys[:n]
        g = KeyFilter(build_filter(ks))
        assert all(g.may_contain(k) for k in ks)
        assert sum(map(g.may_contain, others[:20_000])) < 30  # ~0.05%: ~10 expected
    with pytest.raises(CorruptionError):
        KeyFilter(build_filter(keys[:100])[:-2])


# -- cache ------------------------------------------------------------------------------------
def test_lru_cache_bounded_by_charge() -> None:
    c: LRUCache[int, str] = LRUCache(100)
    for i in range(20):
        c.put(i, str(i), 10)
        assert c.usage <= 100
    assert len(c) == 10 and c.get(0) is None and c.get(19) == "19"
    c.get(10)  # now most recent: survives the next eviction
    c.put(99, "x", 10)
    assert c.get(10) == "10" and c.get(11) is None
    assert c.put(5, "huge", 1000) == [] and c.get(5) is None  # larger than capacity: skipped


# -- manifest ---------------------------------------------------------------------------------
def _meta(n: int, lo: bytes, hi: bytes) -> FileMeta:
    return FileMeta(n, 100, lo, hi, 1, 2, 3)


def test_version_candidates_and_apply() -> None:
    v = Version([[], [], []]).apply(VersionEdit(added=[
        (0, _meta(9, b"a", b"z")), (0, _meta(10, b"m", b"n")),
        (1, _meta(3, b"a", b"c")), (1, _meta(4, b"d", b"f")), (2, _meta(5, b"a", b"z"))]))
    assert [f.number for f in v.levels[0]] == [10, 9]  # newest first
    assert [f.number for f in v.candidates(b"e")] == [9, 4, 5]
    assert [f.number for f in v.candidates(b"m")] == [10, 9, 5]
    v2 = v.apply(VersionEdit(deleted=[(1, 3)]))
    assert [f.number for f in v2.levels[1]] == [4]


@pytest.mark.parametrize("max_size", [8 << 20, 1], ids=["append", "rollover"])
def test_manifest_roundtrip(tmp_path, max_size: int) -> None:
    fs = FileSystem()
    vs = VersionSet(fs, str(tmp_path), 4, max_size)
    vs.write_new_manifest()
    for edit in (VersionEdit(log_number=7, last_seq=55, added=[(1, _meta(3, b"a", b"b"))],
                             compact_pointers=[(1, b"a")]),
                 VersionEdit(added=[(2, _meta(4, b"c", b"d"))], deleted=[(1, 3)])):
        new = vs.log_and_apply(edit)
        # Nothing is published before install (the engine installs under its mutex).
        assert vs.current is not new
        vs.install(new, edit)
    vs.close()
    manifests = [n for n in os.listdir(tmp_path) if n.startswith("MANIFEST-")]
    assert len(manifests) == 1, manifests
    again = VersionSet(fs, str(tmp_path), 4)
    again.recover()
    assert again.log_number == 7 and again.last_seq == 55
    assert again.compact_pointers == {1: b"a"}
    assert [(lvl, f.number) for lvl, f in again.current.files()] == [(2, 4)]
    assert again.next_file > 4


# -- compaction rules -------------------------------------------------------------------------
def _e(key: bytes, seq: int, kind: int = PUT, exp: int = 0, v: bytes = b"v"):
    return (key, -seq, kind, exp, v if kind == PUT else b"")


def test_drop_obsolete_rules() -> None:
    entries = [
        _e(b"a", 9), _e(b"a", 5), _e(b"a", 2),     # a@5 and a@2 shadowed if snapshot >= 9
        _e(b"b", 8, DELETE), _e(b"b", 3),          # tombstone over an older value
        _e(b"c", 7, exp=1000),                     # expired at now=2000
        _e(b"d", 20), _e(b"d", 6),                 # d@20 newer than the snapshot
    ]
    out = list(drop_obsolete(iter(entries), 10, 2000, drop_tombstones=False))
    assert [(k, -s, kind) for k, s, kind, _, _ in out] == [
        (b"a", 9, PUT), (b"b", 8, DELETE), (b"c", 7, DELETE), (b"d", 20, PUT), (b"d", 6, PUT)]
    out = list(drop_obsolete(iter(entries), 10, 2000, drop_tombstones=True))
    assert [(k, -s) for k, s, *_ in out] == [(b"a", 9), (b"d", 20), (b"d", 6)]
    # A snapshot at 4 keeps what it can see: a@2, b@3.
    out = list(drop_obsolete(iter(entries), 4, 0, drop_tombstones=True))
    assert (b"a", -2) in [(k, s) for k, s, *_ in out]
    assert (b"b", -3) in [(k, s) for k, s, *_ in out]


# -- memory-mapped append files (the WAL) ------------------------------------------------------
def test_mapped_file_grows_in_chunks_and_close_cuts_the_zero_tail(tmp_path) -> None:
    from shaledb.engine.vfs import MAP_CHUNK
    from shaledb.errors import StorageError

    fs = FileSystem()
    path = str(tmp_path / "m.log")
    f = fs.create_mapped(path)
    chunks = [os.urandom(n) for n in (1, 1000, MAP_CHUNK, 3 * MAP_CHUNK + 7, 10)]
    for c in chunks:
        f.append(c)
    want = b"".join(chunks)
    assert f.size == len(want)
    # Before close the file holds every byte (the page cache is shared) plus a zero tail.
    on_disk = (tmp_path / "m.log").read_bytes()
    assert on_disk[: len(want)] == want and not on_disk[len(want):].strip(b"\0")
    assert len(on_disk) % MAP_CHUNK == 0
    f.sync()
    f.close()
    f.close()  # idempotent
    assert (tmp_path / "m.log").read_bytes() == want
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(StorageError) as exc:  # numbered files are never reused
        fs.create_mapped(path)
    assert exc.value.errno == errno.EEXIST


def test_mapped_file_fault_injection_and_crash(tmp_path) -> None:
    from shaledb.errors import StorageError
    from shaledb.testing import FaultInjectionFS

    fs = FaultInjectionFS()
    path = str(tmp_path / "m.log")
    f = fs.create_mapped(path)
    fs.sync_dir(str(tmp_path))
    f.append(b"a" * 100)
    f.sync()
    fs.inject("write", path=".log", errno=errno.ENOSPC)
    with pytest.raises(StorageError) as exc:
        f.append(b"b" * 100)
    assert exc.value.errno == errno.ENOSPC and f.size == 100
    fs.inject("write", path=".log", torn=True)
    with pytest.raises(StorageError):
        f.append(b"c" * 100)
    f.append(b"d" * 50)  # unsynced: lost (or a prefix kept) on power loss
    fs.crash()
    f.close()  # after the crash, close leaves the file as the crash left it
    assert (tmp_path / "m.log").read_bytes() == b"a" * 100


def test_lru_cache_pinned_bytes_share_the_budget() -> None:
    c: LRUCache[int, str] = LRUCache(100)
    for i in range(10):
        c.put(i, str(i), 10)
    assert c.usage == 100
    c.pin(35)  # table metadata arrives: blocks make room for it
    assert c.usage + c.pinned <= 100 and c.usage == 60 and c.get(0) is None
    assert c.put(99, "big", 70) == []  # larger than what pinned bytes leave: not cached
    assert c.get(99) is None
    c.pin(-35)
    c.put(50, "x", 40)
    assert c.usage == 100 and c.pinned == 0


# -- compaction write rate limiter -----------------------------------------------------------
def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    from shaledb.engine.ratelimit import RateLimiter

    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    lim = RateLimiter(1000, clock=lambda: now[0], sleep=sleep)
    lim.request(1000)  # the one-second burst
    assert slept == []
    lim.request(500)  # half a second of debt
    assert slept == [pytest.approx(0.5)]
    now[0] += 10.0  # idle time refills at most one burst
    lim.request(1000)
    lim.request(2000)
    assert slept[-1] == pytest.approx(2.0) and lim.waited == pytest.approx(2.5)
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_sync_write_is_vouched_even_when_the_background_sync_got_there_first(tmp_path) -> None:
    """A sync write's leader appends a sync mark after its fsync; when the periodic syncer
    made the record durable first (the leader's fsync is then a no-op), the mark is still
    appended, so a later bit flip in that record is seen as damage to synced data."""
    from shaledb.engine.wal import WriteAheadLog

    wal = WriteAheadLog(FileSystem(), str(tmp_path), 7)
    wal.append(b"record")
    wal.sync()  # the periodic syncer: no mark (it does not append)
    wal.sync(mark=True)  # the leader of the sync write
    size = wal.size
    wal.close()
    with open(tmp_path / "000007.log", "rb") as fh:
        data = fh.read()[:size]
    sal = logfile.salvage_log(data)
    assert [r[1] for r in sal.records] == [logfile.RECORD_FULL, logfile.RECORD_SYNC]
    bad = bytearray(data)
    bad[logfile.FILE_HEADER_SIZE + logfile.HEADER_SIZE + 2] ^= 1  # inside the record
    scan = logfile.scan_log(bytes(bad))
    assert scan.damage is not None and scan.damage.vouched


def test_only_canonical_ascii_file_names_are_database_files() -> None:
    """A name with Unicode digits or a non-canonical number is not a database file: the
    engine must never replay or delete it (review)."""
    from shaledb.engine.filenames import parse

    assert parse("000012.log") == ("log", 12)
    assert parse("1234567.sst") == ("sst", 1234567)
    assert parse("MANIFEST-000003") == ("manifest", 3)
    for name in ("\u0660\u0660\u0660\u0660\u0660\u0663.log", "0000012.log", "00012.sst",
                 "MANIFEST-0000003", "MANIFEST-\uff10\uff10\uff10\uff10\uff10\uff11"):
        assert parse(name) is None, name
