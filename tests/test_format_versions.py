"""The data block format (version 2) against a model, and reading files written by the
previous format version.

tests/data/format_v1 was written by ShaleDB 0.1.0 (table format 1) with the options in its
OPTIONS file and a clock fixed at 1,000,000 s: three passes put keys k00000..k01999 (value
``b"v%05d-" % i + bytes([i % 251]) * (i % 300)``, a 100 s TTL when i % 11 == 0), each pass
flushed; then compact_range(); then every 7th key deleted, ``big`` put
(``bytes(range(256)) * 300``), and a flush.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shaledb
from shaledb.engine.optionsfile import DB_FORMAT_VERSION
from shaledb.engine.sstable import TableReader
from shaledb.engine.sstable.block import ColumnBlock, RawBlock, encode_columns, encode_data_block
from shaledb.engine.vfs import PosixFileSystem as FileSystem

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
    assert json.loads((path / "OPTIONS").read_text())["format_version"] == DB_FORMAT_VERSION
    clock[0] += 101.0  # the TTL'd keys of the fixture have expired by now
    for i in range(0, 2000, 11):
        want.pop(b"k%05d" % i, None)
    with shaledb.open(path, clock=lambda: clock[0]) as db:
        assert dict(db.range()) == want
