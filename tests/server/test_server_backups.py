"""The server's backups (issue 12, server part): BGSAVE / SAVE / LASTSAVE into the configured
repository, the schedule, the WAL archive, INFO persistence, /health and /metrics, SHUTDOWN
during a backup, an encrypted server's backup. Real servers on 127.0.0.1, redis-py and raw
sockets; restores through ``shaledb.restore`` and read back through a second server."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import shaledb
from shaledb.backup import Repository
from shaledb.server import ServerConfig

from ._server_support import (
    HOST,
    RawClient,
    ServerThread,
    free_port,
    run_server_process,
    wait_until,
)


def _wait(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> None:
    wait_until(cond, timeout, what, 0.02)


def _persistence(r: redis.Redis) -> dict[str, Any]:
    return r.info("persistence")


def _backup_done(r: redis.Redis, ok: int) -> bool:
    info = _persistence(r)
    return info["rdb_bgsave_in_progress"] == 0 and info["shaledb_backups_ok"] >= ok


def _health(port: int) -> tuple[int, dict[str, Any]]:
    import json

    req = urllib.request.Request(f"http://{HOST}:{port}/health")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


def _break(repo: Path) -> None:
    """Make the repository unwritable for any user, root included (chmod does not stop
    root): its uploads directory becomes a file, so every upload fails (ENOTDIR)."""
    shutil.rmtree(repo / "tmp", ignore_errors=True)
    (repo / "tmp").write_bytes(b"not a directory")


def _mend(repo: Path) -> None:
    (repo / "tmp").unlink()


def _restored_server(repo: Path, dest: Path, **restore: Any) -> ServerThread:
    shaledb.restore(str(repo), str(dest), **restore)
    return ServerThread(ServerConfig(port=0, host=HOST, dir=str(dest)))


# -- BGSAVE under writers, restore ---------------------------------------------------------

def test_bgsave_while_clients_write_restores_every_acknowledged_write(
        server_factory, tmp_path) -> None:
    repo = tmp_path / "repo"
    st = server_factory(backup_repo=str(repo))
    r = st.client(decode_responses=True)
    r.mset({f"pre{i}": i for i in range(2000)})
    first_lastsave = r.lastsave()
    acked = [0]
    stop = threading.Event()

    def writer() -> None:
        w = st.client()
        i = 0
        while not stop.is_set():
            w.set(f"w{i}", i)
            i += 1
            acked[0] = i  # acknowledged: the reply came back
        w.close()

    t = threading.Thread(target=writer)
    t.start()
    _wait(lambda: acked[0] > 200, what="writer running")
    before = acked[0]
    raw = RawClient(st.port)
    raw.send("BGSAVE")
    raw.send("BGSAVE")  # read in the same turn: the first cannot have finished
    assert raw.read() == b"Background saving started"
    assert str(raw.read()) == "ERR Background save already in progress"
    _wait(lambda: _backup_done(r, 1), what="backup finished")
    time.sleep(0.2)  # writes after the backup: must not be in it
    stop.set()
    t.join()
    info = _persistence(r)
    assert info["rdb_last_bgsave_status"] == "ok" and info["rdb_last_bgsave_time_sec"] >= 0
    assert info["rdb_saves"] == 1 and info["shaledb_backup_last_trigger"] == "bgsave"
    assert info["shaledb_backup_last_id"] and info["shaledb_backup_last_bytes"] > 0
    assert r.lastsave() >= first_lastsave
    assert info["rdb_last_save_time"] == int(r.lastsave().timestamp())
    backup = Repository(str(repo)).backup()
    assert backup.id == info["shaledb_backup_last_id"]
    assert backup.sequence == info["shaledb_backup_last_sequence"]
    assert info["rdb_changes_since_last_save"] > 0  # the writes after it

    restored = _restored_server(repo, tmp_path / "restored")
    try:
        c = restored.client(decode_responses=True)
        assert c.mget([f"pre{i}" for i in range(2000)]) == [str(i) for i in range(2000)]
        n = c.dbsize() - 2000
        assert n >= before, "a write acknowledged before BGSAVE is missing"
        assert n < acked[0], "writes acknowledged after the backup ended are in it"
        # The writer's keys are a prefix: the backup is a snapshot, not a mix.
        assert c.mget([f"w{i}" for i in range(n)]) == [str(i) for i in range(n)]
        assert c.get(f"w{n}") is None
    finally:
        restored.stop()


def test_point_in_time_restore_covers_the_servers_writes_after_the_backup(
        server_factory, tmp_path) -> None:
    repo = tmp_path / "repo"
    st = server_factory(backup_repo=str(repo), memtable_size=64 * 1024)
    r = st.client()
    r.mset({f"a{i}": i for i in range(500)})
    assert r.bgsave()
    _wait(lambda: _backup_done(r, 1))
    for i in range(3000):  # several memtables: WAL segments archived while serving
        r.set(f"b{i}", b"x" * 100)
    seq = r.info("shaledb")["last_sequence"]
    r.set("after", 1)
    info = _persistence(r)
    assert info["shaledb_wal_archive_enabled"] == 1
    _wait(lambda: _persistence(r)["shaledb_wal_archive_segments"] > 0,
          what="a segment archived while serving")
    st.stop()  # close archives the live segment
    restored = _restored_server(repo, tmp_path / "pitr", until=seq)
    try:
        c = restored.client()
        assert c.get("b2999") == b"x" * 100 and c.get("a499") == b"499"
        assert c.get("after") is None  # past until
    finally:
        restored.stop()


# -- no repository, settings --------------------------------------------------------------

def test_without_a_repository_bgsave_says_what_to_do_and_save_checkpoints(server) -> None:
    raw = RawClient(server.port)
    for args in (("BGSAVE",), ("BGSAVE", "SCHEDULE")):
        err = str(raw(*args))
        assert err.startswith("ERR no backup repository is configured") and \
            "--backup-repo" in err, err
    assert raw("SAVE") == b"OK"  # a checkpoint, as before
    assert raw("CONFIG", "GET", "backup-repo") == [b"backup-repo", b""]
    assert "needs backup_repo" in str(raw("CONFIG", "SET", "backup-interval", "60"))
    info = server.client().info("persistence")
    assert info["shaledb_backup_repo_configured"] == 0 and info["rdb_saves"] == 0
    assert info["rdb_last_bgsave_status"] == "ok" and info["rdb_last_bgsave_time_sec"] == -1
    raw.close()


def test_backup_repo_is_configured_at_start_only(server_factory, tmp_path) -> None:
    repo = tmp_path / "repo"
    st = server_factory(backup_repo=str(repo))
    raw = RawClient(st.port)
    assert raw("CONFIG", "GET", "backup-repo") == [b"backup-repo", str(repo).encode()]
    # A client that could point it anywhere could have the database written there.
    assert str(raw("CONFIG", "SET", "backup-repo", "/tmp/elsewhere")) == (
        "ERR CONFIG SET failed (possibly related to argument 'backup-repo') - can't set "
        "immutable config")
    assert str(raw("CONFIG", "SET", "backup-wal-archive", "no")).endswith(
        "can't set immutable config")
    assert raw("CONFIG", "SET", "backup-interval", "3600") == b"OK"
    assert raw("CONFIG", "GET", "backup-interval") == [b"backup-interval", b"3600"]
    assert "argument must be a number >= 0" in str(
        raw("CONFIG", "SET", "backup-interval", "-1"))
    raw.close()
    # TOML and the environment.
    toml = tmp_path / "s.toml"
    toml.write_text(f'[server]\nbackup-repo = "{repo}"\nbackup-interval = 60\n')
    cfg = ServerConfig.load(str(toml))
    assert cfg.backup_repo == str(repo) and cfg.backup_interval == 60
    old = os.environ.get("SHALEDB_BACKUP_REPO")
    os.environ["SHALEDB_BACKUP_REPO"] = str(repo)
    try:
        assert ServerConfig.load(None).backup_repo == str(repo)
    finally:
        if old is None:
            del os.environ["SHALEDB_BACKUP_REPO"]
        else:
            os.environ["SHALEDB_BACKUP_REPO"] = old
    with pytest.raises(shaledb.InvalidArgument, match="needs backup_repo"):
        ServerConfig(backup_interval=5)


def test_a_repository_overlapping_the_data_directory_is_refused(tmp_path) -> None:
    data = tmp_path / "db"
    for repo in (data / "backups", data, tmp_path):
        with pytest.raises(shaledb.InvalidArgument, match="overlap"):
            ServerThread(ServerConfig(port=0, host=HOST, dir=str(data), backup_repo=str(repo)))


def test_serve_backup_repo_flag_bgsave_lastsave_and_restart(tmp_path) -> None:
    data, repo, port = tmp_path / "db", tmp_path / "repo", free_port()
    proc = run_server_process(data, port, "--backup-repo", str(repo))
    try:
        r = redis.Redis(host=HOST, port=port, socket_timeout=10)
        r.set("k", "v")
        assert r.bgsave()
        _wait(lambda: _backup_done(r, 1))
        lastsave = r.lastsave()
        backup_id = _persistence(r)["shaledb_backup_last_id"]
        r.shutdown(nosave=True)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # After a restart LASTSAVE is the newest backup's time, not the start time.
    time.sleep(1.1)
    proc = run_server_process(data, port, "--backup-repo", str(repo))
    try:
        r = redis.Redis(host=HOST, port=port, socket_timeout=10)
        assert abs((r.lastsave() - lastsave).total_seconds()) <= 1
        assert _persistence(r)["shaledb_backup_last_id"] == backup_id
        r.shutdown(nosave=True)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    verify = subprocess.run([sys.executable, "-m", "shaledb.cli", "backups", "verify",
                             str(repo)], capture_output=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- schedule, failures, /health, /metrics --------------------------------------------------

def test_scheduled_backups_and_a_failing_one_degrades_health(server_factory, tmp_path) -> None:
    repo = tmp_path / "repo"
    st = server_factory(backup_repo=str(repo), backup_interval=0.5, metrics_port=0,
                        backup_wal_archive=False)
    mport = st.server.metrics_port
    r = st.client()
    r.set("k", "v")
    _wait(lambda: _backup_done(r, 1), what="a scheduled backup")
    info = _persistence(r)
    assert info["shaledb_backup_last_trigger"] == "schedule"
    assert info["rdb_last_bgsave_status"] == "ok"
    assert _health(mport)[0] == 200
    assert _metric(mport, "shaledb_backup_configured") == 1
    _break(repo)
    _wait(lambda: _persistence(r)["rdb_last_bgsave_status"] == "err", what="a failed backup")
    info = _persistence(r)
    assert info["shaledb_backups_failed"] >= 1 and info["shaledb_backup_last_error"]
    status, body = _health(mport)
    assert status == 503 and body["status"] == "degraded"
    assert "the last backup (schedule" in body["reason"] and "failed" in body["reason"]
    assert body["backup"]["status"] == "err"
    assert _metric(mport, "shaledb_backup_failures_total") >= 1
    assert _metric(mport, "shaledb_backup_last_failed") == 1
    _mend(repo)
    _wait(lambda: _health(mport)[0] == 200, what="health back after a good backup")
    assert _persistence(r)["rdb_last_bgsave_status"] == "ok"
    assert _metric(mport, "shaledb_backup_last_failed") == 0
    assert _metric(mport, "shaledb_backup_last_duration_seconds") >= 0
    assert _metric(mport, "shaledb_backup_last_bytes") > 0
    # Turned off live: no more backups start.
    r.config_set("backup-interval", 0)
    time.sleep(0.1)
    n = _persistence(r)["shaledb_backups_ok"]
    time.sleep(1.2)
    assert _persistence(r)["shaledb_backups_ok"] == n


def test_a_failing_wal_archive_degrades_health(server_factory, tmp_path) -> None:
    repo = tmp_path / "repo"
    st = server_factory(backup_repo=str(repo), metrics_port=0)
    mport = st.server.metrics_port
    r = st.client()
    _break(repo)
    r.set("k", "v")
    # SAVE: the checkpoint retires the WAL segment (archived next), then the backup fails.
    with pytest.raises(redis.ResponseError, match="backup failed"):
        r.save()
    _wait(lambda: _persistence(r)["shaledb_wal_archive_errors"] >= 1,
          what="a failed archive attempt")
    status, body = _health(mport)
    assert status == 503 and "the WAL archive is failing" in body["reason"]
    assert body["wal_archive"]["waiting"] >= 1
    assert _metric(mport, "shaledb_wal_archive_errors_total") >= 1
    _mend(repo)
    assert r.save()  # the backup works again
    _wait(lambda: _health(mport)[0] == 200, what="the archive retried")  # every 2 s
    assert _persistence(r)["shaledb_wal_archive_segments"] >= 1


# -- SHUTDOWN during a backup ----------------------------------------------------------------

@pytest.mark.timing
def test_shutdown_stops_a_running_backup(server_factory, tmp_path) -> None:
    repo = tmp_path / "repo"
    st = server_factory(backup_repo=str(repo), backup_wal_archive=False)
    r = st.client()
    value = os.urandom(64 * 1024)
    for i in range(160):  # 10 MiB
        r.set(f"k{i}", value)
    assert r.save()  # a backup of it, so the repository exists and is valid
    storage = st.server.backups.repository.storage
    upload = storage.upload

    def slow_upload():  # a repository on a slow disk: 0.5 s per 1 MiB chunk
        up = upload()
        write = up.write

        def slow_write(data):
            time.sleep(0.5)
            write(data)

        up.write = slow_write
        return up

    for i in range(160):  # new data: the next backup copies 10 MiB again (> 5 s)
        r.set(f"n{i}", value)
    r.set("last", 1)
    storage.upload = slow_upload
    assert r.bgsave()
    _wait(lambda: _persistence(r)["shaledb_backup_current_bytes"] > 0, what="copying")
    t0 = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        r.execute_command("SHUTDOWN")
    st.stop()
    assert time.monotonic() - t0 < 3.5, "shutdown waited for the whole backup"
    assert st.server.backups.status().results["stopped"] == 1
    assert not (repo / "tmp").exists() or not list((repo / "tmp").iterdir())
    # Only the SAVE's backup is listed, and it verifies; the database is whole.
    repository = Repository(str(repo))
    assert len(repository.backups()) == 1
    assert repository.verify().ok
    st2 = server_factory(dir=st.config.dir, backup_repo=str(repo), backup_wal_archive=False)
    r2 = st2.client()
    assert r2.get("last") == b"1" and r2.get("n159") == value
    assert r2.bgsave()
    _wait(lambda: _backup_done(r2, 1))
    assert len(Repository(str(repo)).backups()) == 2


# -- encryption, permissions, ACL ------------------------------------------------------------

def test_an_encrypted_servers_backup_holds_no_plaintext(server_factory, tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(bytes(range(200, 232)).hex() + "\n")
    key_file.chmod(0o600)
    repo = tmp_path / "repo"
    st = server_factory(backup_repo=str(repo), encryption_key_file=str(key_file),
                        memtable_size=64 * 1024)
    r = st.client()
    marker = b"PLAINTEXT-MARKER-"
    for i in range(2000):
        r.set(marker + b"key%d" % i, marker + b"value%d" % i)
    assert r.save()  # tables, and the WAL segment before them archived
    r.set(marker + b"in-the-wal", marker + b"live")  # in the live WAL, backed up as is
    assert r.bgsave()
    _wait(lambda: _backup_done(r, 2))
    _wait(lambda: _persistence(r)["shaledb_wal_archive_segments"] >= 1)
    files = [p for p in repo.rglob("*") if p.is_file()]
    assert len(files) > 5
    for p in files:
        data = p.read_bytes()
        assert marker not in data and b"value1999" not in data, p
    for p in [repo, *repo.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.name == "LOCK":
            continue
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
    # The backup restores with the key, and only with it.
    dest = tmp_path / "restored"
    shaledb.restore(str(repo), str(dest))
    with pytest.raises(shaledb.ShaleError):
        ServerThread(ServerConfig(port=0, host=HOST, dir=str(dest)))
    restored = ServerThread(ServerConfig(port=0, host=HOST, dir=str(dest),
                                         encryption_key_file=str(key_file)))
    try:
        c = restored.client()
        assert c.get(marker + b"in-the-wal") == marker + b"live"
        assert c.get(marker + b"key1999") == marker + b"value1999"
    finally:
        restored.stop()


def test_backup_commands_acl_categories_as_redis(server_factory, tmp_path) -> None:
    st = server_factory(backup_repo=str(tmp_path / "repo"))
    r = st.client()
    info = r.execute_command("COMMAND", "INFO", "save", "bgsave", "lastsave")
    cats = {}
    for entry in info.values() if isinstance(info, dict) else info:
        name = entry["name"] if isinstance(entry, dict) else entry[0]
        acl = entry["acl_categories"] if isinstance(entry, dict) else entry[6]
        cats[name if isinstance(name, str) else name.decode()] = {
            c if isinstance(c, str) else c.decode() for c in acl}
    # As Redis 7 files them (COMMAND INFO of redis-server 7).
    assert cats["save"] == {"@admin", "@slow", "@dangerous"}
    assert cats["bgsave"] == {"@admin", "@slow", "@dangerous"}
    assert cats["lastsave"] == {"@admin", "@fast", "@dangerous"}
    r.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-@admin")
    app = st.client(username="app", password="pw")
    for cmd in ("BGSAVE", "SAVE", "LASTSAVE"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command(cmd)
    r.execute_command("ACL", "SETUSER", "ops", "on", ">pw", "-@all", "+bgsave", "+info")
    ops = st.client(username="ops", password="pw")
    assert ops.bgsave()
    _wait(lambda: _backup_done(r, 1))


@pytest.mark.timing
def test_shutdown_stops_a_backup_waiting_for_the_repository_lock(server_factory, tmp_path) -> None:
    """A backup waiting for the repository's LOCK (a `shaledb backups prune` or another
    backup holds it) kept SHUTDOWN waiting until the lock was free or the wait timed out
    (10 minutes). The wait now asks the server whether to stop, every 50 ms."""
    repo = tmp_path / "repo"
    st = server_factory(backup_repo=str(repo), backup_wal_archive=False)
    r = st.client()
    r.set("k", "v")
    held = Repository(str(repo)).locked()  # another process's prune, as far as flock knows
    try:
        assert r.bgsave()
        _wait(lambda: _persistence(r)["rdb_bgsave_in_progress"] == 1, what="bgsave")
        time.sleep(0.3)  # it is waiting for the lock now
        t0 = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            r.execute_command("SHUTDOWN")
        st.stop()
        assert time.monotonic() - t0 < 5.0, "shutdown waited for the repository's lock"
        assert st.server.backups.status().results["stopped"] == 1
    finally:
        held.__exit__(None, None, None)
