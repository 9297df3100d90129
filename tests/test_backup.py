"""Backups (issue 12): online consistent backups, restore, point-in-time restore from the
archived WAL, incremental size, verify, prune, SIGKILL mid-backup, encryption, permissions.
docs/operations.md is the runbook these tests hold to."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import shaledb
from conftest import SMALL_OPTS
from shaledb.backup import Repository
from shaledb.backup.repository import decode_doc, encode_doc
from shaledb.errors import CorruptionError, EncryptionError, InvalidArgument

KEY = bytes(range(32))


def _scan(db: shaledb.DB) -> dict[bytes, bytes]:
    return dict(db.range())


def test_backup_under_a_concurrent_writer_is_a_snapshot_at_its_sequence(tmp_path) -> None:
    """A writer goes on (many small writes and batches, memtable switches, flushes and
    compactions meanwhile) while backups are taken; each restored backup holds exactly the
    database at its sequence: every write acknowledged before the call, the writer's keys a
    prefix (no batch split: both keys of a batch or neither), and nothing after."""
    db = shaledb.open(tmp_path / "db", **SMALL_OPTS)
    for i in range(2000):
        db.put(b"base%05d" % i, b"b" * 50)
    acked = [0]  # writes of the writer acknowledged so far
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            with db.batch() as b:  # two keys per batch: a backup never splits it
                b.put(b"w%07d" % i, b"x" * 80)
                b.put(b"z%07d" % i, b"y" * 80)
            i += 1
            acked[0] = i

    t = threading.Thread(target=writer)
    t.start()
    infos = []
    try:
        for _ in range(3):
            time.sleep(0.2)
            before = acked[0]
            info = db.backup(tmp_path / "repo")
            infos.append((before, info))
    finally:
        stop.set()
        t.join()
    assert db.stats()["flushes"] > 0
    db.close()
    for n, (before, info) in enumerate(infos):
        dest = tmp_path / f"restored{n}"
        r = shaledb.restore(tmp_path / "repo", str(dest), backup_id=info.id)
        assert r.sequence == info.sequence
        with shaledb.open(dest) as rdb:
            got = _scan(rdb)
            assert rdb.stats()["last_sequence"] == info.sequence
        ws = sorted(k for k in got if k.startswith(b"w"))
        zs = sorted(k for k in got if k.startswith(b"z"))
        m = len(ws)
        assert ws == [b"w%07d" % i for i in range(m)]  # a prefix
        assert zs == [b"z%07d" % i for i in range(m)]  # batches whole
        assert m >= before  # every acknowledged write
        assert sum(k.startswith(b"base") for k in got) == 2000
        # Nothing after the sequence: 2000 base writes, then two per batch.
        assert info.sequence == 2000 + 2 * m


def test_restore_after_deleting_the_source(tmp_path) -> None:
    with shaledb.open(tmp_path / "db", **SMALL_OPTS) as db:
        for i in range(3000):
            db.put(b"k%05d" % i, b"v%05d" % i * 10, ttl=3600 if i % 7 == 0 else None)
        db.delete(b"k00001")
        want = _scan(db)
        db.backup(tmp_path / "repo")
    import shutil

    shutil.rmtree(tmp_path / "db")
    r = shaledb.restore(tmp_path / "repo", str(tmp_path / "back"))
    with shaledb.open(r.path) as db:
        assert _scan(db) == want
        assert db.ttl(b"k00007") is not None and db.ttl(b"k00008") is None
        assert db.verify().ok


def test_point_in_time_restore_between_two_write_phases(tmp_path) -> None:
    """A backup, a first write phase, a moment, a second phase, close: restoring until the
    moment (a time, or the sequence number then) gives the state after the first phase,
    from the archived WAL; until now gives everything."""
    repo = str(tmp_path / "repo")
    db = shaledb.open(tmp_path / "db", wal_archive=repo, **SMALL_OPTS)
    for i in range(500):
        db.put(b"a%05d" % i, b"0")
    db.backup(repo)
    for i in range(3000):
        db.put(b"p1-%05d" % i, b"1" * 60)
    db.delete(b"a00000")
    phase1 = _scan(db)
    seq1 = db.stats()["last_sequence"]
    time.sleep(0.02)
    moment = dt.datetime.now(dt.UTC)
    time.sleep(0.02)
    for i in range(3000):
        db.put(b"p2-%05d" % i, b"2" * 60)
    db.put(b"p1-00000", b"changed")
    final = _scan(db)
    later = db.backup(repo)  # newer than the moment: never the base of that restore
    assert db.stats()["wal_archive"]["archived"] > 0
    db.close()
    by_time = shaledb.restore(repo, str(tmp_path / "t"), until=moment)
    by_seq = shaledb.restore(repo, str(tmp_path / "s"), until=seq1)
    latest = shaledb.restore(repo, str(tmp_path / "n"), until=dt.datetime.now(dt.UTC))
    assert by_time.reached_until and by_seq.reached_until and by_seq.sequence == seq1
    assert by_time.sequence == seq1 and by_time.replayed > 0
    assert by_time.backup_id != later.id and latest.backup_id == later.id
    for r, want in ((by_time, phase1), (by_seq, phase1), (latest, final)):
        with shaledb.open(r.path) as rdb:
            assert _scan(rdb) == want
    with pytest.raises(InvalidArgument, match="aware datetime"):
        shaledb.restore(repo, str(tmp_path / "x"), until=dt.datetime.now())
    with pytest.raises(InvalidArgument, match="not an empty directory"):
        shaledb.restore(repo, str(tmp_path / "t"))


def test_an_incremental_backup_stores_only_the_new_files(tmp_path) -> None:
    """The second backup after 1% of the keys changed adds only the new tables and WAL;
    the tables it shares with the first are stored once."""
    opts = dict(SMALL_OPTS, memtable_size=256 * 1024, target_file_size=256 * 1024,
                max_bytes_for_level_base=1024 * 1024)
    with shaledb.open(tmp_path / "db", **opts) as db:
        for i in range(20000):
            db.put(b"k%06d" % i, os.urandom(50))
        db.flush()
        db.compact_range()
        first = db.backup(tmp_path / "repo")
        for i in range(0, 20000, 100):
            db.put(b"k%06d" % i, b"changed")
        second = db.backup(tmp_path / "repo")
    assert first.new_bytes == first.bytes > 1_000_000
    assert second.new_bytes < second.bytes / 5
    shared = {e.sha256 for e in first.entries} & {e.sha256 for e in second.entries}
    assert any(e.name.endswith(".sst") for e in first.entries if e.sha256 in shared)
    objects = [p for p in (tmp_path / "repo" / "objects").rglob("*") if p.is_file()]
    assert len(objects) == len({e.sha256 for e in first.entries + second.entries})


def test_verify_finds_a_flipped_byte_in_any_repository_file(tmp_path) -> None:
    """Every file of the repository (the REPOSITORY file, backup manifests, WAL archive
    entries, objects) is checked: one flipped byte in any of them is found and named."""
    repo = tmp_path / "repo"
    db = shaledb.open(tmp_path / "db", wal_archive=str(repo), **SMALL_OPTS)
    for i in range(1500):
        db.put(b"k%05d" % i, b"v" * 40)
    db.backup(repo)
    for i in range(500):
        db.put(b"j%05d" % i, b"w" * 40)
    db.close()
    r = Repository(str(repo), create=False)
    assert r.verify().ok
    targets = [p for p in repo.rglob("*") if p.is_file() and p.name != "LOCK"]
    assert {p.relative_to(repo).parts[0] for p in targets} >= {
        "REPOSITORY", "objects", "backups", "wal"}
    for p in targets:
        data = bytearray(p.read_bytes())
        pos = len(data) // 2
        data[pos] ^= 0x01
        original = p.read_bytes()
        p.write_bytes(bytes(data))
        try:
            report = r.verify()
            name = str(p.relative_to(repo))
            assert not report.ok, name
            assert any(f == name for f, _ in report.problems), (name, report.problems)
        finally:
            p.write_bytes(original)
    assert r.verify().ok


_KILL_SCRIPT = r"""
import os, sys, time
import shaledb
db = shaledb.open(sys.argv[1], memtable_size=1 << 20)
for i in range(4000):
    db.put(b"k%06d" % i, os.urandom(1000))
db.backup(sys.argv[2])
print("first", flush=True)
for i in range(4000, 8000):
    db.put(b"k%06d" % i, os.urandom(1000))
def progress(done, total):
    if done > total // 3:
        print("copying", flush=True)
        time.sleep(60)
db.backup(sys.argv[2], progress=progress)
"""


def test_a_backup_killed_mid_way_leaves_the_repository_valid(tmp_path) -> None:
    """SIGKILL in the middle of a backup: the repository verifies, lists only the complete
    backup, the next backup cleans up what the killed one left and succeeds, and both
    restore."""
    repo = tmp_path / "repo"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path / "db"),
                             str(repo)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "first"
        assert proc.stdout.readline().strip() == "copying"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    r = Repository(str(repo), create=False)
    assert len(r.backups()) == 1
    report = r.verify()
    assert report.ok, report.problems
    assert any("interrupted" in n for n in report.notices)  # its upload, in tmp/
    with shaledb.open(tmp_path / "db") as db:
        want = _scan(db)
        info = db.backup(str(repo))
    assert not list((repo / "tmp").iterdir())
    assert len(r.backups()) == 2 and r.verify().ok
    with shaledb.open(shaledb.restore(str(repo), str(tmp_path / "back")).path) as db:
        assert _scan(db) == want
    assert info.sequence == 8000


def _age(repo: Path, info_id: str, when: dt.datetime) -> None:
    """Rewrite a backup's creation time (as if it had been taken then)."""
    p = repo / "backups" / f"{info_id}.json"
    info = decode_doc(p.read_bytes(), str(p))
    info["created_at"] = when.isoformat()
    info["created_ms"] = int(when.timestamp() * 1000)
    p.write_bytes(encode_doc(info))


def test_prune_keeps_what_it_promises(tmp_path) -> None:
    """keep-last, keep-daily and keep-weekly keep exactly the backups they name; every kept
    backup still restores and verifies; what only removed backups used is gone."""
    repo = tmp_path / "repo"
    now = dt.datetime(2026, 6, 30, 12, tzinfo=dt.UTC)
    # Ten backups: today x3, then one a day back for 4 days, then weekly-spaced ones.
    ages = [dt.timedelta(hours=h) for h in (0, 1, 2)] + [
        dt.timedelta(days=d) for d in (1, 2, 3, 4)] + [dt.timedelta(days=d) for d in (14, 21, 28)]
    ids = []
    with shaledb.open(tmp_path / "db", **SMALL_OPTS) as db:
        for n, age in enumerate(reversed(ages)):
            for i in range(300):
                db.put(b"k%03d-%05d" % (n, i), os.urandom(30))
            info = db.backup(repo)
            _age(repo, info.id, now - age)
            ids.append((now - age, info.id))
    ids.sort(reverse=True)  # newest first
    r = Repository(str(repo), create=False)
    report = r.prune(keep_last=2, keep_daily=3, keep_weekly=2)
    newest = [i for _, i in ids]
    # last 2: the two newest; daily 3: newest of today, yesterday, 2 days ago; weekly 2: the
    # newest of this ISO week and of the one before it that has a backup.
    weeks: dict[str, str] = {}
    for when, i in ids:
        y, w, _ = when.isocalendar()
        weeks.setdefault(f"{y}-{w}", i)
    want = set(newest[:2]) | {newest[0], newest[3], newest[4]} | set(list(weeks.values())[:2])
    assert set(report.kept) == want
    assert set(report.removed) == set(newest) - want
    assert {b.id for b in r.backups()} == want
    assert report.objects_removed > 0
    assert r.verify().ok
    for n, i in enumerate(sorted(want)):
        shaledb.restore(str(repo), str(tmp_path / f"r{n}"), backup_id=i)
    with pytest.raises(InvalidArgument, match="keep_last"):
        r.prune(keep_last=0)


def test_an_encrypted_databases_backup_holds_no_plaintext(tmp_path) -> None:
    """The repository of an encrypted database's backups (tables, WAL, MANIFEST, archived
    WAL) holds none of its keys or values, nor the master key; it restores with the key."""
    secret_keys = [b"customer-%06d-secret" % i for i in range(400)]
    secret_value = b"credit card 4111-1111-1111-1111 expires 12/29"
    repo = str(tmp_path / "repo")
    db = shaledb.open(tmp_path / "db", encryption_key=KEY, wal_archive=repo, **SMALL_OPTS)
    for k in secret_keys:
        db.put(k, secret_value)
    db.flush()
    db.put(b"in-the-wal-only-key", b"in-the-wal-only-value")
    info = db.backup(repo)
    assert info.encrypted
    db.close()
    names = {e.name for e in info.entries}
    assert "KEYRING" in names and any(n.endswith(".sst") for n in names)
    blobs = b"".join(p.read_bytes() for p in Path(repo).rglob("*") if p.is_file())
    for needle in [secret_value, b"in-the-wal-only", KEY, KEY.hex().encode(),
                   *secret_keys[:50]]:
        assert needle not in blobs
    r = shaledb.restore(repo, str(tmp_path / "back"))
    with pytest.raises(EncryptionError):
        shaledb.open(r.path)
    with shaledb.open(r.path, encryption_key=KEY) as rdb:
        assert rdb.get(secret_keys[7]) == secret_value
        assert rdb.get(b"in-the-wal-only-key") == b"in-the-wal-only-value"
    with pytest.raises(EncryptionError, match="needs its key"):
        shaledb.restore(repo, str(tmp_path / "pitr"), until=info.sequence)
    p = shaledb.restore(repo, str(tmp_path / "pitr"), until=info.sequence + 10**6,
                        encryption_key=KEY)
    assert p.sequence == info.sequence
    with shaledb.open(p.path, encryption_key=KEY) as rdb:
        assert rdb.get(b"in-the-wal-only-key") == b"in-the-wal-only-value"


def test_repository_files_are_0600_and_directories_0700(tmp_path) -> None:
    repo = tmp_path / "repo"
    with shaledb.open(tmp_path / "db", wal_archive=str(repo), **SMALL_OPTS) as db:
        for i in range(2000):
            db.put(b"k%05d" % i, b"v" * 40)
        db.backup(repo)
    dest = Path(shaledb.restore(str(repo), str(tmp_path / "back")).path)
    for root in (repo, dest):
        for p in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))


def test_a_damaged_object_fails_the_restore_and_leaves_nothing(tmp_path) -> None:
    repo = tmp_path / "repo"
    with shaledb.open(tmp_path / "db", **SMALL_OPTS) as db:
        for i in range(2000):
            db.put(b"k%05d" % i, b"v" * 40)
        info = db.backup(repo)
    table = next(e for e in info.entries if e.name.endswith(".sst"))
    obj = repo / "objects" / table.sha256[:2] / table.sha256
    data = bytearray(obj.read_bytes())
    data[100] ^= 0x40
    obj.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match=table.sha256):
        shaledb.restore(str(repo), str(tmp_path / "back"))
    assert not (tmp_path / "back").exists()


def test_a_failing_wal_archive_keeps_the_segments_and_says_why(tmp_path) -> None:
    """When the archive cannot take a segment, the engine keeps it on disk (point-in-time
    restore would need it), reports the failure in stats(), and archives it once the
    archive works again."""
    repo = Repository(str(tmp_path / "repo"))
    calls = {"fail": True, "n": 0}
    real = repo.archive_segment

    class Flaky:
        def archive_segment(self, segment):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["fail"]:
                raise OSError("archive unreachable")
            real(segment)

    db = shaledb.open(tmp_path / "db", wal_archive=Flaky(), **SMALL_OPTS)
    for i in range(5000):
        db.put(b"k%05d" % i, b"v" * 60)
    db.flush()
    assert _wait(lambda: db.stats()["wal_archive"]["errors"] > 0)
    st = db.stats()["wal_archive"]
    assert st["waiting"] > 0 and "archive unreachable" in st["last_error"]
    logs = sorted(p.name for p in (tmp_path / "db").glob("*.log"))
    assert len(logs) > 2  # kept
    calls["fail"] = False
    assert _wait(lambda: db.stats()["wal_archive"]["waiting"] == 0, timeout=20)
    assert db.stats()["wal_archive"]["last_error"] is None
    db.close()
    numbers = {e.number for e in repo.archived()}
    assert {int(n.split(".")[0]) for n in logs} <= numbers


def _wait(pred, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_backup_list_json_round_trip(tmp_path) -> None:
    with shaledb.open(tmp_path / "db") as db:
        db.put(b"a", b"1")
        info = db.backup(tmp_path / "repo")
    r = Repository(str(tmp_path / "repo"), create=False)
    (got,) = r.backups()
    assert got == info
    assert json.loads(json.dumps(got.summary()))["sequence"] == 1
    with pytest.raises(InvalidArgument, match="not a backup repository"):
        Repository(str(tmp_path / "nothing"), create=False)


def test_cli_backup_restore_list_verify_prune(tmp_path) -> None:
    """The CLI end to end: exit codes, JSON, damaged files named, no progress bar when the
    output is not a terminal."""
    from click.testing import CliRunner

    from shaledb.cli import cli

    with shaledb.open(tmp_path / "db", **SMALL_OPTS) as db:
        for i in range(2000):
            db.put(b"k%05d" % i, b"v" * 40)
        want = _scan(db)
    run = CliRunner().invoke
    repo, db_path = str(tmp_path / "repo"), str(tmp_path / "db")
    res = run(cli, ["backup", db_path, repo, "--json"])
    assert res.exit_code == 0, res.output
    first = json.loads(res.output)
    res = run(cli, ["backup", db_path, repo])
    assert res.exit_code == 0 and "backup " in res.output and "\r" not in res.output
    res = run(cli, ["backups", "list", repo, "--json"])
    listed = json.loads(res.output)
    assert res.exit_code == 0 and len(listed) == 2 and listed[0]["id"] == first["id"]
    assert run(cli, ["backups", "verify", repo]).exit_code == 0
    res = run(cli, ["restore", repo, str(tmp_path / "back"), "--backup", first["id"]])
    assert res.exit_code == 0, res.output
    with shaledb.open(tmp_path / "back") as db:
        assert _scan(db) == want
    res = run(cli, ["restore", repo, str(tmp_path / "seq"), "--until", str(first["sequence"])])
    assert res.exit_code == 0 and "sequence 2000" in res.output
    res = run(cli, ["restore", repo, str(tmp_path / "x"), "--until", "yesterday"])
    assert res.exit_code == 1 and "ISO 8601" in res.output
    obj = next(p for p in (tmp_path / "repo" / "objects").rglob("*") if p.is_file())
    data = bytearray(obj.read_bytes())
    data[-1] ^= 1
    obj.write_bytes(bytes(data))
    res = run(cli, ["backups", "verify", repo, "--json"])
    assert res.exit_code == 2
    report = json.loads(res.output)
    assert [p["file"] for p in report["problems"]] == [str(obj.relative_to(tmp_path / "repo"))]
    res = run(cli, ["backups", "prune", repo, "--keep-last", "1", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["removed"] == [first["id"]]
    res = run(cli, ["backups", "prune", repo, "--keep-last", "0"])
    assert res.exit_code == 2  # click: bad parameter
    res = run(cli, ["backups", "list", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "not a backup repository" in res.output
