"""``shaledb repair PATH DEST``: damage real bytes, repair, and compare DEST with a model:
it must hold exactly the salvageable data (every key except those of the damaged block or
record), keep deleted and expired keys deleted, verify clean, and PATH must be byte-for-byte
unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import shaledb
from _helpers import (
    LOG_HEADER,
    SMALL,
    SST_TRAILER,
    SstLayout,
    copy_db,
    current_manifest,
    diff,
    files,
    flip,
    key,
    log_records,
    scan,
    truncate,
    value,
)
from shaledb.cli import cli
from shaledb.engine.verify import KeyRange, ProblemKind

pytestmark = pytest.mark.timeout(120)

N_SST = 400


def _hashes(path: str) -> dict[str, str]:
    out = {}
    for root, _dirs, names in os.walk(path):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _repair(src: str, dest: str, **kw: Any) -> shaledb.RepairReport:
    """Repair, checking that PATH is unchanged and DEST verifies clean."""
    before = _hashes(src)
    report = shaledb.repair(src, dest, **kw)
    assert _hashes(src) == before, "repair changed a file under PATH"
    check = shaledb.verify(dest)
    assert check.ok, str(check)
    return report


def _contents(path: str) -> dict[bytes, bytes]:
    with shaledb.open(path) as db:
        return scan(db)


def _sst_db(path: str, compression: str = "none") -> tuple[str, dict[bytes, bytes]]:
    expected = {key(i): value(i, size=60 + i % 50) for i in range(N_SST)}
    with shaledb.open(path, block_size=1024, compression=compression) as db:
        for k, v in expected.items():
            db.put(k, v)
        db.flush()
    [sst] = files(path, ".sst")
    return sst, expected


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = {}
    for compression in ("none", "lz4"):
        path = str(tmp_path_factory.mktemp(f"repair-{compression}") / "db")
        _sst_db(path, compression)
        out[compression] = path
    return out


def _copy(src: str, tmp_path: Path) -> tuple[str, str]:
    return copy_db(src, tmp_path)


EXPECTED = {key(i): value(i, size=60 + i % 50) for i in range(N_SST)}


def test_repair_of_a_clean_database_loses_nothing(tmp_path: Path) -> None:
    path, dest = str(tmp_path / "db"), str(tmp_path / "dest")
    model: dict[bytes, bytes] = {}
    with shaledb.open(path, **SMALL) as db:
        for i in range(3000):
            db.put(key(i % 1500), value(i))
            model[key(i % 1500)] = value(i)
            if i % 5 == 0:
                db.delete(key(i // 3))
                model.pop(key(i // 3), None)
        db.put(b"ttl", b"t", ttl=3600)
        model[b"ttl"] = b"t"
        db.flush()
        db.compact_range()
        for i in range(30):  # some writes only in the WAL
            db.put(key(9000 + i), value(i))
            model[key(9000 + i)] = value(i)
        db.delete(key(1499))  # a deletion of a key in the tables, in the WAL
        model.pop(key(1499))
    report = _repair(path, dest)
    assert report.lossless and report.manifest_used, str(report)
    assert report.keys_written == len(model)
    assert report.deleted > 0 and report.wal_records >= 30
    got = _contents(dest)
    assert got == model, diff(got, model)
    with shaledb.open(dest) as db:
        ttl = db.ttl(b"ttl")
        assert ttl is not None and 3500 < ttl <= 3600


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_damaged_data_block_loses_exactly_its_keys(pristine: dict[str, str], tmp_path: Path,
                                                   compression: str) -> None:
    path, sst = _copy(pristine[compression], tmp_path)
    dest = str(tmp_path / "dest")
    lay = SstLayout(sst)
    b = len(lay.data_blocks) // 2
    last, off, size = lay.data_blocks[b]
    flip(sst, off + size // 2)
    bad = set(lay.block_keys(b, EXPECTED))
    assert bad
    report = _repair(path, dest)
    assert not report.lossless and report.blocks_lost == 1
    [loss] = report.losses
    assert loss.file == os.path.basename(sst) and loss.kind is ProblemKind.CHECKSUM
    assert loss.offset == off and loss.length == size + SST_TRAILER
    assert loss.keys == KeyRange(lay.data_blocks[b - 1][0], last, start_exclusive=True)
    assert loss.entries == len(bad)
    assert report.damaged_files == [os.path.basename(sst)]
    want = {k: v for k, v in EXPECTED.items() if k not in bad}
    got = _contents(dest)
    assert got == want, diff(got, want)


def test_repair_cli_exit_status_and_json(pristine: dict[str, str], tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    runner = CliRunner()
    ok = runner.invoke(cli, ["repair", path, str(tmp_path / "clean"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["lossless"] is True
    lay = SstLayout(sst)
    _last, off, _size = lay.data_blocks[2]
    flip(sst, off + 3)
    bad = runner.invoke(cli, ["repair", path, str(tmp_path / "dest"), "--json"])
    assert bad.exit_code == 2, bad.output
    doc = json.loads(bad.output)
    assert doc["lossless"] is False and doc["losses"][0]["offset"] == off
    assert doc["losses"][0]["keys"]["end"] == lay.data_blocks[2][0].decode()
    human = runner.invoke(cli, ["repair", path, str(tmp_path / "dest2")])
    assert human.exit_code == 2 and "DATA LOST" in human.output
    # DEST must be new or empty; an existing non-empty one is a usage error (exit 1).
    again = runner.invoke(cli, ["repair", path, str(tmp_path / "dest")])
    assert again.exit_code == 1 and "not empty" in again.output


def test_damaged_index_block_finds_blocks_by_checksum(pristine: dict[str, str],
                                                      tmp_path: Path) -> None:
    path, sst = _copy(pristine["lz4"], tmp_path)
    lay = SstLayout(sst)
    off, size = lay.index
    flip(sst, off + 1, 0xFF)  # the msgpack array header: the index no longer decodes
    report = _repair(path, str(tmp_path / "dest"))
    assert report.lossless, str(report)
    assert any("index block is damaged" in n for n in report.notices)
    assert _contents(str(tmp_path / "dest")) == EXPECTED


def test_damaged_index_and_data_block(pristine: dict[str, str], tmp_path: Path) -> None:
    """A damaged index that still decodes serves as hints to step over a damaged block."""
    path, sst = _copy(pristine["none"], tmp_path)
    lay = SstLayout(sst)
    ioff, isize = lay.index
    flip(sst, ioff + 8, 0x01)  # inside the first last-key: still decodes, fails its CRC
    b = 5
    last, off, size = lay.data_blocks[b]
    flip(sst, off + size // 2)
    report = _repair(path, str(tmp_path / "dest"))
    [loss] = report.losses
    assert loss.offset == off and loss.file == os.path.basename(sst)
    bad = set(lay.block_keys(b, EXPECTED))
    assert loss.keys is not None and all(loss.keys.contains(k) for k in bad)
    want = {k: v for k, v in EXPECTED.items() if k not in bad}
    got = _contents(str(tmp_path / "dest"))
    assert got == want, diff(got, want)


def test_damaged_footer(pristine: dict[str, str], tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    lay = SstLayout(sst)
    flip(sst, lay.footer_offset + 60)  # the magic number
    report = _repair(path, str(tmp_path / "dest"))
    assert report.lossless, str(report)
    assert _contents(str(tmp_path / "dest")) == EXPECTED


def test_missing_table_is_reported_with_its_range(pristine: dict[str, str],
                                                  tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    os.unlink(sst)
    report = _repair(path, str(tmp_path / "dest"))
    [loss] = report.losses
    assert loss.kind is ProblemKind.MISSING_FILE and loss.entries == N_SST
    assert loss.keys == KeyRange(key(0), key(N_SST - 1))
    assert _contents(str(tmp_path / "dest")) == {}


def _manifest_db(path: str) -> tuple[str, dict[bytes, bytes]]:
    model = {}
    with shaledb.open(path, memtable_size=64 * 1024, l0_compaction_trigger=8,
                      l0_slowdown_trigger=8, l0_stop_trigger=12) as db:
        for round_ in range(4):
            for i in range(40):
                k, v = key(round_ * 40 + i), value(round_ * 40 + i)
                db.put(k, v)
                model[k] = v
            db.delete(key(round_ * 40))
            model.pop(key(round_ * 40))
            db.flush()
    return current_manifest(path), model


def test_damaged_manifest_reads_every_table(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    manifest, model = _manifest_db(path)
    recs = log_records(manifest)
    off, size = recs[len(recs) // 2]
    flip(manifest, off + LOG_HEADER.size + (size - LOG_HEADER.size) // 2, 0x02)
    with pytest.raises(shaledb.CorruptionError):
        shaledb.open(path)
    report = _repair(path, str(tmp_path / "dest"))
    assert not report.manifest_used and report.tables_read == 4
    assert report.lossless  # every table and record was readable; only the manifest was not
    assert any("deleted earlier" in n for n in report.notices)
    got = _contents(str(tmp_path / "dest"))
    assert got == model, diff(got, model)


def test_orphan_tables_are_ignored_when_the_manifest_reads(pristine: dict[str, str],
                                                           tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    # An orphan holding an old version of every key (as after an interrupted compaction).
    other = str(tmp_path / "other")
    with shaledb.open(other) as db:
        db.put(key(1), b"stale")
        db.flush()
    shutil.copyfile(files(other, ".sst")[0], os.path.join(path, "999999.sst"))
    report = _repair(path, str(tmp_path / "dest"))
    assert report.lossless and any("999999.sst" in n for n in report.notices)
    assert _contents(str(tmp_path / "dest")) == EXPECTED


N_WAL = 40


def _wal_db(path: str) -> str:
    with shaledb.open(path) as db:
        for i in range(N_WAL):
            db.put(key(i), value(i, size=200))
    [seg] = [p for p in files(path, ".log") if os.path.getsize(p) > 0]
    return seg


def test_damaged_wal_record_in_the_middle(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    seg = _wal_db(path)
    r = N_WAL // 2
    off, size = log_records(seg)[r]
    flip(seg, off + LOG_HEADER.size + 30)
    report = _repair(path, str(tmp_path / "dest"))
    [loss] = report.losses
    assert loss.file == os.path.basename(seg) and loss.offset == off and loss.length == size
    assert loss.seqs == (r + 1, r + 1) and loss.entries == 1
    assert report.wal_records == N_WAL - 1 and report.wal_records_lost == 1
    want = {key(i): value(i, size=200) for i in range(N_WAL) if i != r}
    got = _contents(str(tmp_path / "dest"))
    assert got == want, diff(got, want)


def test_torn_wal_tail(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    seg = _wal_db(path)
    off, size = log_records(seg)[-1]
    truncate(seg, off + size // 2)
    report = _repair(path, str(tmp_path / "dest"))
    assert report.lossless and any("torn" in n for n in report.notices)
    want = {key(i): value(i, size=200) for i in range(N_WAL - 1)}
    assert _contents(str(tmp_path / "dest")) == want


def test_deleted_and_expired_keys_stay_deleted(tmp_path: Path) -> None:
    """The newest version decides: a deletion or an expired value hides every older version,
    wherever those live (a deeper level, another table)."""
    path = str(tmp_path / "db")
    now = float(int(time.time()))
    with shaledb.open(path, clock=lambda: now) as db:
        db.put(b"deleted", b"old")
        db.put(b"expired", b"old")
        db.put(b"kept", b"old")
        db.flush()
        db.compact_range()  # the old versions go to the bottom level
        db.delete(b"deleted")
        db.put(b"expired", b"new", expire_at_ms=int(now * 1000) + 5000)
        db.put(b"kept", b"new", expire_at_ms=int(now * 1000) + 50_000)
        db.flush()  # newer versions in level 0 ...
        db.put(b"wal-deleted", b"x")
        db.delete(b"wal-deleted")  # ... and in the WAL
    report = _repair(path, str(tmp_path / "dest"), now=lambda: now + 10)
    assert report.lossless
    assert report.deleted == 2 and report.expired == 1 and report.keys_written == 1
    with shaledb.open(str(tmp_path / "dest")) as db:
        assert dict(db.range()) == {b"kept": b"new"}
        ttl = db.ttl(b"kept")
    assert ttl is not None  # the absolute expiry was kept


def test_repair_refuses_dest_inside_path_and_locked_source(pristine: dict[str, str],
                                                           tmp_path: Path) -> None:
    path, _ = _copy(pristine["none"], tmp_path)
    with pytest.raises(shaledb.InvalidArgument):
        shaledb.repair(path, os.path.join(path, "sub"))
    with shaledb.open(path), pytest.raises(shaledb.LockedError):
        shaledb.repair(path, str(tmp_path / "dest"))
    assert not os.path.exists(str(tmp_path / "dest"))


def test_repair_writes_nothing_under_path_not_even_lock(pristine: dict[str, str],
                                                        tmp_path: Path) -> None:
    path, sst = _copy(pristine["none"], tmp_path)
    os.unlink(os.path.join(path, "LOCK"))
    flip(sst, SstLayout(sst).data_blocks[0][1] + 1)
    _repair(path, str(tmp_path / "dest"))  # checks the hashes of every file
    assert not os.path.exists(os.path.join(path, "LOCK"))
