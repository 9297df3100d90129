"""The data block format (version 2) against a model, reading files written by the previous
format versions, the refusal of the short-lived packed filter of table format 2 and of newer
log formats. (The golden files of the current format and of database format 2:
tests/test_format_golden.py; the document against the engine: tests/test_format_reader.py.)

tests/data/format_v1 was written by ShaleDB 0.1.0 (table format 1) with the options in its
OPTIONS file and a clock fixed at 1,000,000 s: three passes put keys k00000..k01999 (value
``b"v%05d-" % i + bytes([i % 251]) * (i % 300)``, a 100 s TTL when i % 11 == 0), each pass
flushed; then compact_range(); then every 7th key deleted, ``big`` put
(``bytes(range(256)) * 300``), and a flush.
"""

from __future__ import annotations

import shutil
from array import array
from pathlib import Path

import crc32c
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

import shaledb
from conftest import pure_only
from shaledb.engine.logfile import ENCRYPTED_LOG_VERSION
from shaledb.engine.optionsfile import DB_FORMAT_VERSION, decode_options
from shaledb.engine.sstable import TableBuilder, TableReader
from shaledb.engine.sstable import builder as builder_module
from shaledb.engine.sstable.block import ColumnBlock, RawBlock, encode_columns, encode_data_block
from shaledb.engine.sstable.filter import KeyFilter
from shaledb.engine.vfs import PosixFileSystem as FileSystem
from shaledb.errors import CorruptionError, IncompatibleFormatError

V1_DIR = Path(__file__).parent / "data" / "format_v1"
V1_NOW = 1_000_000.0  # the clock the v1 fixture was written with


_sizes = st.one_of(st.integers(0, 40), st.integers(250, 260), st.integers(65530, 65540))


@st.composite
def _blocks(draw: st.DrawFn) -> list[tuple[bytes, int, int, int, bytes]]:
    keys = sorted(set(draw(st.lists(st.binary(min_size=0, max_size=300), max_size=40))))
    out = []
    for key in keys:
        nver = draw(st.integers(1, 3))
        seqs = sorted(set(draw(st.lists(
            st.one_of(st.integers(0, 1000), st.integers(2**32 - 2, 2**32 + 2),
                      st.integers(0, 2**56)), min_size=nver, max_size=nver))), reverse=True)
        for s in seqs:
            size = draw(_sizes)
            value = bytes([draw(st.integers(0, 255))]) * size
            out.append((key, s, draw(st.integers(0, 1)),
                        draw(st.one_of(st.just(0), st.integers(1, 2**63))), value))
    return out


def _reference_get(entries: list[tuple[bytes, int, int, int, bytes]], key: bytes,
                   seq: int) -> tuple[int, int, int, bytes] | None:
    for k, s, kind, exp, v in entries:
        if k == key and s <= seq:
            return s, kind, exp, v
    return None


@settings(max_examples=60, deadline=None)
@given(_blocks(), st.lists(st.binary(max_size=300), max_size=8), st.integers(0, 2**57))
def test_raw_block_matches_column_block(entries, probes, seq) -> None:
    cols = [list(c) for c in zip(*entries, strict=True)] if entries else [[], [], [], [], []]
    raw = RawBlock(encode_data_block(*cols), "t")
    v1 = ColumnBlock(encode_columns(cols), "t")
    n = len(entries)
    assert raw.n == v1.n == n
    for key in probes + [e[0] for e in entries[:5]]:
        assert raw.lower_bound(key) == v1.lower_bound(key)
        assert raw.get(key, seq) == v1.get(key, seq) == _reference_get(entries, key, seq)
        assert raw.latest_seq(key) == v1.latest_seq(key)
    for a in range(0, n + 1, max(1, n // 4)):
        for e in range(a, n + 1, max(1, n // 3)):
            got = [list(c) for c in raw.columns(a, e)]
            want = [list(c) for c in v1.columns(a, e)]
            assert got == want == [list(c[a:e]) for c in cols]


def test_raw_block_offsets_widen_for_large_blocks() -> None:
    keys = [b"a", b"b", b"c"]
    values = [b"x" * 70000, b"", b"y" * 300]
    block = RawBlock(encode_data_block(keys, [5, 4, 2**40], [1, 0, 1], [0, 0, 7], values), "t")
    assert block.get(b"a", 10) == (5, 1, 0, values[0])
    assert block.get(b"b", 10) == (4, 0, 0, b"")
    assert block.get(b"c", 2**41) == (2**40, 1, 7, values[2])
    assert block.get(b"c", 10) is None
    assert block.get(b"bb", 10) is None


def _copy_v1(tmp_path: Path) -> Path:
    path = tmp_path / "db"
    shutil.copytree(V1_DIR, path)
    path.chmod(0o700)
    for f in path.iterdir():
        f.chmod(0o600)
    return path


def _expected_v1() -> dict[bytes, bytes]:
    """The state the fixture's writer left (the module docstring says how)."""
    want = {}
    for i in range(2000):
        want[b"k%05d" % i] = b"v%05d-" % i + bytes([i % 251]) * (i % 300)
    for i in range(0, 2000, 7):
        del want[b"k%05d" % i]
    want[b"big"] = bytes(range(256)) * 300
    return want


def _table_versions(path: Path) -> set[int]:
    fs = FileSystem()
    versions = set()
    for f in sorted(path.glob("*.sst")):
        r = TableReader(fs, str(f), int(f.stem), None)
        versions.add(r.format_version)
        r.close()
    return versions


def test_reads_a_format_v1_database_and_upgrades_it(tmp_path) -> None:
    path = _copy_v1(tmp_path)
    assert _table_versions(path) == {1}
    want = _expected_v1()
    clock = [V1_NOW]
    db = shaledb.open(path, clock=lambda: clock[0])
    try:
        assert dict(db.range()) == want
        for i in range(0, 2000, 11):
            if i % 7:
                assert db.ttl(b"k%05d" % i) == pytest.approx(100.0)
        assert db.get(b"k00007") is None and db.get(b"k00001") == want[b"k00001"]
        assert list(db.range(b"k01990", reverse=True, limit=3)) == [
            (k, want[k]) for k in (b"k01999", b"k01998", b"k01997")]
        db.put(b"k00007", b"new")
        want[b"k00007"] = b"new"
        db.compact_range()  # rewrites every table in the current format
    finally:
        db.close()
    assert _table_versions(path) == {2}
    assert decode_options((path / "OPTIONS").read_bytes(), str(path))["format_version"] == (
        DB_FORMAT_VERSION)
    clock[0] += 101.0  # the TTL'd keys of the fixture have expired by now
    for i in range(0, 2000, 11):
        want.pop(b"k%05d" % i, None)
    with shaledb.open(path, clock=lambda: clock[0]) as db:
        assert dict(db.range()) == want


# -- the short-lived packed filter of table format 2 (docs/format.md, "Tables written between
# two commits") --------------------------------------------------------------------------------

def _packed_filter(keys) -> bytes:
    """The filter block of commit 14e7eca: sorted distinct xxh32 hashes as packed uint32."""
    return array("I", sorted(set(map(xxhash.xxh32_intdigest, keys)))).tobytes()


@settings(max_examples=40, deadline=None)
@given(st.sets(st.binary(max_size=12), min_size=1, max_size=300))
def test_a_packed_filter_never_passes_for_a_bucketed_one(keys) -> None:
    """Its length is even, a bucketed filter's odd: the reader refuses every such block (a
    one-key one is shorter than the bucketed header)."""
    with pytest.raises(CorruptionError, match="malformed filter block|filter block too short"):
        KeyFilter(_packed_filter(keys), 2, "t")


@pure_only
def test_a_table_with_the_packed_filter_is_refused(tmp_path, monkeypatch) -> None:
    """A table written between commits 14e7eca and 8197b5e (footer version 2, packed filter)
    raises CorruptionError, as a table and through the database: never a wrong answer."""
    monkeypatch.setattr(builder_module, "build_filter", _packed_filter)
    fs = FileSystem()
    b = TableBuilder(fs, str(tmp_path / "000007.sst"), 7, block_size=1024, compression="lz4")
    for i in range(1000):
        b.add(b"k%05d" % i, i + 1, 1, 0, b"v%d" % i)
    b.finish()
    with pytest.raises(CorruptionError, match="malformed filter block"):
        TableReader(fs, str(tmp_path / "000007.sst"), 7, None)

    path = tmp_path / "db"
    with shaledb.open(path) as db:
        for i in range(1000):
            db.put(b"k%05d" % i, b"v%d" % i)
        db.flush()  # an L0 table with the packed filter
    monkeypatch.undo()
    with shaledb.open(path, read_only=True) as db:
        for key in (b"k00000", b"k00999", b"k00500-absent"):  # (in the table's key range)
            with pytest.raises(CorruptionError, match="malformed filter block"):
                db.get(key)
        with pytest.raises(CorruptionError):
            list(db.range())


# -- log file header versions -------------------------------------------------------------

def _rewrite_log_version(path: Path, version: int) -> None:
    data = bytearray(path.read_bytes())
    assert data[:8] == b"SHALElog"
    data[8:12] = version.to_bytes(4, "little")
    data[28:32] = crc32c.crc32c(bytes(data[:28])).to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["wal", "manifest"])
def test_a_newer_log_format_is_refused_as_incompatible(tmp_path, what) -> None:
    path = tmp_path / "db"
    with shaledb.open(path) as db:
        db.put(b"k", b"v")
    name = (path / "CURRENT").read_text().split("\n")[0]
    target = path / name if what == "manifest" else next(path.glob("*.log"))
    newer = ENCRYPTED_LOG_VERSION + 1  # (3 is the encrypted log format, database format 5)
    _rewrite_log_version(target, newer)
    with pytest.raises(IncompatibleFormatError, match=f"log format version {newer}"):
        shaledb.open(path, read_only=True)
    _rewrite_log_version(target, ENCRYPTED_LOG_VERSION)  # claims "encrypted" in a plain db
    with pytest.raises(CorruptionError):
        shaledb.open(path, read_only=True)
    _rewrite_log_version(target, 1)  # a header that no version writes
    with pytest.raises(CorruptionError, match="log format version 1"):
        shaledb.open(path, read_only=True)
    _rewrite_log_version(target, 2)
    with shaledb.open(path, read_only=True) as db:
        assert db.get(b"k") == b"v"
