"""``shaledb verify`` and ``DB.verify()``: damage real bytes (flip, cut, delete, craft) and
check that the report names the file, the offset and the key (or sequence) range, and that
the exit status says damaged; a clean database verifies clean, nothing under PATH is written,
and verifying an open database never blocks its writers.

Offsets come from the documented formats through tests/_helpers.py (SstLayout, log_records),
independently of the engine's readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import shaledb
from _helpers import (
    LOG_HEADER,
    SMALL,
    SST_FOOTER_SIZE,
    SST_TRAILER,
    SstLayout,
    append_log_record,
    copy_db,
    current_manifest,
    files,
    flip,
    key,
    log_records,
    truncate,
    two_live_segments,
    value,
)
from shaledb.cli import cli
from shaledb.engine.logfile import encode_record
from shaledb.engine.manifest import VersionEdit
from shaledb.engine.sstable import TableBuilder
from shaledb.engine.verify import KeyRange, Problem, ProblemKind, Severity
from shaledb.engine.vfs import default_fs

pytestmark = pytest.mark.timeout(120)

N_SST = 400


def _sst_db(path: str, compression: str = "none") -> tuple[str, dict[bytes, bytes]]:
    """One flushed table of N_SST keys in many 1 KiB blocks; an empty WAL."""
    expected = {key(i): value(i, size=60 + i % 50) for i in range(N_SST)}
    with shaledb.open(path, block_size=1024, compression=compression) as db:
        for k, v in expected.items():
            db.put(k, v)
        db.flush()
    ssts = files(path, ".sst")
    assert len(ssts) == 1
    return ssts[0], expected


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = {}
    for compression in ("none", "lz4"):
        path = str(tmp_path_factory.mktemp(f"verify-{compression}") / "db")
        _sst_db(path, compression)
        out[compression] = path
    return out


def _copy(src: str, tmp_path: Path) -> tuple[str, str]:
    return copy_db(src, tmp_path)


def _only_damage(report: shaledb.VerifyReport) -> Problem:
    assert len(report.damage) == 1, [str(p) for p in report.damage]
    return report.damage[0]


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _hashes(path: str) -> dict[str, str]:
    out = {}
    for root, _dirs, names in os.walk(path):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _varied_db(path: str) -> dict[bytes, bytes]:
    """Several levels, overwrites, deletes, a TTL: what a real database looks like."""
    model: dict[bytes, bytes] = {}
    with shaledb.open(path, **SMALL) as db:
        for i in range(3000):
            k, v = key(i % 1800), value(i)
            db.put(k, v)
            model[k] = v
            if i % 7 == 0:
                db.delete(key(i // 2))
                model.pop(key(i // 2), None)
        db.put(b"ttl", b"x", ttl=3600)
        model[b"ttl"] = b"x"
        db.flush()
        db.compact_range()
        for i in range(50):  # and some writes left in the WAL
            db.put(key(5000 + i), value(i))
            model[key(5000 + i)] = value(i)
        st = db.stats()
    assert sum(1 for lvl in st["levels"] if lvl["files"]) >= 1
    return model


# ---------------------------------------------------------------------------------------------
# Clean databases


def test_clean_database_verifies_clean_api_and_cli(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    _varied_db(path)
    before = _hashes(path)
    report = shaledb.verify(path)
    assert report.ok, str(report)
    assert report.damage == []
    t = report.totals
    assert t.tables >= 1 and t.blocks >= t.tables and t.entries > 3000 // 2
    assert t.wal_records >= 1 and t.bytes > 0 and t.seconds > 0
    result = _cli("verify", path)
    assert result.exit_code == 0, result.output
    assert "OK" in result.output
    result = _cli("verify", path, "--json")
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc["ok"] is True and doc["damage"] == 0
    assert doc["totals"]["entries"] == t.entries
    # Verification writes nothing: not even the LOCK file's pid.
    assert _hashes(path) == before


def test_verify_creates_no_lock_file(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    _sst_db(path)
    os.unlink(os.path.join(path, "LOCK"))
    assert shaledb.verify(path).ok
    assert not os.path.exists(os.path.join(path, "LOCK"))


def test_verify_refuses_an_open_database_and_names_db_verify(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with shaledb.open(path) as db:
        db.put(b"a", b"1")
        with pytest.raises(shaledb.LockedError):
            shaledb.verify(path)
        result = _cli("verify", path)
        assert result.exit_code == 1
        assert "LockedError" in result.output and "db.verify()" in result.output


def test_verify_of_a_directory_without_database_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(shaledb.InvalidArgument):
        shaledb.verify(str(tmp_path / "empty"))
    assert _cli("verify", str(tmp_path / "missing")).exit_code == 1


# ---------------------------------------------------------------------------------------------
# Tables


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_data_block_checksum(pristine: dict[str, str], tmp_path: Path,
                             compression: str) -> None:
    path, sst = _copy(pristine[compression], tmp_path)
    lay = SstLayout(sst)
    b = len(lay.data_blocks) // 2
    last, off, size = lay.data_blocks[b]
    flip(sst, off + size // 2, 0x10)
    p = _only_damage(shaledb.verify(path))
    assert p.kind is ProblemKind.CHECKSUM
    assert p.file == os.path.basename(sst)
    assert p.offset == off and p.length == size + SST_TRAILER
    assert p.level == 0
    assert p.keys == KeyRange(lay.data_blocks[b - 1][0], last, start_exclusive=True)
    bad = lay.block_keys(b, [key(i) for i in range(N_SST)])
    assert all(p.keys.contains(k) for k in bad)
    assert not p.keys.contains(lay.data_blocks[b - 1][0])
    assert "shaledb repair" in p.message
    result = _cli("verify", path, "--json")
    assert result.exit_code == 2
    doc = json.loads(result.output)
    assert doc["ok"] is False
    [prob] = [x for x in doc["problems"] if x["severity"] == "damage"]
    assert prob["offset"] == off and prob["kind"] == "checksum"
    assert prob["keys"]["end"] == last.decode() and prob["keys"]["start_inclusive"] is False
    human = _cli("verify", path)
    assert human.exit_code == 2 and f"{os.path.basename(sst)} @ {off}" in human.output


def test_first_data_block_range_starts_at_the_tables_smallest_key(
        pristine: dict[str, str], tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    lay = SstLayout(sst)
    last, off, size = lay.data_blocks[0]
    flip(sst, off + size + 2)  # the block's CRC
    p = _only_damage(shaledb.verify(path))
    assert p.kind is ProblemKind.CHECKSUM and p.offset == off
    assert p.keys == KeyRange(key(0), last)


@pytest.mark.parametrize("part", ["index", "filter", "props"])
def test_metadata_block_damage_names_the_block_and_the_whole_table(
        pristine: dict[str, str], tmp_path: Path, part: str) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    lay = SstLayout(sst)
    off, size = getattr(lay, part)
    flip(sst, off + size // 2, 0x04)
    report = shaledb.verify(path)
    p = _only_damage(report)
    assert p.kind is ProblemKind.CHECKSUM
    assert p.file == os.path.basename(sst) and p.offset == off
    assert p.keys == KeyRange(key(0), key(N_SST - 1))
    assert _cli("verify", path).exit_code == 2


@pytest.mark.parametrize("spot,kind", [(52, ProblemKind.CHECKSUM), (60, ProblemKind.MALFORMED),
                                       (12, ProblemKind.CHECKSUM)])
def test_footer_damage(pristine: dict[str, str], tmp_path: Path, spot: int,
                       kind: ProblemKind) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    lay = SstLayout(sst)
    flip(sst, lay.footer_offset + spot, 0x01)
    p = _only_damage(shaledb.verify(path))
    assert p.kind is kind and p.offset == lay.footer_offset
    assert p.keys == KeyRange(key(0), key(N_SST - 1))


def test_missing_table(pristine: dict[str, str], tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    os.unlink(sst)
    p = _only_damage(shaledb.verify(path))
    assert p.kind is ProblemKind.MISSING_FILE and p.file == os.path.basename(sst)
    assert p.keys == KeyRange(key(0), key(N_SST - 1))
    assert _cli("verify", path).exit_code == 2


def test_unreferenced_table_is_a_notice(pristine: dict[str, str], tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    shutil.copyfile(sst, os.path.join(path, "999999.sst"))
    report = shaledb.verify(path)
    assert report.ok
    [n] = [p for p in report.notices if p.kind is ProblemKind.UNREFERENCED_FILE]
    assert n.file == "999999.sst" and n.length == os.path.getsize(sst)
    assert _cli("verify", path).exit_code == 0


def test_size_mismatch(pristine: dict[str, str], tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    size = os.path.getsize(sst)
    with open(sst, "ab") as fh:
        fh.write(b"\0" * 10)
    report = shaledb.verify(path)
    [p] = [p for p in report.damage if p.kind is ProblemKind.SIZE_MISMATCH]
    assert p.file == os.path.basename(sst) and p.offset == size and p.length == 10
    # The footer is read at the real end of the file, so it is reported too.
    assert any(p.kind is ProblemKind.MALFORMED for p in report.damage)


def test_truncated_table(pristine: dict[str, str], tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    truncate(sst, SST_FOOTER_SIZE - 1)
    kinds = {p.kind for p in shaledb.verify(path).damage}
    assert kinds == {ProblemKind.SIZE_MISMATCH, ProblemKind.TRUNCATED}


def _replace_table(path: str, sst: str, rows: list[tuple[bytes, int, int, bytes]]) -> None:
    """Rewrite table ``sst`` with ``rows`` (key, seq, kind, value) added in the given order
    (the builder does not check the order: this crafts a table with keys out of order)."""
    os.unlink(sst)
    b = TableBuilder(default_fs(), sst, int(os.path.basename(sst)[:6]), block_size=1 << 20,
                     compression="none")
    for k, seq, kind, v in rows:
        b.add(k, seq, kind, 0, v)
    b.finish()


def test_keys_out_of_order_in_a_table(pristine: dict[str, str], tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    rows = [(key(i), i + 1, 1, value(i)) for i in range(10)]
    rows[4], rows[5] = rows[5], rows[4]
    _replace_table(path, sst, rows)
    report = shaledb.verify(path)
    [p] = [p for p in report.damage if p.kind is ProblemKind.KEY_ORDER]
    assert p.file == os.path.basename(sst) and p.offset == 0
    assert "entry 5" in p.message and key(5).decode() in p.message


def test_versions_of_a_key_out_of_order(pristine: dict[str, str], tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    _replace_table(path, sst, [(b"a", 1, 1, b"old"), (b"a", 2, 1, b"new"), (b"b", 3, 1, b"")])
    [p] = [p for p in shaledb.verify(path).damage if p.kind is ProblemKind.KEY_ORDER]
    assert "versions of one key" in p.message


def _two_l0_tables(path: str) -> list[Any]:
    """Two overlapping level-0 tables (no compaction)."""
    with shaledb.open(path, l0_compaction_trigger=8, l0_slowdown_trigger=8,
                      l0_stop_trigger=12) as db:
        for round_ in range(2):
            for i in range(0, 100, 2):
                db.put(key(i + round_), value(i))
            db.flush()
        levels = db._engine._versions.current.levels
        return list(levels[0])


def test_overlapping_tables_in_a_level(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    a, b = _two_l0_tables(path)
    assert shaledb.verify(path).ok  # overlap is fine in level 0
    # Craft a manifest edit that moves both to level 1, where they may not overlap.
    manifest = current_manifest(path)
    edit = VersionEdit(deleted=[(0, a.number), (0, b.number)], added=[(1, a), (1, b)])
    append_log_record(manifest, edit.encode())
    report = shaledb.verify(path)
    [p] = report.damage
    assert p.kind is ProblemKind.LEVEL_OVERLAP and p.level == 1
    first, second = sorted([a, b], key=lambda f: f.smallest)
    assert p.file == f"{second.number:06d}.sst"
    assert p.keys == KeyRange(second.smallest, min(first.largest, second.largest))


def test_level0_newer_table_with_older_data(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    a, b = _two_l0_tables(path)
    # Swap the tables' sequence ranges in the manifest: the higher number now looks older.
    manifest = current_manifest(path)
    import dataclasses
    a2 = dataclasses.replace(a, smallest_seq=b.smallest_seq, largest_seq=b.largest_seq)
    b2 = dataclasses.replace(b, smallest_seq=a.smallest_seq, largest_seq=a.largest_seq)
    edit = VersionEdit(deleted=[(0, a.number), (0, b.number)], added=[(0, a2), (0, b2)])
    append_log_record(manifest, edit.encode())
    kinds = {p.kind for p in shaledb.verify(path).damage}
    assert ProblemKind.SEQUENCE in kinds
    assert ProblemKind.METADATA in kinds  # the tables' real ranges disagree with the manifest


# ---------------------------------------------------------------------------------------------
# Manifest, WAL, OPTIONS, lost/


def _manifest_db(path: str) -> str:
    with shaledb.open(path, memtable_size=64 * 1024, l0_compaction_trigger=8,
                      l0_slowdown_trigger=8, l0_stop_trigger=12) as db:
        for round_ in range(4):
            for i in range(40):
                db.put(key(round_ * 40 + i), value(i))
            db.flush()
    return current_manifest(path)


def test_damaged_manifest_record(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    manifest = _manifest_db(path)
    recs = log_records(manifest)
    off, size = recs[len(recs) // 2]
    flip(manifest, off + LOG_HEADER.size + (size - LOG_HEADER.size) // 2, 0x02)
    report = shaledb.verify(path)
    [p] = [p for p in report.damage if p.file == os.path.basename(manifest)]
    assert p.kind is ProblemKind.CHECKSUM and p.offset == off and p.length == size
    # The tables the lost edit added are not listed any more: reported and still checked.
    assert report.notices and all(n.kind is ProblemKind.UNREFERENCED_FILE
                                  for n in report.notices)
    assert _cli("verify", path).exit_code == 2


def test_damaged_current(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    _manifest_db(path)
    Path(path, "CURRENT").write_bytes(b"garbage\n")
    report = shaledb.verify(path)
    assert [p.file for p in report.damage] == ["CURRENT"]
    assert report.totals.tables == 4  # every table is still read


def test_torn_manifest_tail_is_a_notice(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    manifest = _manifest_db(path)
    with open(manifest, "ab") as fh:
        fh.write(encode_record(b"x" * 100)[:50])
    report = shaledb.verify(path)
    assert report.ok
    assert [p.kind for p in report.notices] == [ProblemKind.TORN_TAIL]


N_WAL = 40


def _wal_db(path: str) -> str:
    with shaledb.open(path) as db:
        for i in range(N_WAL):
            db.put(key(i), value(i, size=200))
    [seg] = [p for p in files(path, ".log") if os.path.getsize(p) > 0]
    assert len(log_records(seg)) == N_WAL
    return seg


def test_damaged_wal_record(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    seg = _wal_db(path)
    r = N_WAL // 2
    off, size = log_records(seg)[r]
    flip(seg, off + LOG_HEADER.size + 20)
    p = _only_damage(shaledb.verify(path))
    assert p.kind is ProblemKind.CHECKSUM and p.file == os.path.basename(seg)
    assert p.offset == off and p.length == size
    assert p.seqs == (r + 1, r + 1)  # one put per record, sequences from 1
    assert _cli("verify", path).exit_code == 2


def test_torn_wal_tail_is_a_notice(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    seg = _wal_db(path)
    off, size = log_records(seg)[-1]
    truncate(seg, off + size // 2)
    report = shaledb.verify(path)
    assert report.ok
    [n] = report.notices
    assert n.kind is ProblemKind.TORN_TAIL and n.offset == off
    assert _cli("verify", path).exit_code == 0


def test_wal_tail_of_an_older_segment_is_damage(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    segs, _ = two_live_segments(path)
    off, size = log_records(segs[0])[-1]
    truncate(segs[0], off + size // 2)
    p = _only_damage(shaledb.verify(path))
    assert p.file == os.path.basename(segs[0]) and p.offset == off
    # And a missing first segment, while a newer one exists, is damage too.
    os.unlink(segs[0])
    p = _only_damage(shaledb.verify(path))
    assert p.kind is ProblemKind.MISSING_FILE and p.file == os.path.basename(segs[0])


def test_wal_sequence_gap(tmp_path: Path) -> None:
    """A record whose sequence does not continue the previous one (crafted)."""
    path = str(tmp_path / "db")
    seg = _wal_db(path)
    from shaledb.engine.batch import encode_batch
    append_log_record(seg, encode_batch(N_WAL + 10, [1, b"late", 0, b"v"]))
    p = _only_damage(shaledb.verify(path))
    assert p.kind is ProblemKind.SEQUENCE and p.seqs == (N_WAL + 1, N_WAL + 9)


def test_options_damaged_and_missing(pristine: dict[str, str], tmp_path: Path) -> None:
    path, _ = _copy(pristine["none"], tmp_path)
    Path(path, "OPTIONS").write_text("{not json")
    p = _only_damage(shaledb.verify(path))
    assert p.file == "OPTIONS" and p.kind is ProblemKind.MALFORMED
    os.unlink(os.path.join(path, "OPTIONS"))
    p = _only_damage(shaledb.verify(path))  # open refuses a database without OPTIONS
    assert p.file == "OPTIONS" and p.kind is ProblemKind.MISSING_OPTIONS
    with pytest.raises(shaledb.CorruptionError, match="OPTIONS"):
        shaledb.open(path)


def test_files_in_lost_are_reported(pristine: dict[str, str], tmp_path: Path) -> None:
    path, _ = _copy(pristine["none"], tmp_path)
    os.mkdir(os.path.join(path, "lost"))
    Path(path, "lost", "000007.log.tail").write_bytes(b"x" * 123)
    report = shaledb.verify(path)
    assert report.ok
    [n] = report.notices
    assert n.kind is ProblemKind.LOST_FILE and n.file == "lost/000007.log.tail"
    assert n.length == 123 and n.severity is Severity.NOTICE
    result = _cli("verify", path)
    assert result.exit_code == 0 and "lost/000007.log.tail" in result.output


# ---------------------------------------------------------------------------------------------
# An open database


def test_verify_open_database_sees_damage(pristine: dict[str, str], tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    lay = SstLayout(sst)
    _last, off, size = lay.data_blocks[3]
    flip(sst, off + 5)
    with shaledb.open(path, block_cache_size=0) as db:
        report = db.verify()
        assert report.live
        p = _only_damage(report)
        assert p.kind is ProblemKind.CHECKSUM and p.offset == off


@pytest.mark.timing
def test_verify_does_not_block_writes(tmp_path: Path) -> None:
    """In the middle of db.verify() (inside its progress callback, so its version is pinned)
    another thread's puts, a flush (memtable switch + manifest write) complete quickly."""
    path = str(tmp_path / "db")
    db = shaledb.open(path, **SMALL)
    try:
        for i in range(2000):
            db.put(key(i), value(i))
        db.flush()
        latencies: list[float] = []
        done = threading.Event()

        def writer() -> None:
            for i in range(300):
                t0 = time.perf_counter()
                db.put(key(10_000 + i), value(i))
                latencies.append(time.perf_counter() - t0)
            db.flush()
            done.set()

        calls = []

        def progress(done_bytes: int, total: int) -> None:
            if not calls:
                t = threading.Thread(target=writer)
                t.start()
                t.join(timeout=20)
            calls.append(done_bytes)

        report = db.verify(progress=progress)
        assert done.is_set(), "writes and a flush did not finish while verify was running"
        assert max(latencies) < 1.0, f"a put took {max(latencies):.3f} s during verify"
        assert report.ok, str(report)
        assert db.get(key(10_299)) == value(299)
    finally:
        db.close()


def test_verify_open_database_under_writes_and_compactions(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    db = shaledb.open(path, **SMALL)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set():
                db.put(key(i % 3000), value(i))
                if i % 11 == 0:
                    db.delete(key((i * 7) % 3000))
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        deadline = time.monotonic() + 4
        reports = []
        while time.monotonic() < deadline or len(reports) < 5:
            reports.append(db.verify())
        stats = db.stats()
    finally:
        stop.set()
        t.join()
        db.close()
    assert not errors
    assert stats["flushes"] >= 3 and stats["compactions"] + stats["trivial_moves"] >= 1, stats
    for r in reports:
        assert r.ok, str(r)
    assert max(r.totals.tables for r in reports) >= 1
    assert shaledb.verify(path).ok
