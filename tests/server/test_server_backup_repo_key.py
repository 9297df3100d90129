"""A server's backup repository with its own key (backup-repo-key-file): BGSAVE, SAVE and the
WAL archive of a plain database write nothing readable without the key; the key file is set
at start only (flag, TOML, environment), CONFIG GET shows its path, never the key."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis

import shaledb
from shaledb.backup import Repository
from shaledb.errors import EncryptionError
from shaledb.server import ServerConfig

from ._server_support import HOST, RawClient, ServerThread, free_port, run_server_process
from .test_server_backups import _backup_done, _persistence, _wait

REPO_KEY = bytes(range(50, 82))


def _key_file(tmp_path: Path, key: bytes = REPO_KEY, name: str = "repo.key") -> Path:
    path = tmp_path / name
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return path


def test_bgsave_into_an_encrypted_repository_holds_no_plaintext(server_factory,
                                                                 tmp_path) -> None:
    key_file = _key_file(tmp_path)
    repo = tmp_path / "repo"
    st = server_factory(backup_repo=str(repo), backup_repo_key_file=str(key_file),
                        memtable_size=64 * 1024)
    r = st.client()
    marker = b"PLAINTEXT-MARKER-"
    for i in range(2000):
        r.set(marker + b"key%d" % i, marker + b"value%d" % i)
    assert r.save()  # tables (MANIFEST copies hold user keys), and archived WAL
    r.set(marker + b"in-the-wal", marker + b"live")
    assert r.bgsave()
    _wait(lambda: _backup_done(r, 2))
    _wait(lambda: _persistence(r)["shaledb_wal_archive_segments"] >= 1)
    raw = RawClient(st.port)
    assert raw("CONFIG", "GET", "backup-repo-key-file") == [
        b"backup-repo-key-file", str(key_file).encode()]
    assert str(raw("CONFIG", "SET", "backup-repo-key-file", "/tmp/x")).endswith(
        "can't set immutable config")
    raw.close()
    files = [p for p in repo.rglob("*") if p.is_file()]
    assert len(files) > 5 and any(p.parent.name == "wal" for p in files)
    for p in files:
        data = p.read_bytes()
        assert marker not in data and b"value1999" not in data, p
        assert REPO_KEY not in data and REPO_KEY.hex().encode() not in data, p
        assert b"MANIFEST-" not in data and b".sst" not in data, p  # the file list
    for p in [repo, *repo.rglob("*")]:
        if p.name != "LOCK":
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
    # Without the key nothing opens; with it, the backup restores (plain database).
    with pytest.raises(EncryptionError, match="is encrypted"):
        shaledb.restore(str(repo), str(tmp_path / "nokey"))
    keyed = Repository(str(repo), encryption_key_file=str(key_file))
    assert keyed.verify().ok
    dest = tmp_path / "restored"
    shaledb.restore(keyed, str(dest))
    restored = ServerThread(ServerConfig(port=0, host=HOST, dir=str(dest)))
    try:
        c = restored.client()
        assert c.get(marker + b"in-the-wal") == marker + b"live"
        assert c.get(marker + b"key1999") == marker + b"value1999"
    finally:
        restored.stop()


def test_a_server_with_the_wrong_or_no_repository_key_refuses_to_start(tmp_path) -> None:
    key_file = _key_file(tmp_path)
    other = _key_file(tmp_path, bytes(range(32)), "other.key")
    repo, plain = tmp_path / "repo", tmp_path / "plain"
    Repository(str(repo), encryption_key_file=str(key_file))
    Repository(str(plain))
    cases = [(repo, None, "is encrypted"), (repo, other, "wrong key"),
             (plain, key_file, "not encrypted")]
    for n, (where, kf, message) in enumerate(cases):
        with pytest.raises(EncryptionError, match=message):
            ServerThread(ServerConfig(
                port=0, host=HOST, dir=str(tmp_path / f"db{n}"), backup_repo=str(where),
                backup_repo_key_file=None if kf is None else str(kf)))
    with pytest.raises(shaledb.InvalidArgument, match="needs backup_repo"):
        ServerConfig(backup_repo_key_file=str(key_file))


def test_serve_repo_key_file_flag_toml_and_environment(tmp_path, monkeypatch) -> None:
    key_file = _key_file(tmp_path)
    repo = tmp_path / "repo"
    toml = tmp_path / "s.toml"
    toml.write_text(f'[server]\nbackup-repo = "{repo}"\n'
                    f'backup-repo-key-file = "{key_file}"\n')
    assert ServerConfig.load(str(toml)).backup_repo_key_file == str(key_file)
    monkeypatch.setenv("SHALEDB_BACKUP_REPO_KEY_FILE", str(key_file))
    assert ServerConfig.load(None, {"backup_repo": str(repo)}).backup_repo_key_file == str(
        key_file)
    monkeypatch.delenv("SHALEDB_BACKUP_REPO_KEY_FILE")
    port = free_port()
    proc = run_server_process(tmp_path / "db", port, "--backup-repo", str(repo),
                              "--repo-key-file", str(key_file))
    try:
        r = redis.Redis(host=HOST, port=port, socket_timeout=10)
        r.set("secret-key", "secret-value")
        assert r.bgsave()
        _wait(lambda: _backup_done(r, 1))
        r.shutdown(nosave=True)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cli = [sys.executable, "-m", "shaledb.cli", "backups", "verify", str(repo)]
    res = subprocess.run(cli, capture_output=True, timeout=120)
    assert res.returncode == 1 and b"--repo-key-file" in res.stderr, res.stderr
    res = subprocess.run([*cli, "--repo-key-file", str(key_file)], capture_output=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    for p in repo.rglob("*"):
        if p.is_file():
            assert b"secret-value" not in p.read_bytes(), p
