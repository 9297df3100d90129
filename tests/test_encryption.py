"""Encryption at rest (issue 11; docs/security.md, docs/format.md "Encrypted databases").

What an encrypted database must do, each checked here against the real files:
- no user key or value byte in plaintext in any file, after fills, flushes, compactions (in
  the worker process and in a thread), reopens and unflushed WAL writes, with a control run
  without encryption that finds them (so the search can fail);
- open refuses a missing key, a wrong key, a plain database with a key, a loose key file,
  with EncryptionError, before anything is read or written;
- never the same (key, nonce) twice, collected over a long run with reopens, recovery copies
  and compactions;
- bit flips (checksum recomputed or not) and blocks or records moved within a file, between
  files or between roles are detected: CorruptionError, never other data;
- rotate_key: afterwards only the new key opens the database; reencrypt: every file under a
  fresh data key; encrypt/decrypt copies.
The files are taken apart with tests/format_reader.py (written from docs/format.md).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import crc32c
import pytest

import format_reader as fr
import shaledb
from shaledb.engine import crypto
from shaledb.errors import CorruptionError, EncryptionError, InvalidArgument

KEY = bytes(range(32))
OTHER = bytes(range(100, 132))
SMALL: dict[str, Any] = {"memtable_size": 64 * 1024, "target_file_size": 64 * 1024,
                         "max_bytes_for_level_base": 128 * 1024, "block_size": 1024,
                         "l0_compaction_trigger": 2, "fsync_interval": None}
#: No compaction the test does not ask for: a copy of the directory taken while the database
#: is open is then what a crash at that moment leaves (nothing changes files meanwhile).
QUIET: dict[str, Any] = {**SMALL, "l0_compaction_trigger": 40, "l0_slowdown_trigger": 40,
                         "l0_stop_trigger": 48, "max_bytes_for_level_base": 1 << 30}


def _crash_copy(db: shaledb.DB, dest: Path, writes: int = 50) -> None:
    """What a crash leaves, copied while ``db`` stays open: flush (waiting for the
    background flush), leave a few writes in the WAL only, copy the directory."""
    db.flush()
    for i in range(writes):
        db.put(b"ukey-unflushed-%04d" % i, b"uval-unflushed-%04d" % i)
    for _ in range(100):
        try:  # the flush thread may still be deleting the files the flush made obsolete
            shutil.copytree(db.path, dest, ignore=shutil.ignore_patterns("LOCK"))
            return
        except shutil.Error:
            shutil.rmtree(dest, ignore_errors=True)
            time.sleep(0.05)
    raise AssertionError("the database never stood still for a copy")


def _key(i: int) -> bytes:
    return b"ukey-%08d" % i


def _value(i: int, rng: random.Random) -> bytes:
    # Random hex: LZ4 finds nothing to compress, so a plain table holds it as it is.
    return b"uval-" + rng.randbytes(24 + i % 40).hex().encode()


def _files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (lost/ included), by relative name."""
    out = {}
    for root, _, names in os.walk(path):
        for n in names:
            p = Path(root) / n
            try:
                out[str(p.relative_to(path))] = p.read_bytes()
            except FileNotFoundError:
                pass  # deleted meanwhile by the open database (an obsolete file)
    return out


def _plaintext_hits(path: Path, needles: list[bytes]) -> dict[str, list[bytes]]:
    """Which files hold which needles (or the prefixes every key and value starts with)."""
    hits: dict[str, list[bytes]] = {}
    for name, data in _files(path).items():
        found = [n for n in needles if n in data]
        if found:
            hits[name] = found
    return hits


def _write_key_file(path: Path, key: bytes = KEY, mode: int = 0o600, text: bool = True) -> str:
    path.write_bytes(key.hex().encode() + b"\n" if text else key)
    path.chmod(mode)
    return str(path)


# -- no plaintext --------------------------------------------------------------------------

@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "control"])
def test_no_key_or_value_byte_in_plaintext_in_any_file(tmp_path: Path, encrypted: bool) -> None:
    """Grep every file after each phase; the control run (same workload, no key) must find
    keys and values in every kind of file that holds them, so the search can fail."""
    rng = random.Random(11)
    path = tmp_path / "db"
    opts: dict[str, Any] = {**SMALL, "compaction_process_threshold": 0}
    if encrypted:
        opts["encryption_key"] = KEY
    written: list[bytes] = []
    key_hex = KEY.hex().encode()

    def check(phase: str, kinds: set[str]) -> None:
        needles = [b"ukey-", b"uval-", *written[-50:]]
        hits = _plaintext_hits(path, needles)
        # The master key never reaches any file, in any form we can think of.
        assert not _plaintext_hits(path, [KEY, key_hex, key_hex.upper()]), phase
        if encrypted:
            assert not hits, f"{phase}: plaintext found: {sorted(hits)}"
            return
        for kind in kinds:  # the control finds them where they are
            assert any(kind in name for name in hits), (phase, kind, sorted(hits))

    db = shaledb.open(path, **opts)
    try:
        for i in range(3000):
            v = _value(i, rng)
            db.put(_key(i), v, sync=i % 500 == 0)
            written += [_key(i), v]
        check("unflushed WAL writes", {".log"})
        db.flush()
        check("after a flush", {".sst", "MANIFEST"})
        for i in range(3000, 9000):
            v = _value(i, rng)
            db.put(_key(i), v)
            written += [_key(i), v]
        db.compact_range()  # in the worker process (threshold 0)
        assert db.stats()["compactions_in_worker"] > 0
        check("after compactions in the worker", {".sst", "MANIFEST"})
    finally:
        db.close()
    quiet = {**opts, **QUIET, "compaction_process_threshold": None}
    db = shaledb.open(path, **quiet)
    try:
        for i in range(9000, 12000):  # a compaction in a thread, and more WAL
            v = _value(i, rng)
            db.put(_key(i), v)
            written += [_key(i), v]
        db.compact_range(_key(0), _key(5000))
        for i in range(12000, 12100):
            db.put(_key(i), b"uval-unflushed-%d" % i)
        check("after a thread compaction, with unflushed writes", {".sst", ".log"})
        # A copy taken while open (what a crash leaves), reopened: recovery copies the
        # unflushed records into a new segment.
        crashed = tmp_path / "crashed"
        _crash_copy(db, crashed)
    finally:
        db.close()
    with shaledb.open(crashed, **quiet) as copy:
        assert copy.get(b"ukey-unflushed-0042") == b"uval-unflushed-0042"
    path = crashed
    check("after recovery of a crashed copy", {".log"})


# -- keys at open --------------------------------------------------------------------------

def test_open_refuses_a_missing_wrong_or_unexpected_key_and_writes_nothing(tmp_path) -> None:
    path = tmp_path / "db"
    with shaledb.open(path, encryption_key=KEY) as db:
        db.put(b"k", b"v")
        assert db.encrypted
    before = _files(path)
    key_id = crypto.MasterKey(KEY).key_id
    with pytest.raises(EncryptionError, match=f"encrypted \\(key id {key_id}\\)"):
        shaledb.open(path)
    with pytest.raises(EncryptionError, match="wrong encryption key") as info:
        shaledb.open(path, encryption_key=OTHER)
    assert key_id in str(info.value) and crypto.MasterKey(OTHER).key_id in str(info.value)
    assert KEY.hex() not in str(info.value) and OTHER.hex() not in str(info.value)
    with pytest.raises(EncryptionError):
        shaledb.open(path, encryption_key=OTHER, read_only=True)
    with pytest.raises(EncryptionError, match="32 bytes"):
        shaledb.open(path, encryption_key=KEY[:16])
    assert _files(path) == before  # nothing read into the WAL, nothing written
    plain = tmp_path / "plain"
    with shaledb.open(plain) as db:
        db.put(b"k", b"v")
    before = _files(plain)
    with pytest.raises(EncryptionError, match="not encrypted.*shaledb encrypt"):
        shaledb.open(plain, encryption_key=KEY)
    assert _files(plain) == before
    with shaledb.open(path, encryption_key=KEY) as db:
        assert db.get(b"k") == b"v"


def test_a_key_file_readable_by_others_is_refused(tmp_path) -> None:
    path = tmp_path / "db"
    for mode in (0o644, 0o640, 0o604, 0o660, 0o602):
        kf = _write_key_file(tmp_path / f"key-{mode:o}", mode=mode)
        with pytest.raises(EncryptionError, match=f"mode {mode:04o}.*chmod 600"):
            shaledb.open(path, encryption_key_file=kf)
    assert not path.exists()  # refused before the directory was created
    raw = _write_key_file(tmp_path / "raw", text=False)
    with shaledb.open(path, encryption_key_file=raw) as db:
        db.put(b"k", b"v")
    hexed = _write_key_file(tmp_path / "hex", mode=0o400)
    link = tmp_path / "link"
    link.symlink_to(hexed)  # secret mounts use symbolic links: the target is judged
    with shaledb.open(path, encryption_key_file=str(link)) as db:
        assert db.get(b"k") == b"v"
    for bad in (b"\x01" * 31, b"zz" * 32, KEY.hex().encode()[:-1], b""):
        (tmp_path / "bad").write_bytes(bad)
        (tmp_path / "bad").chmod(0o600)
        with pytest.raises(EncryptionError, match="32 raw bytes or 64 hexadecimal"):
            shaledb.open(path, encryption_key_file=str(tmp_path / "bad"))
    with pytest.raises(EncryptionError, match="does not exist"):
        shaledb.open(path, encryption_key_file=str(tmp_path / "missing"))
    with pytest.raises(InvalidArgument, match="not both"):
        shaledb.open(path, encryption_key=KEY, encryption_key_file=raw)


def test_keys_stay_out_of_repr_stats_options_and_the_worker(tmp_path) -> None:
    """Key bytes never in the options' repr, stats, OPTIONS, nor the compaction worker's
    command line or environment (they reach it over its pipe)."""
    path = tmp_path / "db"
    db = shaledb.open(path, encryption_key=KEY, compaction_process_threshold=0, **SMALL)
    try:
        assert "encryption_key" not in repr(db.options) or KEY.hex() not in repr(db.options)
        assert db.options.encryption_key is None  # the engine kept no copy
        assert KEY.hex() not in str(db.stats()) and str(list(KEY)) not in str(db.stats())
        rng = random.Random(1)
        for i in range(4000):
            db.put(_key(i), _value(i, rng))
        db.compact_range()
        worker = db._engine._worker
        assert worker is not None and worker._proc is not None
        pid = worker._proc.pid
        for what in ("cmdline", "environ"):
            data = Path(f"/proc/{pid}/{what}").read_bytes()
            assert KEY not in data and KEY.hex().encode() not in data, what
    finally:
        db.close()
    assert KEY.hex().encode() not in (path / "OPTIONS").read_bytes()
    assert b"encryption_key" not in (path / "OPTIONS").read_bytes()
    opts = shaledb.Options(encryption_key=KEY)
    assert KEY.hex() not in repr(opts) and repr(KEY) not in repr(opts)


# -- nonces --------------------------------------------------------------------------------

def test_no_nonce_is_used_twice_under_one_key(tmp_path, monkeypatch) -> None:
    """Every (file key, nonce) pair used to encrypt, collected over a long run: writes,
    memtable switches, flushes, compactions in a thread, manifest rollovers, clean reopens
    and recoveries of copies taken while open (records copied into new segments, by two
    openers of the same copy), rotate_data_key; none repeats."""
    seen: list[tuple[bytes, bytes]] = []
    monkeypatch.setattr(crypto, "nonce_observer", lambda fp, nonce: seen.append((fp, nonce)))
    path = tmp_path / "db"
    opts: dict[str, Any] = {**QUIET, "encryption_key": KEY, "max_manifest_size": 4096,
                            "compaction_process_threshold": None}
    rng = random.Random(3)
    n = 0
    for round_ in range(8):
        db = shaledb.open(path, rotate_data_key=round_ == 5, **opts)
        try:
            for _ in range(2500):
                db.put(_key(rng.randrange(6000)), _value(n, rng), sync=n % 300 == 0)
                n += 1
            if round_ % 2:
                db.compact_range()
            crashed = tmp_path / f"crashed-{round_}"
            _crash_copy(db, crashed)
        finally:
            db.close()
        for _ in range(2):  # the same crashed state recovered twice: new salts each time
            again = tmp_path / f"again-{round_}-{_}"
            shutil.copytree(crashed, again)
            with shaledb.open(again, **opts) as copy:
                copy.put(b"after recovery", b"x")
    assert len(seen) > 10_000
    assert len(set(seen)) == len(seen), "a (key, nonce) pair was used twice"
    kinds = {fp for fp, _ in seen}
    assert len(kinds) > 100  # many files, each with its own key


def test_a_writer_cipher_refuses_to_seal_an_offset_twice() -> None:
    ring, _ = crypto.new_keyring(crypto.MasterKey(KEY))
    cipher = ring.writer(crypto.TABLE_FILE, 7)
    cipher.seal(b"a", 48, crypto.DATA_BLOCK)
    with pytest.raises(AssertionError, match="reuse a nonce"):
        cipher.seal(b"b", 48, crypto.DATA_BLOCK)
    with pytest.raises(AssertionError, match="reuse a nonce"):
        cipher.seal(b"b", 10, crypto.DATA_BLOCK)
    other = ring.writer(crypto.TABLE_FILE, 7)  # same number (a crash lost the first file)
    assert other.salt != cipher.salt
    assert other.seal(b"a", 48, crypto.DATA_BLOCK) != cipher._aead.encrypt(
        (48).to_bytes(12, "little"), b"a", struct.pack("<QQBB", 7, 48, crypto.DATA_BLOCK, 0))


def test_the_wal_framer_keeps_the_nonce_guard_and_reports_its_nonces(tmp_path, monkeypatch) -> None:
    """``LogWriter.sealed_framer`` seals inline (FileCipher.seal_record's guard copied into
    the put path): it too refuses an offset that does not grow, allows it again only after
    ``discard`` (WriteAheadLog.unframe), and shows every nonce to the test hook."""
    from shaledb.engine.logfile import LogWriter
    from shaledb.engine.vfs import PosixFileSystem

    seen: list[tuple[bytes, bytes]] = []
    monkeypatch.setattr(crypto, "nonce_observer", lambda fp, nonce: seen.append((fp, nonce)))
    ring, _ = crypto.new_keyring(crypto.MasterKey(KEY))
    fs = PosixFileSystem()
    file = fs.create(str(tmp_path / "000007.log"))
    try:
        writer = LogWriter(file, 7, cipher=ring.writer(crypto.WAL_FILE, 7))
        frame = writer.sealed_framer()
        first = frame(b"payload")
        with pytest.raises(AssertionError, match="reuse a nonce"):
            frame(b"again, same offset")  # nothing appended: the file did not grow
        assert writer.cipher is not None
        writer.cipher.discard(file.size)  # the record was dropped unwritten: may seal again
        assert frame(b"payload") == first  # the same offset sealed again: allowed once
        file.append(first)
        frame(b"next")
        assert [n for _, n in seen] == [(48).to_bytes(12, "little")] * 2 + [
            (48 + len(first)).to_bytes(12, "little")]
    finally:
        file.close()


# -- tampering -----------------------------------------------------------------------------

def _encrypted_db(path: Path, n: int = 3000, **extra: Any) -> dict[bytes, bytes]:
    """A closed encrypted database with tables on disk and records in the WAL; the model."""
    model = {}
    with shaledb.open(path, encryption_key=KEY, compression="none",
                      **{**SMALL, "l0_compaction_trigger": 8, **extra}) as db:
        for i in range(n):
            v = b"uval-%08d-" % i + b"x" * 40  # equal sizes: equal blocks
            db.put(_key(i), v)
            model[_key(i)] = v
        db.flush()
        for i in range(n, n + 50):
            v = b"wal-%08d" % i
            db.put(_key(i), v, sync=True)
            model[_key(i)] = v
    return model


def _keys_of(path: Path) -> fr.Keys:
    return fr.read_keyring((path / "KEYRING").read_bytes(), KEY)


def _table_blocks(path: Path, table: Path) -> list[tuple[int, int]]:
    """(offset, size) of the data blocks of ``table``, from its index (format_reader)."""
    number = int(table.name.split(".")[0])
    t = fr.read_table(table.read_bytes(), number, _keys_of(path))
    return list(zip(t.index[1], t.index[2], strict=True))


def _rewrite_block(data: bytearray, offset: int, size: int, sealed: bytes) -> None:
    data[offset:offset + size] = sealed
    data[offset + size + 1:offset + size + 5] = crc32c.crc32c(
        bytes(data[offset:offset + size + 1])).to_bytes(4, "little")


def _all_reads_fail_or_match(path: Path, model: dict[bytes, bytes]) -> int:
    """Read every key: each either raises CorruptionError or returns the model's value
    (never another one); returns how many failed."""
    failed = 0
    with shaledb.open(path, encryption_key=KEY, read_only=True) as db:
        for k, v in model.items():
            try:
                got = db.get(k)
            except CorruptionError:
                failed += 1
                continue
            assert got == v, k
        with pytest.raises(CorruptionError):
            list(db.range())
    return failed


@pytest.mark.parametrize("fix_crc", [False, True], ids=["bit-flip", "bit-flip-crc-fixed"])
def test_a_flipped_bit_in_a_table_block_is_detected(tmp_path, fix_crc) -> None:
    path = tmp_path / "db"
    model = _encrypted_db(path)
    table = sorted(path.glob("*.sst"))[0]
    blocks = _table_blocks(path, table)
    off, size = blocks[len(blocks) // 2]
    data = bytearray(table.read_bytes())
    data[off + 7] ^= 0x10
    if fix_crc:
        _rewrite_block(data, off, size, bytes(data[off:off + size]))
    table.write_bytes(bytes(data))
    assert _all_reads_fail_or_match(path, model) > 0
    report = shaledb.verify(str(path), encryption_key=KEY)
    kinds = {p.kind.value for p in report.damage}
    assert kinds == {"authentication" if fix_crc else "checksum"}, report.problems


def test_reads_authenticate_blocks_and_read_the_crc_only_to_name_a_failure(tmp_path) -> None:
    """Reads of an encrypted table skip the block CRC (the GCM tag covers every stored byte)
    and check it only when authentication fails, to say which it was: damage (checksum
    mismatch) or a change made with the CRC recomputed (authentication). A block whose CRC
    field alone is damaged still authenticates: reads return its data, verify reports the
    checksum."""
    path = tmp_path / "db"
    model = _encrypted_db(path)
    table = sorted(path.glob("*.sst"))[0]
    original = table.read_bytes()
    off, size = _table_blocks(path, table)[1]

    def first_error() -> str:
        with shaledb.open(path, encryption_key=KEY, read_only=True) as db:
            try:
                for k, v in model.items():
                    assert db.get(k) == v
            except CorruptionError as exc:
                return str(exc)
        return ""

    data = bytearray(original)
    data[off + 3] ^= 0x01  # damage: the CRC no longer matches
    table.write_bytes(bytes(data))
    assert f"checksum mismatch in block at offset {off}" in first_error()
    _rewrite_block(data, off, size, bytes(data[off:off + size]))  # tampering: CRC recomputed
    table.write_bytes(bytes(data))
    assert f"block at offset {off} fails authentication" in first_error()
    data = bytearray(original)
    data[off + size + 2] ^= 0x01  # the CRC field alone
    table.write_bytes(bytes(data))
    assert first_error() == ""
    report = shaledb.verify(str(path), encryption_key=KEY)
    assert {p.kind.value for p in report.damage} == {"checksum"}, report.problems


@pytest.mark.parametrize("what", ["within-table", "across-tables", "role"])
def test_a_block_moved_is_detected(tmp_path, what) -> None:
    """Equal-sized sealed blocks swapped inside a table, moved into another table at the same
    offset, or a data block put in the index's place: checksums pass, authentication
    (offset, file, kind in the associated data and the file key) does not."""
    path = tmp_path / "db"
    model = _encrypted_db(path, n=6000, memtable_size=128 * 1024)
    tables = sorted(path.glob("*.sst"))
    assert len(tables) >= 2
    a = bytearray(tables[0].read_bytes())
    blocks = _table_blocks(path, tables[0])
    if what == "within-table":
        (o1, s1), (o2, s2) = blocks[1], blocks[2]
        assert s1 == s2
        b1, b2 = bytes(a[o1:o1 + s1 + 5]), bytes(a[o2:o2 + s2 + 5])
        a[o1:o1 + s1 + 5], a[o2:o2 + s2 + 5] = b2, b1
    elif what == "across-tables":
        b = tables[1].read_bytes()
        o, s = _table_blocks(path, tables[1])[1]
        assert (o, s) == blocks[1]
        a[o:o + s + 5] = b[o:o + s + 5]
    else:
        footer = struct.unpack_from("<QIQIQII", a, len(a) - 64)
        index_off, index_size = footer[2], footer[3]
        o, s = next((o, s) for o, s in blocks if s <= index_size)
        sealed = bytes(a[o:o + s])
        # The index's place now holds a data block's sealed bytes (re-framed, CRC right).
        footer_l = list(footer)
        footer_l[3] = s
        a[index_off:index_off + s + 5] = a[o:o + s + 5]
        new_footer = struct.pack("<QIQIQII12x", *footer_l)
        a[len(a) - 64:len(a) - 12] = new_footer
        a[len(a) - 12:len(a) - 8] = crc32c.crc32c(new_footer).to_bytes(4, "little")
        assert sealed
    tables[0].write_bytes(bytes(a))
    if what == "role":
        with pytest.raises(CorruptionError, match="authentication"), \
                shaledb.open(path, encryption_key=KEY, read_only=True) as db:
            list(db.range())
        return
    assert _all_reads_fail_or_match(path, model) > 0
    report = shaledb.verify(str(path), encryption_key=KEY)
    assert {p.kind.value for p in report.damage} == {"authentication"}, report.problems


def test_tables_swapped_under_each_others_names_are_refused(tmp_path) -> None:
    """A table under another table's name: its header names its own number, and its file
    key derives from that number, so it is refused whatever the sizes say."""
    from shaledb.engine.sstable import TableReader
    from shaledb.engine.vfs import PosixFileSystem

    path = tmp_path / "db"
    _encrypted_db(path, n=6000, memtable_size=128 * 1024)
    t1, t2 = sorted(path.glob("*.sst"))[:2]
    n2 = int(t2.name.split(".")[0])
    t2.write_bytes(t1.read_bytes())
    ring = crypto.open_keyring((path / "KEYRING").read_bytes(), crypto.MasterKey(KEY), "db")
    with pytest.raises(CorruptionError, match="header says it is table"):
        TableReader(PosixFileSystem(), str(t2), n2, None, ring)
    data = bytearray(t2.read_bytes())  # its header made to say n2: authentication fails
    data[12:20] = n2.to_bytes(8, "little")
    data[44:48] = crc32c.crc32c(bytes(data[:44])).to_bytes(4, "little")
    t2.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="authentication"):
        TableReader(PosixFileSystem(), str(t2), n2, None, ring)
    with pytest.raises(CorruptionError), \
            shaledb.open(path, encryption_key=KEY, read_only=True) as db:
        list(db.range())


def _flip_log_record(log: Path, index: int, fix_crc: bool, kind: int) -> None:
    keys = _keys_of(log.parent)
    number = int(log.name.split("-")[-1].split(".")[0])
    lf = fr.read_log(log.read_bytes(), number, keys, kind)
    rec = [r for r in lf.records if r.type == fr.FULL][index]
    data = bytearray(log.read_bytes())
    start = rec.offset + fr.HEADER_V2
    data[start + 3] ^= 0x01
    if fix_crc:
        hcrc = int.from_bytes(data[rec.offset + 15:rec.offset + 19], "little")
        crc = crc32c.crc32c(bytes(data[start:rec.offset + rec.size]), hcrc)
        data[rec.offset + 19:rec.offset + 23] = crc.to_bytes(4, "little")
    log.write_bytes(bytes(data))


@pytest.mark.parametrize("fix_crc", [False, True], ids=["bit-flip", "bit-flip-crc-fixed"])
def test_a_changed_wal_record_is_corruption_not_a_torn_tail(tmp_path, fix_crc) -> None:
    """A WAL record in the middle changed with its checksums recomputed fails
    authentication: synced damage (strict refuses; point_in_time keeps what was before)."""
    path = tmp_path / "db"
    model = _encrypted_db(path)
    (log,) = path.glob("*.log")
    _flip_log_record(log, 10, fix_crc, fr.WAL_FILE)
    with pytest.raises(CorruptionError, match="authentication" if fix_crc else "damaged"):
        shaledb.open(path, encryption_key=KEY)
    with shaledb.open(path, encryption_key=KEY, wal_recovery="point_in_time") as db:
        for k, v in model.items():
            assert db.get(k) in (v, None)
        assert db.get(_key(3009)) == model[_key(3009)] and db.get(_key(3011)) is None


def test_a_record_failing_authentication_hides_no_fsync_evidence_after_it(tmp_path) -> None:
    """What a WAL segment says about its fsyncs (``vouches_prior``: whether the segments
    before it had been sealed) is framing, checksummed, not sealed: the open reads it the
    same whether or not a record fails authentication, as verify and a reader without the
    key do. Failed before: the scan stopped at the changed record, so a sync mark after it
    did not count (the open then judged an older segment's damage otherwise than verify)."""
    from shaledb.engine import logfile

    path = tmp_path / "db"
    db = shaledb.open(path, encryption_key=KEY, **QUIET)
    try:
        for i in range(5):
            db.put(_key(i), b"before the sync")
        db.put(_key(5), b"durable", sync=True)  # an fsync, then a sync mark
        for i in range(6, 10):
            db.put(_key(i), b"after the sync")
        copy = tmp_path / "copy"
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("LOCK", "*.log.new"))
    finally:
        db.close()
    (log,) = copy.glob("*.log")
    _flip_log_record(log, 0, True, fr.WAL_FILE)  # checksums recomputed: only the tag fails
    data = log.read_bytes()
    ring = crypto.open_keyring((copy / "KEYRING").read_bytes(), crypto.MasterKey(KEY),
                               str(copy))
    full = logfile.scan_log(data, expect=3, keyring=ring)
    framing = logfile.scan_log(data, expect=3, framing_only=True)
    assert full.damage is not None and "authentication" in full.damage.reason
    assert not full.records and framing.records  # (the first record is the changed one)
    assert framing.vouches_prior and full.vouches_prior


def test_a_changed_manifest_edit_is_refused(tmp_path) -> None:
    path = tmp_path / "db"
    _encrypted_db(path)
    manifest = path / (path / "CURRENT").read_text().split("\n")[0]
    _flip_log_record(manifest, 0, True, fr.MANIFEST_FILE)
    with pytest.raises(CorruptionError, match="authentication"):
        shaledb.open(path, encryption_key=KEY)


def test_a_plain_table_or_log_in_an_encrypted_database_is_never_read(tmp_path) -> None:
    """A table whose footer was changed to say "plain" (or a plain table copied in) is
    refused, as is a plain WAL segment: nothing unauthenticated is ever read."""
    path = tmp_path / "db"
    model = _encrypted_db(path)
    table = sorted(path.glob("*.sst"))[0]
    data = bytearray(table.read_bytes())
    data[-28:-24] = (2).to_bytes(4, "little")
    data[-12:-8] = crc32c.crc32c(bytes(data[-64:-12])).to_bytes(4, "little")
    table.write_bytes(bytes(data))
    assert _all_reads_fail_or_match(path, model) > 0
    plain = tmp_path / "plain"
    with shaledb.open(plain) as db:
        db.put(b"k", b"v")
    (log,) = path.glob("*.log")
    (plain_log,) = plain.glob("*.log")
    log.write_bytes(plain_log.read_bytes())
    with pytest.raises(CorruptionError):
        shaledb.open(path, encryption_key=KEY)


def test_keyring_damage_and_alteration_are_refused(tmp_path) -> None:
    path = tmp_path / "db"
    _encrypted_db(path, n=100)
    keyring = path / "KEYRING"
    original = keyring.read_bytes()
    keyring.write_bytes(original.replace(b'"active": 1', b'"active": 2'))
    with pytest.raises(CorruptionError, match="KEYRING .*damaged"):
        shaledb.open(path, encryption_key=KEY)
    body = original[:original.rindex(b"crc32c")].replace(b'"active": 1', b'"active": 2')
    keyring.write_bytes(body + b"crc32c %08x\n" % crc32c.crc32c(body))
    with pytest.raises(CorruptionError, match="altered"):
        shaledb.open(path, encryption_key=KEY)
    keyring.unlink()
    with pytest.raises(CorruptionError, match="KEYRING file is missing"):
        shaledb.open(path, encryption_key=KEY)
    keyring.write_bytes(original)
    with shaledb.open(path, encryption_key=KEY) as db:
        assert db.get(_key(5)) is not None


# -- rotation and conversion ---------------------------------------------------------------

def test_rotate_key_then_only_the_new_key_opens(tmp_path) -> None:
    path = tmp_path / "db"
    model = _encrypted_db(path)
    before = {n: b for n, b in _files(path).items() if n != "KEYRING"}
    old_file = _write_key_file(tmp_path / "old")
    new_file = _write_key_file(tmp_path / "new", OTHER)
    change = shaledb.rotate_key(str(path), old_key_file=old_file, new_key_file=new_file)
    assert change.new_key_id == crypto.MasterKey(OTHER).key_id
    # Nothing but KEYRING changed: the data keys were re-wrapped, no data rewritten.
    assert {n: b for n, b in _files(path).items() if n != "KEYRING"} == before
    with pytest.raises(EncryptionError, match="wrong encryption key"):
        shaledb.open(path, encryption_key=KEY)
    with shaledb.open(path, encryption_key=OTHER) as db:
        assert dict(db.range()) == model
    with pytest.raises(EncryptionError, match="wrong encryption key"):
        shaledb.rotate_key(str(path), old_key=KEY, new_key=KEY)


def test_rotate_data_key_and_reencrypt_put_every_file_under_a_fresh_data_key(tmp_path) -> None:
    path = tmp_path / "db"
    model = _encrypted_db(path)
    with shaledb.open(path, encryption_key=KEY, rotate_data_key=True) as db:
        assert dict(db.range()) == model  # old files still read with data key 1
        db.put(b"new", b"under key 2")
        db.flush()
    model[b"new"] = b"under key 2"
    keys = _keys_of(path)
    assert keys.active == 2 and sorted(keys.data_keys) == [1, 2]
    change = shaledb.reencrypt(str(path), key=KEY)
    assert change.data_keys == (change.active_data_key,) and change.active_data_key == 3
    keys = _keys_of(path)
    assert sorted(keys.data_keys) == [3]
    for f in path.iterdir():
        if f.suffix in (".sst", ".log") or f.name.startswith("MANIFEST"):
            assert int.from_bytes(f.read_bytes()[36:40], "little") == 3, f.name
    rd = fr.read_database(str(path), KEY)
    assert {k: v for k, (v, _) in rd.state(0).items()} == model
    with shaledb.open(path, encryption_key=KEY) as db:
        assert dict(db.range()) == model


def test_encrypt_and_decrypt_copy_every_key_with_its_expiry(tmp_path) -> None:
    now = [1_800_000_000.0]
    plain = tmp_path / "plain"
    with shaledb.open(plain, clock=lambda: now[0], **SMALL) as db:
        for i in range(3000):
            db.put(_key(i), b"value %d" % i, ttl=1000 if i % 3 == 0 else None)
        db.flush()
        for i in range(0, 3000, 7):
            db.delete(_key(i))
        db.put(b"expired", b"x", ttl=1)
    now[0] += 10
    kf = _write_key_file(tmp_path / "key")
    copied = shaledb.encrypt(str(plain), str(tmp_path / "enc"), key_file=kf,
                             clock=lambda: now[0])
    assert copied == 3000 - len(range(0, 3000, 7))
    assert fr.read_options((tmp_path / "enc" / "OPTIONS").read_bytes())["format_version"] == 7
    assert not _plaintext_hits(tmp_path / "enc", [b"ukey-", b"value "])
    with shaledb.open(plain, read_only=True, clock=lambda: now[0]) as a, \
            shaledb.open(tmp_path / "enc", encryption_key_file=kf, read_only=True,
                         clock=lambda: now[0]) as b:
        assert dict(a.range()) == dict(b.range())
        assert b.ttl(_key(3)) == pytest.approx(a.ttl(_key(3)))
    with pytest.raises(EncryptionError, match="not encrypted"):
        shaledb.decrypt(str(plain), str(tmp_path / "x"), key=KEY)
    assert shaledb.decrypt(str(tmp_path / "enc"), str(tmp_path / "dec"), key=KEY,
                           clock=lambda: now[0]) == copied
    assert fr.read_options((tmp_path / "dec" / "OPTIONS").read_bytes())["format_version"] == 6
    with shaledb.open(tmp_path / "dec", read_only=True, clock=lambda: now[0]) as c:
        assert len(list(c.range())) == copied and not c.encrypted


# -- verify and repair ---------------------------------------------------------------------

def test_verify_and_repair_need_the_key_and_report_tampering(tmp_path) -> None:
    path = tmp_path / "db"
    model = _encrypted_db(path)
    with pytest.raises(EncryptionError, match="encrypted"):
        shaledb.verify(str(path))
    with pytest.raises(EncryptionError, match="wrong encryption key"):
        shaledb.verify(str(path), encryption_key=OTHER)
    with pytest.raises(EncryptionError):
        shaledb.repair(str(path), str(tmp_path / "r0"), encryption_key=OTHER)
    assert shaledb.verify(str(path), encryption_key=KEY).ok
    table = sorted(path.glob("*.sst"))[0]
    off, size = _table_blocks(path, table)[3]
    data = bytearray(table.read_bytes())
    data[off] ^= 1
    _rewrite_block(data, off, size, bytes(data[off:off + size]))
    table.write_bytes(bytes(data))
    report = shaledb.repair(str(path), str(tmp_path / "r1"), encryption_key=KEY)
    assert [loss.kind.value for loss in report.losses] == ["authentication"]
    with shaledb.open(tmp_path / "r1", encryption_key=KEY) as db:
        assert db.encrypted
        got = dict(db.range())
    assert set(got) < set(model) and all(model[k] == v for k, v in got.items())
    assert not _plaintext_hits(tmp_path / "r1", [b"ukey-", b"uval-", b"wal-"])


def test_golden_key_file_cli_roundtrip(tmp_path) -> None:
    """The CLI takes --encryption-key-file on the commands that open a database, and
    rotate-key / encrypt / decrypt work end to end (a subprocess, like a user)."""
    kf = _write_key_file(tmp_path / "key")
    nf = _write_key_file(tmp_path / "new", OTHER)
    path = str(tmp_path / "db")

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHALEDB_")}
        p = subprocess.run([sys.executable, "-m", "shaledb.cli", *args], capture_output=True,
                           text=True, timeout=120, env=env)
        assert (p.returncode == 0) == ok, (args, p.stdout, p.stderr)
        return p

    run("put", path, "k1", "secret-value", "--encryption-key-file", kf)
    assert "secret-value" in run("get", path, "k1", "--encryption-key-file", kf).stdout
    p = run("get", path, "k1", ok=False)
    assert "EncryptionError" in p.stderr and "key id" in p.stderr
    p = run("get", path, "k1", "--encryption-key-file", nf, ok=False)
    assert "wrong encryption key" in p.stderr
    run("verify", path, "--encryption-key-file", kf)
    run("stats", path, "--encryption-key-file", kf)
    run("scan", path, "--encryption-key-file", kf)
    run("rotate-key", path, "--key-file", kf, "--new-key-file", nf)
    run("get", path, "k1", "--encryption-key-file", kf, ok=False)
    assert "secret-value" in run("get", path, "k1", "--encryption-key-file", nf).stdout
    run("decrypt", path, str(tmp_path / "plain"), "--key-file", nf)
    assert "secret-value" in run("get", str(tmp_path / "plain"), "k1").stdout
    run("encrypt", str(tmp_path / "plain"), str(tmp_path / "enc"), "--key-file", kf)
    assert "secret-value" in run("get", str(tmp_path / "enc"), "k1",
                                 "--encryption-key-file", kf).stdout
    env_key = run("get", str(tmp_path / "enc"), "k1", ok=False)
    assert "EncryptionError" in env_key.stderr
    run("repair", str(tmp_path / "enc"), str(tmp_path / "rep"), "--encryption-key-file", kf)
    loose = _write_key_file(tmp_path / "loose", mode=0o644)
    p = run("get", str(tmp_path / "enc"), "k1", "--encryption-key-file", loose, ok=False)
    assert "chmod 600" in p.stderr


def test_what_recovery_cuts_is_kept_encrypted_and_decryptable(tmp_path) -> None:
    """lost/ of an encrypted database: the source's 48-byte header, then the cut bytes (so
    the records there decrypt with the key, each at OFFSET + p - 48 of its source); no
    plaintext."""
    path = tmp_path / "db"
    model = _encrypted_db(path)
    (log,) = path.glob("*.log")
    header = log.read_bytes()[:48]
    _flip_log_record(log, 20, True, fr.WAL_FILE)
    number = int(log.name.split(".")[0])
    keys = _keys_of(path)
    with shaledb.open(path, encryption_key=KEY, wal_recovery="point_in_time") as db:
        cuts = db.stats()["wal_recovery"]["cut"]
        assert db.get(_key(3019)) == model[_key(3019)]
    (cut,) = cuts
    lost = path / cut["saved_to"]
    data = lost.read_bytes()
    assert data[:48] == header and lost.name == f"{log.name}.at-{cut['offset']}"
    assert not _plaintext_hits(path / "lost", [b"ukey-", b"wal-"])
    # The first record after the cut: framed as in its source, sealed for its old offset.
    salt = header[20:36]
    file_key = keys.file_key(int.from_bytes(header[36:40], "little"), salt, fr.WAL_FILE,
                             number)
    rec = fr._record_v2(data, 48, salt)
    assert rec is not None  # (the changed record: its checksums were recomputed)
    pos = 48 + rec.size
    nxt = fr._record_v2(data, pos, salt)
    while nxt is not None and nxt.type != fr.FULL:  # (sync marks of the sync=True puts)
        pos += nxt.size
        nxt = fr._record_v2(data, pos, salt)
    assert nxt is not None
    plain = fr.open_sealed(file_key, number, cut["offset"] + pos - 48, None, fr.FULL,
                           nxt.payload)
    (op,) = fr.decode_wal_payload(plain)
    assert op.key == _key(3021) and op.value == model[_key(3021)]


def test_rotate_key_survives_a_power_loss_at_every_step(tmp_path) -> None:
    """A power loss at each file-system operation of rotate_key: afterwards exactly one of
    the two keys opens the database, and it holds everything."""
    from shaledb.testing import FaultInjectionFS

    base = tmp_path / "base"
    model = _encrypted_db(base, n=200)
    fs = FaultInjectionFS()
    shutil.copytree(base, tmp_path / "count")
    shaledb.rotate_key(str(tmp_path / "count"), old_key=KEY, new_key=OTHER, fs=fs)
    n = fs.mutations
    assert n >= 3  # temp file, rename, directory fsync (at least)
    opened = {KEY: 0, OTHER: 0}
    for k in range(1, n + 1):
        path = tmp_path / f"k{k}"
        shutil.copytree(base, path)
        crash_fs = FaultInjectionFS(crash_at=k)
        with pytest.raises(shaledb.ShaleError):
            shaledb.rotate_key(str(path), old_key=KEY, new_key=OTHER, fs=crash_fs)
        assert crash_fs.crashed
        works = []
        for key in (KEY, OTHER):
            try:
                with shaledb.open(path, encryption_key=key, read_only=True) as db:
                    assert dict(db.range()) == model
                works.append(key)
            except EncryptionError:
                pass
        assert len(works) == 1, (k, works)
        opened[works[0]] += 1
    assert opened[KEY] > 0  # (a power loss before the rename keeps the old key)


def test_a_write_group_too_large_for_a_record_is_refused_before_sealing(tmp_path,
                                                                         monkeypatch) -> None:
    """InvalidArgument before anything is sealed or written (records limited to 4 KiB here):
    the database stays writable, and the next record seals at the same offset for the first
    time."""
    from shaledb.engine import logfile

    monkeypatch.setattr(logfile, "MAX_RECORD", 4096)  # the WAL's framer reads it at creation
    path = tmp_path / "db"
    with shaledb.open(path, encryption_key=KEY) as db:
        db.put(b"a", b"1")
        with pytest.raises(InvalidArgument, match="larger than a log record can hold"):
            db.put(b"big", b"x" * 5000)
        db.put(b"b", b"2", sync=True)
        assert db.stats()["background_error"] is None
    with shaledb.open(path, encryption_key=KEY) as db:
        assert dict(db.range()) == {b"a": b"1", b"b": b"2"}


def test_the_wals_sealed_framer_frames_exactly_as_the_log_writer(tmp_path) -> None:
    """``LogWriter.sealed_framer`` (the WAL's per-write path) makes the same bytes as
    ``LogWriter.frame``: two writers of one file key (same salt), records of several sizes
    (empty, small, a write group of 70 KB), after syncs that change the ``synced`` claim;
    the independent reader decrypts them all."""
    from shaledb.engine.logfile import LogWriter
    from shaledb.engine.vfs import default_fs

    ring, raw = crypto.new_keyring(crypto.MasterKey(KEY))
    first = ring.writer(crypto.WAL_FILE, 9)
    second = ring.reader(crypto.WAL_FILE, 9, first.key_id, first.salt)
    fs = default_fs()
    a = LogWriter(fs.create_mapped(str(tmp_path / "a")), 9, cipher=first)
    b = LogWriter(fs.create_mapped(str(tmp_path / "b")), 9, cipher=second)
    framer = b.sealed_framer()
    rng = random.Random(5)
    payloads = [rng.randbytes(size) for size in (0, 1, 100, 70_000, 37, 0, 4096)]
    try:
        for payload in payloads:
            x, y = a.frame(payload), framer(payload)
            assert x == y
            a.file.append(x)
            b.file.append(y)
            if len(payload) % 2:
                a.sync()
                b.sync()
    finally:
        a.close()
        b.close()
    data = (tmp_path / "b").read_bytes()
    assert (tmp_path / "a").read_bytes() == data
    log = fr.read_log(data, 9, fr.read_keyring(raw, KEY))
    assert log.payloads == payloads and log.damage is None
