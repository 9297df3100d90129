"""docs/format.md against the engine: a reader written from the document alone
(tests/format_reader.py) must read exactly what the engine writes and what it reads.

This is the test that fails when the engine's bytes drift from the document (the format-2
filter once changed from packed 32-bit hashes to bucketed 16-bit remainders while the
document kept describing the old one: a reader written from it found 0 of 1,000 keys).
"""

from __future__ import annotations

import importlib.util
import random
import shutil
from pathlib import Path

import pytest

import format_reader as fr
import shaledb
from shaledb.engine.sstable import TableReader
from shaledb.engine.vfs import PosixFileSystem

DATA = Path(__file__).parent / "data"
NOW = 1_800_000_000.0
OPTS = {"block_size": 512, "memtable_size": 4 << 20, "target_file_size": 64 << 10,
        "l0_compaction_trigger": 8, "l0_slowdown_trigger": 16, "l0_stop_trigger": 24,
        "fsync_interval": None, "compaction_process_threshold": None}


def _value(i: int, rng: random.Random) -> bytes:
    if i % 5 == 0:  # incompressible: blocks of these are stored uncompressed
        return rng.randbytes(60 + i % 200)
    return b"value-%06d-" % i + b"xyz" * (i % 40)


def _key(i: int) -> bytes:
    return b"key:%06d" % i


#: The master key of the encrypted variants.
KEY = bytes(range(32))


def _write_database(path: Path, key: bytes | None = None) -> tuple[shaledb.DB, int]:
    """An engine-written database: several tables on two levels, lz4 and uncompressed
    blocks, deletes, TTLs, and writes left in the WAL (encrypted with ``key`` when given).
    Returns the open database (the caller closes it) and how many operations are only in
    the WAL."""
    rng = random.Random(7)
    opts = {**OPTS, "encryption_key": key}
    db = shaledb.open(path, clock=lambda: NOW, compression="lz4", **opts)
    try:
        for i in range(1200):
            db.put(_key(i), _value(i, rng), ttl=500.0 if i % 13 == 0 else None)
        db.put(b"", b"the empty key")
        db.put(b"K" * 300, rng.randbytes(70_000))  # 4-byte offsets, bin16 and bin32 headers
        db.flush()
        for i in range(0, 1200, 7):
            db.delete(_key(i))
        db.flush()
        db.compact_range()
        for i in range(0, 1200, 3):
            db.put(_key(i), _value(i + 1, rng), ttl=5000.0 if i % 2 else None, sync=i % 99 == 0)
        db.flush()
    finally:
        db.close()
    db = shaledb.open(path, clock=lambda: NOW, compression="none", **opts)
    for i in range(1100, 1400):
        db.put(_key(i), _value(i, rng))
    db.delete(_key(1))
    db.flush()  # a table with compression "none"
    wal_ops = 0
    for i in range(1300, 1500):
        db.put(_key(i), b"in the WAL %d" % i, ttl=100.0 if i % 10 == 0 else None)
        wal_ops += 1
    batch = shaledb.WriteBatch()
    batch.put(b"batch-a", b"1")
    batch.delete(_key(2))
    batch.put(b"batch-b", b"2", ttl=60)
    db.write(batch, sync=True)
    db.delete(_key(5), sync=True)
    return db, wal_ops + 3 + 1


def _engine_state(db: shaledb.DB) -> dict[bytes, tuple[bytes, int]]:
    out = {}
    for key, value in db.range():
        record = db._engine.get_record(key)
        assert record is not None
        out[key] = (value, record[2])
    return out


def _check_against_engine(path: Path, db: shaledb.DB, wal_ops: int | None,
                          key: bytes | None = None) -> fr.Database:
    """Every check of the independent reader against the (open) engine."""
    rd = fr.read_database(str(path), key)
    engine = db._engine
    # The manifest's tables are the engine's, and exactly the tables in the directory.
    engine_tables = {(lvl, f.number, f.size) for lvl, f in engine._versions.current.files()}
    assert {(m.level, m.number, m.size) for m in rd.manifest.tables.values()} == engine_tables
    assert rd.table_files == set(rd.manifest.tables)
    assert len({m.level for m in rd.manifest.tables.values()}) >= 2
    fs = PosixFileSystem()
    probes = [b"absent:%d" % i for i in range(3000)]
    for number, table in rd.tables.items():
        reader = TableReader(fs, str(path / f"{number:06d}.sst"), number, None,
                             engine._keyring)
        try:
            # Every key of the table passes its filter, read as the document says; absent
            # keys get the same answer from the document's lookup as from the engine's.
            assert all(table.filter.may_contain(e[0]) for e in table.entries)
            assert [table.filter.may_contain(p) for p in probes] == [
                reader.may_contain(p) for p in probes]
            assert sum(map(table.filter.may_contain, probes)) < 30  # ~0.05% expected
            # Every data block decodes to the entries the engine's block returns.
            assert reader.nblocks == len(table.blocks)
            for i, entries in enumerate(table.blocks):
                block = reader._block(i, fill_cache=False)
                cols = block.columns(0, block.n)
                engine_entries = [(bytes(k), int(s), int(kind), int(x), bytes(v))
                                  for k, s, kind, x, v in zip(*cols, strict=True)]
                assert entries == engine_entries, f"table {number} block {i}"
            assert table.properties == reader.properties
        finally:
            reader.close()
    # The live WAL segments decode into batches; with the tables they make the engine's view.
    if wal_ops is not None:
        assert len(rd.live_wal_ops()) == wal_ops
    assert rd.state(int(NOW * 1000)) == _engine_state(db)
    return rd


def test_independent_reader_reads_what_the_engine_writes(tmp_path) -> None:
    path = tmp_path / "db"
    db, wal_ops = _write_database(path)
    try:
        # A copy taken while open: the open WAL segment ends in its mapped zeros.
        copy = tmp_path / "copy"
        shutil.copytree(path, copy)
        rd = _check_against_engine(copy, db, wal_ops)
        seg = rd.wal[max(rd.wal)]
        assert seg.version == 2 and seg.zero_tail > 0 and seg.damage is None
        assert [r.type for r in seg.records][-2:] == [fr.FULL, fr.SYNC]
        types = {t for table in rd.tables.values() for t in table.block_types}
        assert types == {0, 1}
    finally:
        db.close()
    with shaledb.open(path, clock=lambda: NOW, read_only=True, **OPTS) as db:
        rd = _check_against_engine(path, db, wal_ops)
    seg = rd.wal[max(rd.wal)]
    assert seg.zero_tail == 0 and seg.records[-1].type == fr.SEAL
    assert seg.records[-1].synced == seg.records[-1].offset
    assert rd.current_checksummed and rd.options["format_version"] == 6
    assert rd.manifest_log.version == 2 and rd.manifest_log.records[-1].type == fr.SYNC


def test_independent_reader_reads_what_the_engine_writes_encrypted(tmp_path) -> None:
    """The same for an encrypted database: with the master key, the document alone (log
    format 3, table format 3, KEYRING) reads what the engine wrote and reads."""
    path = tmp_path / "db"
    db, wal_ops = _write_database(path, KEY)
    try:
        copy = tmp_path / "copy"
        shutil.copytree(path, copy)
        rd = _check_against_engine(copy, db, wal_ops, KEY)
        seg = rd.wal[max(rd.wal)]
        assert seg.version == 3 and seg.zero_tail > 0 and seg.damage is None
        assert {t.version for t in rd.tables.values()} == {3}
        assert {t for table in rd.tables.values() for t in table.block_types} == {0, 1}
    finally:
        db.close()
    with shaledb.open(path, clock=lambda: NOW, read_only=True, encryption_key=KEY,
                      **OPTS) as db:
        rd = _check_against_engine(path, db, wal_ops, KEY)
    assert rd.options["format_version"] == 7 and rd.manifest_log.version == 3
    with pytest.raises(fr.FormatError):
        fr.read_database(str(path), bytes(32))  # another key: the reader refuses too


def _load_make_golden():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "make_golden", Path(__file__).parent.parent / "scripts" / "make_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,now", [("format_v1", 1_000_000.0),
                                      ("format_v2/clean", None), ("format_v2/crashed", None),
                                      ("format_v3", None), ("format_v4", None),
                                      ("format_v5", None)])
def test_independent_reader_reads_every_committed_format(tmp_path, name, now) -> None:
    """The document describes the older formats too: the reader reads each committed
    fixture to the state the engine returns for it (format 5 with its golden key)."""
    mg = _load_make_golden()
    now = now if now is not None else float(mg.NOW)
    key = mg.GOLDEN_KEY if name == "format_v5" else None
    rd = fr.read_database(str(DATA / name), key)
    path = tmp_path / "db"
    shutil.copytree(DATA / name, path)
    with shaledb.open(path, clock=lambda: now, read_only=True, encryption_key=key) as db:
        assert rd.state(int(now * 1000)) == _engine_state(db)
    versions = {t.version for t in rd.tables.values()}
    assert versions == ({1} if name == "format_v1" else {3} if key else {2})
    assert {log.version for log in rd.wal.values()} <= (
        {3} if key else {2} if name in ("format_v3", "format_v4") else {1})


def test_reader_refuses_what_the_document_does_not_describe(tmp_path) -> None:
    """The reader is strict, so that it can catch a drift: a few bytes it must refuse."""
    table = sorted((DATA / "format_v3").glob("*.sst"))[-1].read_bytes()
    damaged = bytearray(table)
    damaged[10] ^= 1
    with pytest.raises(fr.FormatError):
        fr.read_table(bytes(damaged))
    current = (DATA / "format_v3" / "CURRENT").read_bytes()
    with pytest.raises(fr.FormatError):
        fr.read_current(current.replace(b"crc32c ", b"crc32c 0"))
    options = (DATA / "format_v3" / "OPTIONS").read_bytes()
    with pytest.raises(fr.FormatError):
        fr.read_options(options.replace(b'"block_size": 1024', b'"block_size": 2048'))
    footer = bytearray(table[-64:])
    footer[36:40] = (4).to_bytes(4, "little")  # (3 is the encrypted table format)
    footer[52:56] = fr.crc32c(bytes(footer[:52])).to_bytes(4, "little")
    with pytest.raises(fr.NewerFormatError):
        fr.read_table(table[:-64] + bytes(footer))


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 64, 65, 66, 129, 1000, 2049, 70_000])
def test_filter_blocks_are_built_as_documented(n) -> None:
    """The engine's filter block for ``n`` keys is byte for byte the document's construction
    (bucket bits, bucket starts, remainders), around every bucket-size boundary."""
    from shaledb.engine.sstable.filter import build_filter

    keys = [b"filter-key-%d" % i for i in range(n)]
    payload = build_filter(keys)
    flt = fr.Filter(payload, 2)
    flt.check_built_from(set(keys))
    assert all(map(flt.may_contain, keys))
