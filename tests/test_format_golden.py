"""The format contract: golden files of the current on-disk format, regenerated and compared
byte for byte, and the golden files of older formats still read (docs/format.md, "How the
contract is held").

tests/data/format_v6 is written by scripts/make_golden.py (fixed keys, values, clock, salts and
table creation time); VERSIONS.json next to it records the format versions it was made with.
tests/data/format_v4 and format_v5 were written the same way before database formats 6 and 7
added a commit time to every WAL record (the only bytes that changed: the WAL and OPTIONS).
tests/data/format_v3 was written the same way by the code before database format 4 (which
changed when a WAL segment is sealed, and adds a sync mark after a memtable switch).
tests/data/format_v2 was written by commit 884e496 (database format 2: format-2 tables,
log format 1, one-line CURRENT, OPTIONS without a checksum); see its README.md.
tests/data/format_v7 is format_v6's database encrypted (database format 7), written by
scripts/make_golden.py --encrypted under its fixed GOLDEN_KEY.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import format_reader as fr
import shaledb
from shaledb.errors import ReadOnlyError

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
SCRIPT = ROOT / "scripts" / "make_golden.py"

_spec = importlib.util.spec_from_file_location("make_golden", SCRIPT)
assert _spec is not None and _spec.loader is not None
mg: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mg)

CURRENT_VERSIONS: dict[str, int] = mg.versions()
GOLDEN = DATA / f"format_v{CURRENT_VERSIONS['database_format']}"
ENCRYPTED_VERSIONS: dict[str, int] = mg.versions(encrypted=True)
GOLDEN_ENCRYPTED = DATA / f"format_v{ENCRYPTED_VERSIONS['database_format']}"
NOW = float(mg.NOW)
BUMP = ("on-disk bytes changed without a format version bump: bump the version, document the "
        "change in docs/format.md, regenerate with scripts/make_golden.py into a new "
        "tests/data/format_vN and keep the old one readable")


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*mg.NOT_DATABASE))
    dest.chmod(0o700)
    for f in dest.iterdir():
        f.chmod(0o600)
    return dest


def _snapshot(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())
            if f.is_file() and f.name != "LOCK"}


def _check_content(db: shaledb.DB, state: dict[bytes, tuple[bytes, int]], now: float) -> None:
    want = mg.live(state, now)
    assert dict(db.range()) == want
    assert list(db.range(reverse=True)) == sorted(want.items(), reverse=True)
    for key, (_, exp) in state.items():
        if key in want:
            ttl = db.ttl(key)
            assert (ttl is None) if exp == 0 else ttl == pytest.approx(exp / 1000 - now)
        else:
            assert db.get(key) is None
    assert db.get(b"never written") is None


# -- the current format ------------------------------------------------------------------------

def test_golden_database_holds_what_the_steps_wrote(tmp_path) -> None:
    """(a) The committed golden database opens (read-only, then read-write, then again) and
    holds exactly what scripts/make_golden.py wrote, also once the short TTLs expire."""
    path = _copy(GOLDEN, tmp_path / "db")
    state = mg.model(mg.steps())
    before = _snapshot(path)
    with shaledb.open(path, clock=lambda: NOW, read_only=True) as db:
        _check_content(db, state, NOW)
        with pytest.raises(ReadOnlyError):
            db.put(b"x", b"y")
    assert _snapshot(path) == before  # a read-only open writes nothing
    with shaledb.open(path, clock=lambda: NOW) as db:
        _check_content(db, state, NOW)
    later = NOW + mg.SHORT_TTL + 1
    assert mg.live(state, later) != mg.live(state, NOW)
    with shaledb.open(path, clock=lambda: later) as db:
        _check_content(db, state, later)
        db.compact_range()
        _check_content(db, state, later)


def test_golden_database_covers_the_format() -> None:
    """The golden files exercise what they are meant to pin (so that a change to the script
    that loses coverage fails here rather than silently)."""
    rd = fr.read_database(str(GOLDEN))
    assert rd.current_checksummed
    assert rd.options["format_version"] == CURRENT_VERSIONS["database_format"]
    assert {m.level for m in rd.manifest.tables.values()} == {0, 1}
    assert sum(m.level == 1 for m in rd.manifest.tables.values()) >= 2
    assert {t.version for t in rd.tables.values()} == {CURRENT_VERSIONS["table_format"]}
    assert {t for table in rd.tables.values() for t in table.block_types} == {0, 1}
    flags = {p[4] for table in rd.tables.values() for p in table.block_payloads}
    assert {f & 1 for f in flags} == {0, 1} and {f & 4 for f in flags} == {0, 4}
    headers = {p[off] for table in rd.tables.values() for p in table.block_payloads
               for off in _element_offsets(p)}
    assert headers == {0xC4, 0xC5, 0xC6}  # bin8, bin16 and bin32 elements
    assert {table.filter.k for table in rd.tables.values()} >= {0, 2, 5}
    kinds = {e[2] for table in rd.tables.values() for e in table.entries}
    assert kinds == {0, 1}
    assert any(e[3] for table in rd.tables.values() for e in table.entries)
    (wal,) = rd.wal.values()
    assert wal.version == 2 and wal.damage is None and wal.zero_tail == 0
    types = [r.type for r in wal.records]
    assert types[-2:] == [fr.SYNC, fr.SEAL] and types.count(fr.FULL) > 40
    assert len(rd.live_wal_ops()) > 40
    assert any(len(fr.decode_wal_payload(p)) > 1 for p in wal.payloads)  # a batch
    edits = rd.manifest.edits
    assert {a[0] for a in edits[0]["add"]} == {0, 1}  # the snapshot lists both levels
    assert any("del" in e and "ptr" in e for e in edits)


def _element_offsets(payload: bytes) -> list[int]:
    """Start offsets of every key and value element of a format-2 data block."""
    m, flags = payload[0] | payload[1] << 8 | payload[2] << 16 | payload[3] << 24, payload[4]
    width = 4 if flags & 1 else 2
    pos = 8 + (m + 7) // 8 * 8 + (m * (8 if flags & 2 else 4) + 7) // 8 * 8
    pos += 8 * m if flags & 4 else 0
    offsets = []
    for _ in range(2):
        offsets += [int.from_bytes(payload[pos + j * width:pos + (j + 1) * width], "little")
                    for j in range(m)]
        pos += ((m + 1) * width + 7) // 8 * 8
    return offsets


def _normalized_options(raw: bytes) -> bytes:
    """OPTIONS without what names the package version (``created_by``, and the checksum,
    which covers it)."""
    raw = re.sub(rb'"created_by": "[^"]*"', b'"created_by": "-"', raw)
    return re.sub(rb'\ncrc32c [0-9a-f]{8}\n$', b'\ncrc32c -\n', raw)


def _describe(name: str, golden: bytes, new: bytes, directory: Path = GOLDEN) -> str:
    """Where two versions of a file first differ, in the format's words."""
    at = next((i for i, (a, b) in enumerate(zip(golden, new, strict=False)) if a != b),
              min(len(golden), len(new)))
    what = f"{name}: {len(golden)} -> {len(new)} bytes, first difference at offset {at}"
    keys = None
    if directory == GOLDEN_ENCRYPTED:
        keys = fr.read_keyring((directory / "KEYRING").read_bytes(), mg.GOLDEN_KEY)
    try:
        if name.endswith(".sst"):
            number = int(name.split(".")[0])
            old_t, new_t = fr.read_table(golden, number, keys), fr.read_table(new, number, keys)
            fo = int.from_bytes(golden[-64:-56], "little")
            if at >= len(golden) - 64:
                what += " (footer)"
            elif at >= fo:
                what += " (filter, index or properties block)"
            else:
                what += " (data blocks)"
            if old_t.block_payloads == new_t.block_payloads and old_t.entries == new_t.entries:
                what += (": the plain payloads are identical, only compressed bytes differ: "
                         "did the LZ4 library change its output? (golden files made with "
                         f"{_libraries()})")
        elif name.endswith(".log") or name.startswith("MANIFEST-"):
            log = fr.read_log(golden, None, keys,
                              fr.WAL_FILE if name.endswith(".log") else fr.MANIFEST_FILE)
            rec = [r for r in log.records if r.offset <= at]
            what += f" (record {len(rec) - 1} at {rec[-1].offset})" if rec else " (header)"
    except fr.FormatError as exc:
        what += f" (the new file does not read as docs/format.md says: {exc})"
    return what


def _libraries() -> str:
    info = json.loads((GOLDEN / "VERSIONS.json").read_text())
    return str(info.get("libraries (informational)"))


def test_golden_files_are_reproduced_byte_for_byte(tmp_path) -> None:
    """(b) Regenerating the golden database gives the committed bytes, unless the format
    versions moved on (then the current versions need their own golden directory)."""
    _check_reproduced(tmp_path, GOLDEN, CURRENT_VERSIONS, [])


def test_encrypted_golden_files_are_reproduced_byte_for_byte(tmp_path) -> None:
    """(b) for database format 5: the encrypted golden database (fixed master key, data
    key, salts and wrapping nonces) is regenerated byte for byte, KEYRING included."""
    _check_reproduced(tmp_path, GOLDEN_ENCRYPTED, ENCRYPTED_VERSIONS, ["--encrypted"])


def _check_reproduced(tmp_path: Path, golden: Path, versions: dict[str, int],
                      args: list[str]) -> None:
    assert golden.is_dir(), (
        f"no golden files for database format {versions['database_format']}: write "
        f"them with `python scripts/make_golden.py {' '.join(args)}` (into "
        f"{golden.relative_to(ROOT)}) and keep the older tests/data/format_v* directories "
        f"readable")
    recorded = json.loads((golden / "VERSIONS.json").read_text())["versions"]
    assert recorded == versions, (
        f"the format versions changed ({recorded} -> {versions}) but "
        f"{golden.relative_to(ROOT)} holds files of the old ones: a new database format "
        f"version needs its own tests/data/format_vN, written with scripts/make_golden.py; "
        f"keep the old directory and a test that reads it")
    dest = tmp_path / "regenerated"
    env = dict(os.environ)
    src = str(Path(shaledb.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, str(SCRIPT), *args, str(dest)], check=True, env=env,
                   capture_output=True, timeout=120)
    committed = {n: b for n, b in _snapshot(golden).items() if n not in mg.NOT_DATABASE}
    regenerated = {n: b for n, b in _snapshot(dest).items() if n not in mg.NOT_DATABASE}
    problems = []
    if set(committed) != set(regenerated):
        problems.append(f"files {sorted(committed)} -> {sorted(regenerated)}")
    for name in sorted(set(committed) & set(regenerated)):
        old, new = committed[name], regenerated[name]
        if name == "OPTIONS":
            old, new = _normalized_options(old), _normalized_options(new)
        if old != new:
            problems.append(_describe(name, old, new, golden))
    assert not problems, BUMP + ".\n" + "\n".join(problems)


# -- database format 5: the same database, encrypted --------------------------------------

def test_encrypted_golden_database_holds_what_the_steps_wrote(tmp_path) -> None:
    """(a) for format 5: the committed encrypted database opens with GOLDEN_KEY (read-only,
    read-write, and after the short TTLs expire) and holds what the steps wrote; without the
    key, or with another one, it does not open."""
    path = _copy(GOLDEN_ENCRYPTED, tmp_path / "db")
    state = mg.model(mg.steps())
    key = mg.GOLDEN_KEY
    before = _snapshot(path)
    with pytest.raises(shaledb.EncryptionError):
        shaledb.open(path, clock=lambda: NOW, read_only=True)
    with pytest.raises(shaledb.EncryptionError):
        shaledb.open(path, clock=lambda: NOW, encryption_key=bytes(32), read_only=True)
    with shaledb.open(path, clock=lambda: NOW, read_only=True, encryption_key=key) as db:
        _check_content(db, state, NOW)
    assert _snapshot(path) == before
    with shaledb.open(path, clock=lambda: NOW, encryption_key=key) as db:
        _check_content(db, state, NOW)
    later = NOW + mg.SHORT_TTL + 1
    with shaledb.open(path, clock=lambda: later, encryption_key=key) as db:
        db.compact_range()
        _check_content(db, state, later)
    assert shaledb.verify(str(path), encryption_key=key).ok


def test_encrypted_golden_database_covers_the_format() -> None:
    """The encrypted golden files read, with the key, from docs/format.md alone, to the same
    state as the plain ones; every file is of the encrypted formats; no key or value of the
    plain golden database appears in any of them."""
    rd = fr.read_database(str(GOLDEN_ENCRYPTED), mg.GOLDEN_KEY)
    plain = fr.read_database(str(GOLDEN))
    assert rd.options["format_version"] == ENCRYPTED_VERSIONS["database_format"] == 7
    assert rd.options["encryption"]["cipher"] == "AES-256-GCM"
    assert {t.version for t in rd.tables.values()} == {ENCRYPTED_VERSIONS["table_format"]}
    assert {log.version for log in rd.wal.values()} == {ENCRYPTED_VERSIONS["log_format"]}
    assert rd.manifest_log.version == ENCRYPTED_VERSIONS["log_format"]
    assert rd.state(int(NOW * 1000)) == plain.state(int(NOW * 1000))
    assert {t for table in rd.tables.values() for t in table.block_types} == {0, 1}

    def shape(edits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # (Sealed blocks are 16 bytes longer: compaction cuts its outputs at other keys.)
        return [{k: [a[:2] for a in v] if k == "add" else v for k, v in e.items()}
                for e in edits]

    assert shape(rd.manifest.edits) == shape(plain.manifest.edits)
    (wal,) = rd.wal.values()
    assert [r.type for r in wal.records] == [r.type for r in next(iter(plain.wal.values()))
                                             .records]
    secrets = {k for k in plain.state(0)} | {v for v, _ in plain.state(0).values() if len(v) > 8}
    blobs = [f.read_bytes() for f in GOLDEN_ENCRYPTED.iterdir() if f.name not in
             mg.NOT_DATABASE]
    assert not [s for s in secrets if len(s) >= 6 and any(s in b for b in blobs)]


def _rewrite_options(path: Path, change: Any) -> None:
    """OPTIONS with ``change(info)`` applied, laid out and checksummed as the engine does."""
    import crc32c

    raw = (path / "OPTIONS").read_bytes()
    info = json.loads(raw[:raw.rindex(b"crc32c ")])
    change(info)
    body = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    (path / "OPTIONS").write_bytes(body + b"crc32c %08x\n" % crc32c.crc32c(body))


def test_format_5_is_refused_by_a_format_4_shaledb_and_needs_its_encryption_object(
        tmp_path, monkeypatch) -> None:
    """A ShaleDB that reads up to format 4 (the rule of every ShaleDB: a version above the
    newest it knows is IncompatibleFormatError; checked once against main's format-4 code)
    refuses the encrypted golden database instead of reading it as plain. And the encryption
    object belongs to format 5 alone: a format-5 OPTIONS without it, or one of format 4 with
    it (what unreleased development builds wrote for "format 4, encrypted"), is damage."""
    from shaledb.engine import optionsfile
    from shaledb.errors import CorruptionError, IncompatibleFormatError

    path = _copy(DATA / "format_v5", tmp_path / "db")
    with monkeypatch.context() as m:
        m.setattr(optionsfile, "MAX_DB_FORMAT_VERSION", 4)
        with pytest.raises(IncompatibleFormatError, match="format version 5"):
            shaledb.open(path, read_only=True, encryption_key=mg.GOLDEN_KEY)
    _rewrite_options(path, lambda info: info.update(format_version=4))
    with pytest.raises(CorruptionError, match="format 4 with an encryption object"):
        shaledb.open(path, read_only=True, encryption_key=mg.GOLDEN_KEY)
    _rewrite_options(path, lambda info: (info.update(format_version=5),
                                         info.pop("encryption")))
    with pytest.raises(CorruptionError, match="format 5 without its encryption object"):
        shaledb.open(path, read_only=True, encryption_key=mg.GOLDEN_KEY)
    _rewrite_options(path, lambda info: info.update(
        encryption={"cipher": "AES-256-GCM", "keyring": "KEYRING"}))
    with shaledb.open(path, clock=lambda: NOW, read_only=True,
                      encryption_key=mg.GOLDEN_KEY) as db:
        _check_content(db, mg.model(mg.steps()), NOW)


# -- database format 2 ---------------------------------------------------------------------

V2_STEPS = mg.steps(nk=200, nr=60, legacy=True)


@pytest.mark.parametrize("which", ["clean", "crashed"])
def test_reads_and_upgrades_a_format_v2_database(tmp_path, which) -> None:
    """A database written by commit 884e496 (format 2): log format 1 WAL and MANIFEST, a
    one-line CURRENT, OPTIONS without checksum; ``crashed`` is a copy taken while it was open
    (its WAL segment ends in the zeros of the mapped space)."""
    src = DATA / "format_v2" / which
    path = _copy(src, tmp_path / "db")
    state = mg.model(V2_STEPS, stop_at_crash_copy=which == "crashed")
    before = _snapshot(path)
    assert json.loads(before["OPTIONS"])["format_version"] == 2
    assert re.fullmatch(rb"MANIFEST-[0-9]{6}\n", before["CURRENT"])
    (log,) = [n for n in before if n.endswith(".log")]
    assert fr.read_log(before[log]).version == 1
    assert (fr.read_log(before[log]).zero_tail > 0) == (which == "crashed")

    with shaledb.open(path, clock=lambda: NOW, read_only=True) as db:
        _check_content(db, state, NOW)
    assert _snapshot(path) == before

    with shaledb.open(path, clock=lambda: NOW) as db:
        _check_content(db, state, NOW)
        db.put(b"after the upgrade", b"new")
    state[b"after the upgrade"] = (b"new", 0)
    after = _snapshot(path)
    options = fr.read_options(after["OPTIONS"])  # checks its checksum
    assert options["format_version"] == CURRENT_VERSIONS["database_format"]
    assert options["table_format_version"] == 2 and options["log_format_version"] == 2
    name, checksummed = fr.read_current(after["CURRENT"])
    assert checksummed and fr.read_log(after[name]).version == 2
    assert log not in after  # the format-1 segment was replayed into a table and retired
    assert {fr.read_log(after[n]).version for n in after if n.endswith(".log")} == {2}

    for read_only in (False, True):
        with shaledb.open(path, clock=lambda: NOW, read_only=read_only) as db:
            _check_content(db, state, NOW)
    rd = fr.read_database(str(path))
    assert {k: v for k, (v, _) in rd.state(int(NOW * 1000)).items()} == mg.live(state, NOW)
    later = NOW + mg.SHORT_TTL + 1
    with shaledb.open(path, clock=lambda: later) as db:
        db.compact_range()
        _check_content(db, state, later)
    assert {t.version for t in fr.read_database(str(path)).tables.values()} == {2}


# -- database format 3 ---------------------------------------------------------------------

def test_reads_and_upgrades_a_format_v3_database(tmp_path) -> None:
    """The golden files of database format 3 (written before the WAL seal moved to the flush
    thread): read as they are, read-only without a byte changed; a writable open upgrades
    OPTIONS to format 4, keeps ``log_format_2_from`` and starts ``wal_async_seal_from`` past
    every existing file, so the segments format 3 wrote keep the stricter recovery rule."""
    path = _copy(DATA / "format_v3", tmp_path / "db")
    state = mg.model(mg.steps())
    before = _snapshot(path)
    assert json.loads(before["OPTIONS"].split(b"\ncrc32c")[0])["format_version"] == 3
    with shaledb.open(path, clock=lambda: NOW, read_only=True) as db:
        _check_content(db, state, NOW)
    assert _snapshot(path) == before
    numbers = [int(n.split(".")[0].split("-")[-1]) for n in before if n[0] in "0M"]
    with shaledb.open(path, clock=lambda: NOW) as db:
        _check_content(db, state, NOW)
        db.put(b"after the upgrade", b"new", sync=True)
    state[b"after the upgrade"] = (b"new", 0)
    options = fr.read_options(_snapshot(path)["OPTIONS"])
    assert options["format_version"] == CURRENT_VERSIONS["database_format"]
    assert options["log_format_2_from"] == 0
    assert options["wal_async_seal_from"] > max(numbers)
    with shaledb.open(path, clock=lambda: NOW, read_only=True) as db:
        _check_content(db, state, NOW)


# -- database formats 4 and 5 (before WAL commit times) ------------------------------------

@pytest.mark.parametrize("version", [4, 5])
def test_reads_and_upgrades_a_format_v4_or_v5_database(tmp_path, version) -> None:
    """The golden files of database formats 4 and 5 (no commit time in the WAL): read as they
    are (read-only changes no byte), and a writable open makes them format 6 and 7: OPTIONS
    says so, the old records (copied unchanged into the new segment) keep no commit time,
    the new ones carry one, and the content is the same."""
    encrypted = version == 5
    key = mg.GOLDEN_KEY if encrypted else None
    path = _copy(DATA / f"format_v{version}", tmp_path / "db")
    state = mg.model(mg.steps())
    before = _snapshot(path)
    old = fr.read_database(str(path), key)
    assert old.options["format_version"] == version
    assert all(op.commit_ms is None for log in old.wal.values() for p in log.payloads
               for op in fr.decode_wal_payload(p))
    with shaledb.open(path, clock=lambda: NOW, read_only=True, encryption_key=key) as db:
        _check_content(db, state, NOW)
    assert _snapshot(path) == before
    with shaledb.open(path, clock=lambda: NOW, encryption_key=key) as db:
        _check_content(db, state, NOW)
        db.put(b"after the upgrade", b"new", sync=True)
    state[b"after the upgrade"] = (b"new", 0)
    rd = fr.read_database(str(path), key)
    assert rd.options["format_version"] == version + 2
    ops = [op for log in rd.wal.values() for p in log.payloads for op in fr.decode_wal_payload(p)]
    assert ops[-1].key == b"after the upgrade" and ops[-1].commit_ms == int(NOW * 1000)
    assert all(op.commit_ms is None for op in ops[:-1])  # copied unchanged at the upgrade
    with shaledb.open(path, clock=lambda: NOW, read_only=True, encryption_key=key) as db:
        _check_content(db, state, NOW)


def test_formats_6_and_7_are_refused_by_a_format_5_shaledb(tmp_path, monkeypatch) -> None:
    """A ShaleDB that reads up to format 5 (checked once against the crypto branch's code)
    refuses the new formats instead of reading a commit time as operations; every WAL record
    of the current golden files carries the fixed clock as its commit time."""
    from shaledb.engine import optionsfile
    from shaledb.errors import IncompatibleFormatError

    for golden, key in ((GOLDEN, None), (GOLDEN_ENCRYPTED, mg.GOLDEN_KEY)):
        path = _copy(golden, tmp_path / golden.name)
        with monkeypatch.context() as m:
            m.setattr(optionsfile, "MAX_DB_FORMAT_VERSION", 5)
            with pytest.raises(IncompatibleFormatError, match="format version [67]"):
                shaledb.open(path, read_only=True, encryption_key=key)
        rd = fr.read_database(str(path), key)
        ops = [op for log in rd.wal.values() for p in log.payloads
               for op in fr.decode_wal_payload(p)]
        assert ops and {op.commit_ms for op in ops} == {int(NOW * 1000)}
