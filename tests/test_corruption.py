"""Damage real files on disk (flip bytes, truncate) and check that ShaleDB notices: it raises
CorruptionError, or keeps exactly the consistent part, and never returns wrong data.

Offsets come from the documented formats (see _helpers): a WAL segment or MANIFEST starts
with a 32-byte file header, then records ``magic(2) type(1) length(4) synced(8) crc32c(4)
payload``; a table ends in a 64-byte footer and every block is ``payload + type(1) +
crc32c(4)``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shaledb
from _helpers import (
    LOG_HEADER,
    SST_FOOTER_SIZE,
    SST_TRAILER,
    SstLayout,
    check_gets,
    current_manifest,
    diff,
    files,
    flip,
    key,
    log_records,
    scan,
    truncate,
    two_live_segments,
    value,
)

pytestmark = pytest.mark.timeout(120)

# ---------------------------------------------------------------------------------------------
# WAL

N_WAL = 40


def _wal_db(path: str, crash: bool = False,
            sync: bool = False) -> tuple[str, list[dict[bytes, bytes]]]:
    """N_WAL single-put records in the WAL only (no flush: the default memtable is large,
    and close does not flush). With ``crash``, the database is left as a power loss right
    after the writes would leave it once every page had reached the disk (a copy taken while
    it is open: no seal, a zero tail). Returns the segment and the model after each prefix."""
    db = shaledb.open(path + ".live" if crash else path, fsync_interval=None)
    models: list[dict[bytes, bytes]] = [{}]
    for i in range(N_WAL):
        db.put(key(i), value(i, size=200), sync=sync)
        models.append({**models[-1], key(i): value(i, size=200)})
    assert db.stats()["flushes"] == 0
    if crash:
        shutil.copytree(db.path, path, ignore=shutil.ignore_patterns("LOCK"))
    db.close()
    logs = [p for p in files(path, ".log") if os.path.getsize(p) > 0]
    assert len(logs) == 1, logs
    assert len(log_records(logs[0])) == N_WAL, "expected one WAL record per put"
    return logs[0], models


WAL_SPOTS = {  # where in a record to flip a byte: offset from the record start
    "payload": lambda size: LOG_HEADER.size + (size - LOG_HEADER.size) // 2,
    "hcrc": lambda size: 16,
    "crc": lambda size: 20,
    "synced": lambda size: 8,
    "length": lambda size: 3,
    "type": lambda size: 2,
    "magic": lambda size: 0,
}


@pytest.mark.parametrize("crash", [False, True], ids=["closed", "crashed-sync-writes"])
@pytest.mark.parametrize("spot", list(WAL_SPOTS))
def test_wal_middle_record_strict_raises(tmp_path: Path, spot: str, crash: bool) -> None:
    """Damage with valid records after it that vouch for it (written after it was synced:
    the seal of a clean close, or the sync watermark of the records after a sync write) hit
    durable data: strict refuses."""
    path = str(tmp_path / "db")
    seg, models = _wal_db(path, crash, sync=crash)
    r = N_WAL // 2
    off, size = log_records(seg)[r]
    flip(seg, off + WAL_SPOTS[spot](size))
    with pytest.raises(shaledb.CorruptionError):
        shaledb.open(path)
    # Refusing to open must not have changed anything: still refused, lock released.
    with pytest.raises(shaledb.CorruptionError):
        shaledb.open(path, wal_recovery="strict")


@pytest.mark.parametrize("spot", list(WAL_SPOTS))
def test_wal_middle_record_point_in_time(tmp_path: Path, spot: str) -> None:
    path = str(tmp_path / "db")
    seg, models = _wal_db(path)
    r = N_WAL // 2
    off, size = log_records(seg)[r]
    flip(seg, off + WAL_SPOTS[spot](size))
    db = shaledb.open(path, wal_recovery="point_in_time")
    try:
        state = scan(db)
        # Exactly the records before the damage (one record per put).
        assert state == models[r], diff(state, models[r])
        check_gets(db, models[r], absent=[key(i) for i in range(N_WAL)])
        db.put(b"after", b"pit", sync=True)
    finally:
        db.close()
    # The damage was cut off: a strict open now works and keeps the new write.
    db = shaledb.open(path)
    try:
        assert scan(db) == {**models[r], b"after": b"pit"}
    finally:
        db.close()


@pytest.mark.parametrize("cut", ["header", "payload", "one-byte-short", "zeroed-tail"])
def test_wal_torn_tail_is_dropped(tmp_path: Path, cut: str) -> None:
    """A torn last record (a crash mid-write) is normal: strict open drops only it (and keeps
    its bytes under lost/)."""
    path = str(tmp_path / "db")
    seg, models = _wal_db(path, crash=True)
    off, size = log_records(seg)[-1]
    if cut == "header":
        truncate(seg, off + 5)
    elif cut == "payload":
        truncate(seg, off + size // 2)
    elif cut == "one-byte-short":
        truncate(seg, off + size - 1)
    else:  # the record's last sector never reached the disk (zeros, as allocated)
        start = max(off + 1, (off + size - 1) // 512 * 512)
        with open(seg, "r+b") as fh:
            fh.seek(start)
            fh.write(b"\0" * (off + size - start))
    db = shaledb.open(path)
    try:
        state = scan(db)
        assert state == models[N_WAL - 1], diff(state, models[N_WAL - 1])
        db.put(b"after", b"torn", sync=True)
    finally:
        db.close()
    db = shaledb.open(path)
    try:
        assert scan(db) == {**models[N_WAL - 1], b"after": b"torn"}
    finally:
        db.close()


@pytest.mark.parametrize("damage", ["flip-last-record", "truncate-last-record"])
def test_wal_damage_at_end_of_older_segment(tmp_path: Path, damage: str) -> None:
    """Only the newest segment may have a torn tail: an older one was sealed and synced
    before the next one started, so damage in it is corruption in strict mode;
    point_in_time keeps the prefix and saves the rest (the newer segment too) under lost/."""
    path = str(tmp_path / "db")
    segs, models = two_live_segments(path)
    off, size = log_records(segs[0])[-1]
    if damage == "flip-last-record":
        flip(segs[0], off + size - 3)
    else:
        truncate(segs[0], off + size // 2)
    with pytest.raises(shaledb.CorruptionError):
        shaledb.open(path)
    db = shaledb.open(path, wal_recovery="point_in_time")
    try:
        state = scan(db)
        assert state == models[19], diff(state, models[19])
        cut = db.stats()["wal_recovery"]["cut"]
        assert [c["file"] for c in cut] == [os.path.basename(p) for p in segs]
        assert all(os.path.exists(os.path.join(path, c["saved_to"])) for c in cut)
    finally:
        db.close()


def test_wal_garbage_appended_after_last_record(tmp_path: Path) -> None:
    """Junk after the last record (a crash while extending the file) is a torn tail."""
    path = str(tmp_path / "db")
    seg, models = _wal_db(path)
    with open(seg, "ab") as fh:
        fh.write(b"\xdb\x5a\x01" + os.urandom(40))
    db = shaledb.open(path)
    try:
        assert scan(db) == models[N_WAL]
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------
# Tables

N_SST = 400


def _expected_sst() -> dict[bytes, bytes]:
    return {key(i): value(i, size=60 + i % 50) for i in range(N_SST)}


def _sst_db(path: str, compression: str = "none") -> tuple[str, dict[bytes, bytes]]:
    """One flushed table of N_SST keys in many 1 KiB blocks; nothing in the WAL."""
    expected = _expected_sst()
    db = shaledb.open(path, block_size=1024, compression=compression)
    for k, v in expected.items():
        db.put(k, v)
    db.flush()
    st_ = db.stats()
    db.close()
    assert sum(x["files"] for x in st_["levels"]) == 1, st_["levels"]
    ssts = files(path, ".sst")
    assert len(ssts) == 1
    return ssts[0], expected


def _open_nocache(path: str, **kw: Any) -> Any:
    return shaledb.open(path, block_cache_size=0, **kw)


def _check_reads_never_wrong(path: str, expected: dict[bytes, bytes]) -> dict[str, int]:
    """Open and read everything: each read returns the right answer or raises
    CorruptionError. Returns counts of outcomes."""
    outcome = {"open_corrupt": 0, "ok": 0, "corrupt": 0}
    try:
        db = _open_nocache(path)
    except shaledb.CorruptionError:
        outcome["open_corrupt"] = 1
        return outcome
    try:
        for k in list(expected) + [b"key-absent", key(N_SST + 1), b""]:
            try:
                got = db.get(k)
            except shaledb.CorruptionError:
                outcome["corrupt"] += 1
                continue
            assert got == expected.get(k), (
                f"get({k!r}) returned {None if got is None else got[:30]!r} instead of "
                f"{expected.get(k, b'<absent>')[:30]!r}")
            outcome["ok"] += 1
        for reverse in (False, True):
            seen = []
            try:
                for k, v in db.range(reverse=reverse):
                    assert expected.get(k) == v, f"range returned wrong pair for {k!r}"
                    seen.append(k)
            except shaledb.CorruptionError:
                outcome["corrupt"] += 1
            else:
                assert seen == sorted(expected, reverse=reverse), "a scan silently lost keys"
                outcome["ok"] += 1
    finally:
        db.close()
    return outcome


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_sst_data_block_flip(tmp_path: Path, compression: str) -> None:
    path = str(tmp_path / "db")
    sst, expected = _sst_db(path, compression)
    lay = SstLayout(sst)
    assert len(lay.data_blocks) >= 5
    b = len(lay.data_blocks) // 2
    _last, off, size = lay.data_blocks[b]
    flip(sst, off + size // 2, 0x10)
    bad = set(lay.block_keys(b, expected))
    assert bad
    db = _open_nocache(path)
    try:
        for k in sorted(bad):
            with pytest.raises(shaledb.CorruptionError):
                db.get(k)
        with pytest.raises(shaledb.CorruptionError):
            list(db.range(min(bad), max(bad) + b"\0"))
        with pytest.raises(shaledb.CorruptionError):
            scan(db)
        with pytest.raises(shaledb.CorruptionError):
            list(db.range(reverse=True))
        # Keys in other blocks are intact and still readable, by get and by range.
        good = {k: v for k, v in expected.items() if k not in bad}
        check_gets(db, good)
        # (A range ending inside the damaged block's key interval must read that block, as
        # the index only knows last keys: stop at the previous block's last key.)
        prev_last = lay.data_blocks[b - 1][0]
        below = dict(db.range(None, prev_last))
        above = dict(db.range(max(bad) + b"\0", None))
        assert below == {k: v for k, v in good.items() if k < prev_last}
        assert above == {k: v for k, v in good.items() if k > max(bad)}
        assert list(db.range(max(bad) + b"\0", None, reverse=True)) == sorted(
            above.items(), reverse=True)
        # The database keeps working for writes to unaffected keys.
        db.put(b"new", b"1")
        assert db.get(b"new") == b"1"
    finally:
        db.close()


def test_sst_data_block_flip_with_block_cache(tmp_path: Path) -> None:
    """Same with the block cache on (after a reopen the damaged block is not cached)."""
    path = str(tmp_path / "db")
    sst, expected = _sst_db(path)
    lay = SstLayout(sst)
    b = 1
    flip(sst, lay.data_blocks[b][1] + 3)
    bad = lay.block_keys(b, expected)
    db = shaledb.open(path)
    try:
        for _ in range(2):  # the failure is not cached as a good block
            for k in bad:
                with pytest.raises(shaledb.CorruptionError):
                    db.get(k)
        check_gets(db, {k: v for k, v in expected.items() if k not in bad})
    finally:
        db.close()


def test_sst_block_trailer_flip(tmp_path: Path) -> None:
    """The compression-type byte and the CRC of a data block are checked too."""
    path = str(tmp_path / "db")
    sst, expected = _sst_db(path)
    lay = SstLayout(sst)
    _last, off, size = lay.data_blocks[0]
    bad = lay.block_keys(0, expected)
    for spot in (off + size, off + size + 1, off + size + SST_TRAILER - 1):
        flip(sst, spot, 0x01)
        db = _open_nocache(path)
        try:
            for k in bad[:3]:
                with pytest.raises(shaledb.CorruptionError):
                    db.get(k)
        finally:
            db.close()
        flip(sst, spot, 0x01)  # repair
    db = _open_nocache(path)
    try:
        check_gets(db, expected)
    finally:
        db.close()


def _assert_table_unreadable(path: str, expected: dict[bytes, bytes]) -> None:
    """Open or first read raises CorruptionError; no read returns data."""
    try:
        db = _open_nocache(path)
    except shaledb.CorruptionError:
        return
    try:
        for k in list(expected)[:: len(expected) // 10]:
            with pytest.raises(shaledb.CorruptionError):
                db.get(k)
        with pytest.raises(shaledb.CorruptionError):
            scan(db)
    finally:
        db.close()


@pytest.mark.parametrize("part", ["index", "filter", "props"])
def test_sst_metadata_block_flip(tmp_path: Path, part: str) -> None:
    path = str(tmp_path / "db")
    sst, expected = _sst_db(path)
    lay = SstLayout(sst)
    off, size = getattr(lay, part)
    assert size > 0
    flip(sst, off + size // 2, 0x04)
    _assert_table_unreadable(path, expected)


@pytest.mark.parametrize("spot", ["magic", "index-offset", "filter-size", "version", "crc",
                                  "padding"])
def test_sst_footer_flip(tmp_path: Path, spot: str) -> None:
    path = str(tmp_path / "db")
    sst, expected = _sst_db(path)
    lay = SstLayout(sst)
    rel = {"filter-size": 8, "index-offset": 12, "version": 36, "padding": 44, "crc": 52,
           "magic": 60}[spot]
    flip(sst, lay.footer_offset + rel, 0x01)
    _assert_table_unreadable(path, expected)


@pytest.mark.parametrize("cut", [1, SST_FOOTER_SIZE - 1, SST_FOOTER_SIZE, SST_FOOTER_SIZE + 3,
                                 "half", "all-but-8", "empty"])
def test_sst_truncated(tmp_path: Path, cut: Any) -> None:
    path = str(tmp_path / "db")
    sst, expected = _sst_db(path)
    size = os.path.getsize(sst)
    new = {"half": size // 2, "all-but-8": 8, "empty": 0}.get(cut)
    truncate(sst, size - cut if new is None else new)
    _assert_table_unreadable(path, expected)


def test_sst_missing_file(tmp_path: Path) -> None:
    """A table the manifest lists is gone: typed error, not a bare FileNotFoundError."""
    path = str(tmp_path / "db")
    sst, expected = _sst_db(path)
    os.unlink(sst)
    try:
        db = _open_nocache(path)
    except (shaledb.CorruptionError, shaledb.StorageError):
        return
    try:
        with pytest.raises((shaledb.CorruptionError, shaledb.StorageError)):
            db.get(key(0))
    finally:
        db.close()


# -- random flips anywhere in a table ---------------------------------------------------------


@pytest.fixture(scope="module")
def pristine_sst_dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = {}
    for compression in ("none", "lz4"):
        path = str(tmp_path_factory.mktemp(f"pristine-{compression}") / "db")
        _sst_db(path, compression)
        out[compression] = path
    return out


def _copy(src: str) -> tuple[str, str]:
    tmp = tempfile.mkdtemp(prefix="shaledb-flip-")
    dst = os.path.join(tmp, "db")
    shutil.copytree(src, dst)
    os.chmod(dst, 0o700)
    return tmp, dst


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compression=st.sampled_from(["none", "lz4"]),
       where=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
       mask=st.integers(min_value=1, max_value=255))
def test_random_sst_flip_never_returns_wrong_data(pristine_sst_dbs: dict[str, str],
                                                  compression: str, where: float,
                                                  mask: int) -> None:
    tmp, path = _copy(pristine_sst_dbs[compression])
    try:
        sst = files(path, ".sst")[0]
        offset = int(where * os.path.getsize(sst))
        flip(sst, offset, mask)
        outcome = _check_reads_never_wrong(path, _expected_sst())
        # Every byte of a table is covered by a checksum: a flip is always noticed by some read.
        assert outcome["open_corrupt"] or outcome["corrupt"], (
            f"flip at {offset} (mask {mask:#x}) of {os.path.getsize(sst)} went unnoticed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("seed", range(12))
def test_random_multi_byte_damage(pristine_sst_dbs: dict[str, str], seed: int) -> None:
    """Several random flips (or a zeroed run of bytes) at once, seeded."""
    rng = random.Random(seed)
    tmp, path = _copy(pristine_sst_dbs["lz4" if seed % 2 else "none"])
    try:
        sst = files(path, ".sst")[0]
        size = os.path.getsize(sst)
        if seed % 3 == 0:
            start = rng.randrange(size - 1)
            with open(sst, "r+b") as fh:
                fh.seek(start)
                fh.write(b"\0" * min(rng.randint(1, 4096), size - start))
        else:
            for _ in range(rng.randint(2, 6)):
                flip(sst, rng.randrange(size), rng.randint(1, 255))
        _check_reads_never_wrong(path, _expected_sst())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# MANIFEST and CURRENT


def _manifest_db(path: str) -> tuple[str, dict[bytes, bytes]]:
    """A database whose live manifest holds a snapshot and several edits (flushes)."""
    db = shaledb.open(path, memtable_size=64 * 1024, l0_compaction_trigger=8,
                      l0_slowdown_trigger=8, l0_stop_trigger=12)
    model = {}
    for round_ in range(4):
        for i in range(40):
            k, v = key(round_ * 40 + i), value(round_ * 40 + i)
            db.put(k, v)
            model[k] = v
        db.flush()
    db.close()
    manifest = current_manifest(path)
    assert len(log_records(manifest)) >= 4, "expected a snapshot plus one edit per flush"
    return manifest, model


@pytest.mark.parametrize("which", ["first", "middle"])
@pytest.mark.parametrize("spot", ["payload", "crc", "length"])
def test_manifest_flip_raises(tmp_path: Path, which: str, spot: str) -> None:
    path = str(tmp_path / "db")
    manifest, _model = _manifest_db(path)
    recs = log_records(manifest)
    off, size = recs[0] if which == "first" else recs[len(recs) // 2]
    rel = {"payload": LOG_HEADER.size + (size - LOG_HEADER.size) // 2, "crc": 20,
           "length": 4}[spot]
    flip(manifest, off + rel, 0x02)
    for mode in ("strict", "point_in_time"):  # the WAL mode does not relax the manifest
        with pytest.raises(shaledb.CorruptionError):
            shaledb.open(path, wal_recovery=mode)
    # Nothing was deleted by the refused opens: repairing the byte restores everything.
    flip(manifest, off + rel, 0x02)
    db = shaledb.open(path)
    try:
        assert scan(db) == _model
    finally:
        db.close()


def test_manifest_last_record_flip_never_loses_data_silently(tmp_path: Path) -> None:
    """A complete last manifest record with a bad checksum was synced before the engine acted
    on it (WAL deleted): dropping it as a "torn tail" would silently lose the flush it
    recorded. Opening must raise CorruptionError or still return every key."""
    path = str(tmp_path / "db")
    manifest, model = _manifest_db(path)
    off, size = log_records(manifest)[-1]
    flip(manifest, off + LOG_HEADER.size + (size - LOG_HEADER.size) // 2, 0x02)
    try:
        db = shaledb.open(path)
    except shaledb.CorruptionError:
        return
    try:
        state = scan(db)
        assert state == model, f"silent data loss: {diff(state, model)}"
    finally:
        db.close()


def test_manifest_truncated_mid_record_is_torn(tmp_path: Path) -> None:
    """A manifest cut inside its last record looks exactly like a crash during an edit append
    (which the engine never acted on), so it may be dropped; but the open must be clean: a
    typed error or a consistent database that never returns a wrong value."""
    path = str(tmp_path / "db")
    manifest, model = _manifest_db(path)
    off, size = log_records(manifest)[-1]
    truncate(manifest, off + size // 2)
    try:
        db = shaledb.open(path)
    except shaledb.CorruptionError:
        return
    try:
        state = scan(db)
        assert all(model.get(k) == v for k, v in state.items())
        check_gets(db, state)
    finally:
        db.close()


@pytest.mark.parametrize("content", [b"MANIFEST-999999\n", b"", b"garbage\n",
                                     b"MANIFEST-000001", b"../MANIFEST-000001\n",
                                     b"\xff\xfe\n"])
def test_current_damaged(tmp_path: Path, content: bytes) -> None:
    path = str(tmp_path / "db")
    _manifest, model = _manifest_db(path)
    current = Path(path) / "CURRENT"
    good = current.read_bytes()
    if content == b"MANIFEST-000001" and good.strip() == b"MANIFEST-000001":
        content = b"MANIFEST-000002"
    current.write_bytes(content)
    with pytest.raises(shaledb.CorruptionError):
        shaledb.open(path)
    current.write_bytes(good)
    db = shaledb.open(path)
    try:
        assert scan(db) == model
    finally:
        db.close()


def test_current_missing_with_files_present(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    _manifest_db(path)
    os.unlink(os.path.join(path, "CURRENT"))
    with pytest.raises(shaledb.CorruptionError):
        shaledb.open(path)
    assert files(path, ".sst"), "a refused open must not delete anything"


def test_manifest_missing(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    manifest, _ = _manifest_db(path)
    os.unlink(manifest)
    with pytest.raises(shaledb.CorruptionError):
        shaledb.open(path)
