"""A backup repository's own key (issue 12: "optionally encrypted with its own key for a
plain database"): ``Repository(path, encryption_key_file=...)`` and ``--repo-key-file``.
docs/security.md ("Backup repositories") says what it protects; docs/format.md ("Encrypted
repositories") has the bytes these tests cut, swap and flip."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import shaledb
from conftest import SMALL_OPTS
from shaledb.backup import Repository
from shaledb.backup.repository import object_name
from shaledb.backup.sealing import CHUNK_SIZE, HEADER_SIZE, RepositoryKey, stored_size
from shaledb.engine.crypto import TAG_SIZE, MasterKey
from shaledb.errors import CorruptionError, EncryptionError

REPO_KEY = bytes(range(100, 132))
SECRET_VALUE = b"credit card 4111-1111-1111-1111 expires 12/29"


def _key_file(tmp_path: Path, key: bytes = REPO_KEY, name: str = "repo.key") -> str:
    path = tmp_path / name
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return str(path)


def _repo(tmp_path: Path, key_file: str | None, name: str = "repo") -> Repository:
    return Repository(str(tmp_path / name), encryption_key_file=key_file)


def _fill_and_back_up(tmp_path: Path, repo: Repository, db_name: str = "db") -> list[bytes]:
    """A plain database whose keys and values end up in tables (flushed), the archived WAL
    (segments switched by flushes) and the live WAL (backed up as is), backed up twice."""
    secret_keys = [b"customer-%06d-secret" % i for i in range(400)]
    db = shaledb.open(tmp_path / db_name, wal_archive=repo, **SMALL_OPTS)
    for k in secret_keys:
        db.put(k, SECRET_VALUE)
    db.flush()
    db.backup(repo)
    db.put(b"in-the-wal-only-key", b"in-the-wal-only-value")
    db.backup(repo)
    db.close()
    return secret_keys


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_an_encrypted_repository_of_a_plain_database_holds_no_plaintext(tmp_path) -> None:
    """No key, value, file name or repository key byte in any file of an encrypted
    repository (objects, manifests, WAL archive entries, REPOSITORY); the same backups into
    a plain repository (the control) hold all of them, so the search can find them."""
    key_file = _key_file(tmp_path)
    enc = _repo(tmp_path, key_file, "enc")
    secret_keys = _fill_and_back_up(tmp_path, enc, "db1")
    plain = _repo(tmp_path, None, "plain")
    _fill_and_back_up(tmp_path, plain, "db2")
    needles = [SECRET_VALUE, b"in-the-wal-only", *secret_keys[:50], secret_keys[-1],
               b"MANIFEST-", b".sst", b".log", b"OPTIONS"]
    control = _all_bytes(tmp_path / "plain")
    for needle in needles:
        assert needle in control, needle  # the search works
    blobs = _all_bytes(tmp_path / "enc")
    for needle in [*needles, REPO_KEY, REPO_KEY.hex().encode()]:
        assert needle not in blobs, needle
    # Every object, manifest and WAL entry is sealed; REPOSITORY names the key, no more.
    for p in (tmp_path / "enc").rglob("*"):
        if p.is_file() and p.parent.name != "enc":
            assert p.read_bytes().startswith(b"SHALEOB\x01"), p
    info = json.loads((tmp_path / "enc" / "REPOSITORY").read_bytes().rsplit(b"sha256 ", 1)[0])
    assert info["format"] == 2 and info["encryption"]["key_id"] == MasterKey(REPO_KEY).key_id
    assert set(info["encryption"]) == {"cipher", "chunk_size", "names", "object_format",
                                       "key_id", "check"}
    assert json.loads((tmp_path / "plain" / "REPOSITORY").read_bytes().rsplit(
        b"sha256 ", 1)[0])["format"] == 1  # a plain repository's bytes did not change
    # With the key, it is all there: verify, restore, point-in-time restore.
    assert enc.verify().ok
    r = shaledb.restore(enc, str(tmp_path / "back"), until=10**9)
    with shaledb.open(r.path) as db:
        assert db.get(secret_keys[7]) == SECRET_VALUE
        assert db.get(b"in-the-wal-only-key") == b"in-the-wal-only-value"


def test_a_wrong_key_no_key_and_a_key_for_a_plain_repository_are_refused(tmp_path) -> None:
    key_file = _key_file(tmp_path)
    other = _key_file(tmp_path, bytes(range(32)), "other.key")
    enc = _repo(tmp_path, key_file, "enc")
    _fill_and_back_up(tmp_path, enc)
    plain = _repo(tmp_path, None, "plain")
    with shaledb.open(tmp_path / "db", create_if_missing=False) as db:
        db.backup(plain)
        with pytest.raises(EncryptionError, match="is encrypted .*--repo-key-file"):
            db.backup(tmp_path / "enc")  # a path: opened without a key
    path = str(tmp_path / "enc")
    with pytest.raises(EncryptionError, match="is encrypted"):
        Repository(path)
    with pytest.raises(EncryptionError, match="is encrypted"):
        shaledb.restore(path, str(tmp_path / "back"))
    with pytest.raises(EncryptionError, match="wrong key .* needs the key with id "
                       + MasterKey(REPO_KEY).key_id):
        Repository(path, encryption_key_file=other)
    with pytest.raises(EncryptionError, match="not encrypted .* leave the key out"):
        Repository(str(tmp_path / "plain"), encryption_key_file=key_file)
    loose = Path(_key_file(tmp_path, REPO_KEY, "loose.key"))
    loose.chmod(0o644)
    with pytest.raises(EncryptionError, match="0o?644|group|others"):
        Repository(path, encryption_key_file=str(loose))
    assert not (tmp_path / "back").exists()
    # The check value tells an altered REPOSITORY from a wrong key.
    raw = (tmp_path / "enc" / "REPOSITORY").read_bytes()
    info = json.loads(raw.rsplit(b"sha256 ", 1)[0])
    info["encryption"]["chunk_size"] = 4096
    from shaledb.backup.repository import encode_doc

    (tmp_path / "enc" / "REPOSITORY").write_bytes(encode_doc(info))
    with pytest.raises(CorruptionError, match="altered"):
        Repository(path, encryption_key_file=key_file)
    (tmp_path / "enc" / "REPOSITORY").write_bytes(raw)
    assert Repository(path, encryption_key_file=key_file).verify().ok


def _big_table_backup(tmp_path: Path, key_file: str) -> tuple[Repository, str, Path]:
    """An encrypted repository with a backup whose one table is about 3 MiB (3 chunks)."""
    repo = _repo(tmp_path, key_file)
    with shaledb.open(tmp_path / "db", memtable_size=16 << 20,
                      target_file_size=64 << 20) as db:
        for i in range(300):
            db.put(b"k%05d" % i, os.urandom(10_000))
        db.flush()
        info = db.backup(repo)
    table = max((e for e in info.entries if e.name.endswith(".sst")), key=lambda e: e.size)
    assert table.size > 2 * CHUNK_SIZE
    obj = tmp_path / "repo" / object_name(table.sha256)
    assert obj.stat().st_size == stored_size(table.size)
    return repo, info.id, obj


def _damage_is_found(tmp_path: Path, repo: Repository, name: str, n: int) -> None:
    report = repo.verify()
    assert not report.ok and [f for f, _ in report.problems] == [name], report.problems
    with pytest.raises(CorruptionError, match=name.rsplit("/", 1)[-1]):
        shaledb.restore(repo, str(tmp_path / f"back{n}"))
    assert not (tmp_path / f"back{n}").exists()


def test_flipped_truncated_and_swapped_chunks_and_objects_are_found(tmp_path) -> None:
    """verify and restore find: a flipped byte (header, each chunk, the tag), an object cut
    at a chunk boundary (its last chunk dropped) or mid-chunk, two chunks swapped, an
    object's bytes under another's name, a manifest under another's name."""
    repo, _, obj = _big_table_backup(tmp_path, _key_file(tmp_path))
    name = str(obj.relative_to(tmp_path / "repo"))
    good = obj.read_bytes()
    sealed = CHUNK_SIZE + TAG_SIZE
    chunks = [good[HEADER_SIZE + i:HEADER_SIZE + i + sealed]
              for i in range(0, len(good) - HEADER_SIZE, sealed)]
    assert len(chunks) == 3
    header = good[:HEADER_SIZE]
    variants = {
        "flipped header": bytes([good[0] ^ 1]) + good[1:],
        "flipped salt": good[:10] + bytes([good[10] ^ 1]) + good[11:],
        "flipped chunk 1": good[:HEADER_SIZE + sealed + 5] + bytes(
            [good[HEADER_SIZE + sealed + 5] ^ 0x80]) + good[HEADER_SIZE + sealed + 6:],
        "flipped last tag": good[:-1] + bytes([good[-1] ^ 1]),
        "last chunk dropped": header + chunks[0] + chunks[1],
        "cut mid-chunk": good[:HEADER_SIZE + sealed + 1000],
        "cut in the header": good[:HEADER_SIZE - 3],
        "chunks 0 and 1 swapped": header + chunks[1] + chunks[0] + chunks[2],
        "empty": b"",
    }
    for n, (what, data) in enumerate(variants.items()):
        obj.write_bytes(data)
        try:
            _damage_is_found(tmp_path, repo, name, n)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from exc
        obj.write_bytes(good)
    assert repo.verify().ok
    # Another object's (authentic) bytes under this name: every chunk authenticates (its
    # own salt), but the plaintext's HMAC is not the name.
    other = next(p for p in (tmp_path / "repo" / "objects").rglob("*")
                 if p.is_file() and p != obj)
    shutil.copyfile(other, obj)
    _damage_is_found(tmp_path, repo, name, 100)
    obj.write_bytes(good)
    assert repo.verify().ok


def test_swapped_manifests_and_wal_entries_are_found(tmp_path) -> None:
    """A document is sealed for its own name: two backup manifests swapped (each would
    decrypt, and its content would look right) fail authentication."""
    key_file = _key_file(tmp_path)
    repo = _repo(tmp_path, key_file)
    _fill_and_back_up(tmp_path, repo)
    a, b = sorted((tmp_path / "repo" / "backups").iterdir())
    da, db_ = a.read_bytes(), b.read_bytes()
    a.write_bytes(db_)
    b.write_bytes(da)
    report = repo.verify()
    assert sorted(f for f, _ in report.problems) == [f"backups/{a.name}", f"backups/{b.name}"]
    with pytest.raises(CorruptionError, match="fails authentication"):
        repo.backups()
    a.write_bytes(da)
    b.write_bytes(db_)
    wal = sorted((tmp_path / "repo" / "wal").iterdir())
    assert len(wal) >= 2
    w0 = wal[0].read_bytes()
    wal[0].write_bytes(wal[1].read_bytes())
    assert [f for f, _ in repo.verify().problems] == [f"wal/{wal[0].name}"]
    wal[0].write_bytes(w0)
    assert repo.verify().ok


def test_verify_finds_a_flipped_byte_in_any_file_of_an_encrypted_repository(tmp_path) -> None:
    repo = _repo(tmp_path, _key_file(tmp_path))
    _fill_and_back_up(tmp_path, repo)
    root = tmp_path / "repo"
    targets = [p for p in root.rglob("*") if p.is_file() and p.name != "LOCK"]
    assert {p.relative_to(root).parts[0] for p in targets} >= {
        "REPOSITORY", "objects", "backups", "wal"}
    for p in targets:
        original = p.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        p.write_bytes(bytes(data))
        try:
            report = repo.verify()
            name = str(p.relative_to(root))
            assert any(f == name for f, _ in report.problems), (name, report.problems)
        finally:
            p.write_bytes(original)
    assert repo.verify().ok


def test_incremental_backups_into_an_encrypted_repository_store_only_new_tables(
        tmp_path) -> None:
    """Names are HMACs of the plaintext: a table is stored once across backups, from the
    same database object and from a new one (which hashes every table again)."""
    key_file = _key_file(tmp_path)
    opts = dict(SMALL_OPTS, memtable_size=256 * 1024, target_file_size=256 * 1024,
                max_bytes_for_level_base=1024 * 1024)
    with shaledb.open(tmp_path / "db", **opts) as db:
        for i in range(20000):
            db.put(b"k%06d" % i, os.urandom(50))
        db.flush()
        db.compact_range()
        first = db.backup(_repo(tmp_path, key_file))
        for i in range(0, 20000, 100):
            db.put(b"k%06d" % i, b"changed")
        second = db.backup(_repo(tmp_path, key_file))
    with shaledb.open(tmp_path / "db", **opts) as db:  # a new process' view: no digests
        third = db.backup(_repo(tmp_path, key_file))
    assert first.new_bytes == first.bytes > 1_000_000
    assert second.new_bytes < second.bytes / 5
    assert third.new_bytes < third.bytes / 5
    shared = {e.sha256 for e in first.entries} & {e.sha256 for e in second.entries}
    assert any(e.name.endswith(".sst") for e in first.entries if e.sha256 in shared)
    objects = [p for p in (tmp_path / "repo" / "objects").rglob("*") if p.is_file()]
    entries = first.entries + second.entries + third.entries
    assert len(objects) == len({e.sha256 for e in entries})
    # The names are not the SHA-256 of the content (that would confirm a guessed file).
    import hashlib

    sst = next(e for e in third.entries if e.name.endswith(".sst"))
    data = (tmp_path / "db" / sst.name).read_bytes()
    assert hashlib.sha256(data).hexdigest() != sst.sha256
    assert _repo(tmp_path, key_file).verify().ok


def test_a_database_backing_up_into_a_plain_and_an_encrypted_repository(tmp_path) -> None:
    """The table names a database object remembers are per naming scheme: a backup into
    an encrypted repository after one into a plain repository stores (and names) every
    table anew, and both restore."""
    key_file = _key_file(tmp_path)
    with shaledb.open(tmp_path / "db", **SMALL_OPTS) as db:
        for i in range(3000):
            db.put(b"k%05d" % i, b"v" * 40)
        db.flush()
        p = db.backup(_repo(tmp_path, None, "plain"))
        e = db.backup(_repo(tmp_path, key_file, "enc"))
    assert e.new_bytes == e.bytes
    assert not {x.sha256 for x in p.entries} & {x.sha256 for x in e.entries}
    for name, repo in (("p", _repo(tmp_path, None, "plain")),
                       ("e", _repo(tmp_path, key_file, "enc"))):
        with shaledb.open(shaledb.restore(repo, str(tmp_path / name)).path) as db:
            assert db.get(b"k02999") == b"v" * 40


def test_point_in_time_restore_from_an_encrypted_repository(tmp_path) -> None:
    key_file = _key_file(tmp_path)
    repo = _repo(tmp_path, key_file)
    db = shaledb.open(tmp_path / "db", wal_archive=repo, **SMALL_OPTS)
    for i in range(1000):
        db.put(b"a%05d" % i, b"phase1")
    info = db.backup(repo)
    for i in range(1000):
        db.put(b"b%05d" % i, b"phase2")
    mid = db.stats()["last_sequence"]
    for i in range(1000):
        db.put(b"c%05d" % i, b"phase3")
    db.close()
    r = shaledb.restore(_repo(tmp_path, key_file), str(tmp_path / "pitr"), until=mid)
    assert r.reached_until and r.sequence == mid and r.backup_id == info.id
    with shaledb.open(r.path) as rdb:
        assert rdb.get(b"b00999") == b"phase2" and rdb.get(b"c00000") is None


def test_sealing_round_trips_at_chunk_boundaries() -> None:
    """Objects of 0, 1, CHUNK-1, CHUNK, CHUNK+1 and 2*CHUNK bytes, fed in odd pieces: the
    stored size is what stored_size says, and the opener gives the bytes back."""
    key = RepositoryKey(MasterKey(REPO_KEY))
    for n in (0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE):
        plain = os.urandom(n)
        s = key.sealer(b"object")
        out = [s.header]
        for i in range(0, n, 300_007):
            out += s.feed(plain[i:i + 300_007])
        out.append(s.finish())
        sealed = b"".join(out)
        assert len(sealed) == stored_size(n), n
        o = key.opener(b"object", "test")
        back = [b for i in range(0, len(sealed), 700_001) for b in o.feed(
            sealed[i:i + 700_001])]
        back.append(o.finish())
        assert b"".join(back) == plain and o.name() == s.name()
        with pytest.raises(CorruptionError):  # another context: a document, not an object
            o2 = key.opener(b"document backups/x.json", "test")
            o2.feed(sealed)
            o2.finish()


def test_the_opener_itself_refuses_reordered_and_truncated_chunks() -> None:
    """Without the name check behind it: the chunk index and the last flag in the nonce
    make a reordered chunk or an object cut at a chunk boundary fail authentication."""
    key = RepositoryKey(MasterKey(REPO_KEY))
    s = key.sealer(b"object")
    body = b"".join(s.feed(os.urandom(3 * CHUNK_SIZE))) + s.finish()
    sealed = CHUNK_SIZE + TAG_SIZE
    c = [body[i:i + sealed] for i in range(0, len(body), sealed)]
    assert len(c) == 3
    for what, stream in (("reordered", c[1] + c[0] + c[2]), ("cut", c[0] + c[1]),
                         ("last first", c[2] + c[1] + c[0])):
        o = key.opener(b"object", what)
        with pytest.raises(CorruptionError, match="fails authentication"):
            o.feed(s.header + stream)
            o.finish()


def test_cli_round_trip_with_a_repository_key(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from shaledb.cli import cli

    key_file = _key_file(tmp_path)
    with shaledb.open(tmp_path / "db", **SMALL_OPTS) as db:
        for i in range(2000):
            db.put(b"k%05d" % i, SECRET_VALUE)
        want = dict(db.range())
    run = CliRunner().invoke
    repo, db_path = str(tmp_path / "repo"), str(tmp_path / "db")
    k = ["--repo-key-file", key_file]
    res = run(cli, ["backup", db_path, repo, "--json", *k])
    assert res.exit_code == 0, res.output
    first = json.loads(res.output)
    assert SECRET_VALUE not in _all_bytes(tmp_path / "repo")
    monkeypatch.setenv("SHALEDB_BACKUP_REPO_KEY_FILE", key_file)  # the environment's key
    assert run(cli, ["backup", db_path, repo]).exit_code == 0
    monkeypatch.delenv("SHALEDB_BACKUP_REPO_KEY_FILE")
    for args in (["backups", "list", repo], ["backups", "verify", repo],
                 ["restore", repo, str(tmp_path / "nokey")],
                 ["backups", "prune", repo, "--keep-last", "1"],
                 ["backup", db_path, repo]):
        res = run(cli, args)
        assert res.exit_code == 1 and "is encrypted" in res.output, (args, res.output)
        assert "--repo-key-file" in res.output
    res = run(cli, ["backups", "list", repo, "--json", *k])
    listed = json.loads(res.output)
    assert res.exit_code == 0 and len(listed) == 2 and listed[0]["id"] == first["id"]
    assert run(cli, ["backups", "verify", repo, *k]).exit_code == 0
    res = run(cli, ["restore", repo, str(tmp_path / "back"), "--backup", first["id"], *k])
    assert res.exit_code == 0, res.output
    with shaledb.open(tmp_path / "back") as db:
        assert dict(db.range()) == want
    obj = next(p for p in (tmp_path / "repo" / "objects").rglob("*") if p.is_file())
    data = bytearray(obj.read_bytes())
    data[-1] ^= 1
    obj.write_bytes(bytes(data))
    res = run(cli, ["backups", "verify", repo, "--json", *k])
    assert res.exit_code == 2
    assert [p["file"] for p in json.loads(res.output)["problems"]] == [
        str(obj.relative_to(tmp_path / "repo"))]
    res = run(cli, ["backups", "prune", repo, "--keep-last", "1", "--json", *k])
    assert res.exit_code == 0 and json.loads(res.output)["removed"] == [first["id"]]
    other = _key_file(tmp_path, bytes(range(32)), "other.key")
    res = run(cli, ["backups", "list", repo, "--repo-key-file", other])
    assert res.exit_code == 1 and "wrong key" in res.output
    res = run(cli, ["backup", db_path, str(tmp_path / "plain")])
    assert res.exit_code == 0
    res = run(cli, ["backups", "list", str(tmp_path / "plain"), *k])
    assert res.exit_code == 1 and "not encrypted" in res.output


def test_the_sealed_layout_is_the_documented_one(monkeypatch) -> None:
    """Golden bytes of repository format 2 (docs/format.md, "Encrypted repositories"): a
    change to the sealed layout, the key derivations or the name HMAC fails here, and must
    come with a new format version."""
    from shaledb.backup import sealing

    monkeypatch.setattr(sealing, "random_bytes", lambda n: bytes(range(n)))
    key = RepositoryKey(MasterKey(REPO_KEY))
    s = key.sealer(b"object")
    out = s.header + b"".join(s.feed(b"ShaleDB repository object")) + s.finish()
    assert out.hex() == (
        "5348414c454f4201000102030405060708090a0b0c0d0e0f"  # SHALEOB, 1, salt
        "e3ec28a9e29ce741d2757a898e675e44deb2e2f851a047f18d"  # the one (last) chunk
        "9a9fc73449aa75b6d8e068578bf2bb16")  # its tag
    assert s.name() == "d846e14747c1bb37fe42f079ed55c14a120412f065e59864b5919d947bd5e0f0"
    assert key.encryption_info() == {
        "cipher": "AES-256-GCM", "chunk_size": 1048576, "names": "HMAC-SHA256",
        "object_format": 1, "key_id": "6e8777844abbcb2b",
        "check": "a7cba10dc46b41869c413dd0905d5607"}
