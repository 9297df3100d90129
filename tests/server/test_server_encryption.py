"""``shaledb serve`` on an encrypted database (issue 11): the key file from the flag, the TOML
setting or ``SHALEDB_ENCRYPTION_KEY_FILE``; no plaintext in the data directory; the key never
in CONFIG GET, INFO or the server's output; a wrong or missing key stops the start with a
clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis

from conftest import pure_only
from shaledb.server import ServerConfig

from ._server_support import HOST, ServerThread, free_port, run_server_process

KEY = bytes(range(200, 232))
OTHER = bytes(range(32))


def _key_file(path: Path, key: bytes = KEY) -> str:
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return str(path)


def _files(path: Path) -> list[bytes]:
    return [p.read_bytes() for p in path.rglob("*") if p.is_file()]


def _serve_fails(data: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    """Start a server that must refuse to start; its stderr."""
    cmd = [sys.executable, "-m", "shaledb.cli", "serve", "--host", HOST, "--port",
           str(free_port()), "--dir", str(data), "--metrics-port", "off", *extra]
    p = subprocess.run(cmd, capture_output=True, timeout=60,
                       env={**{k: v for k, v in os.environ.items()
                               if not k.startswith("SHALEDB_")}, **(env or {})})
    assert p.returncode != 0, p.stdout
    return p.stderr.decode(errors="replace")


def test_serve_with_a_key_file_keeps_no_plaintext_and_needs_the_key(tmp_path) -> None:
    data = tmp_path / "db"
    key_file = _key_file(tmp_path / "key")
    port = free_port()
    proc = run_server_process(data, port, "--encryption-key-file", key_file)
    try:
        c = redis.Redis(host=HOST, port=port, socket_timeout=10)
        for i in range(2000):
            c.set(f"secret-key-{i:05d}", f"secret-value-{i:05d}-" + "z" * 50)
        c.set("ttl-key", "ttl-secret-value", ex=1000)
        assert c.get("secret-key-00042").startswith(b"secret-value-00042")
        # CONFIG GET shows the key file's path, never the key; CONFIG SET cannot change it.
        got = c.config_get("*")
        assert got["encryption-key-file"] == key_file
        everything = repr(got) + repr(c.info("everything"))
        assert KEY.hex() not in everything and KEY.hex().upper() not in everything
        try:
            c.config_set("encryption-key-file", str(tmp_path / "other"))
            raise AssertionError("CONFIG SET encryption-key-file succeeded")
        except redis.ResponseError as exc:
            assert "immutable" in str(exc)
        assert c.execute_command("SAVE")  # tables on disk, too
        for data_file in _files(data):
            assert b"secret-key" not in data_file and b"secret-value" not in data_file
            assert b"ttl-secret" not in data_file and KEY.hex().encode() not in data_file
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert KEY.hex().encode() not in out + err
    for data_file in _files(data):
        assert b"secret-key" not in data_file and b"secret-value" not in data_file

    # Without the key, or with another one, the server does not start, and says why.
    err_text = _serve_fails(data)
    assert "EncryptionError" in err_text and "encryption-key-file" in err_text
    other = _key_file(tmp_path / "other", OTHER)
    err_text = _serve_fails(data, "--encryption-key-file", other)
    assert "wrong encryption key" in err_text
    assert KEY.hex() not in err_text and OTHER.hex() not in err_text
    loose = tmp_path / "loose"
    loose.write_text(KEY.hex())
    loose.chmod(0o644)
    assert "chmod 600" in _serve_fails(data, "--encryption-key-file", str(loose))

    # The TOML setting and the environment variable work like the flag.
    toml = tmp_path / "server.toml"
    toml.write_text(f'[server]\nencryption-key-file = "{key_file}"\n')
    for extra, env in ((("--config", str(toml)), None),
                       ((), {"SHALEDB_ENCRYPTION_KEY_FILE": key_file})):
        port = free_port()
        cmd = [sys.executable, "-m", "shaledb.cli", "serve", "--host", HOST, "--port",
               str(port), "--dir", str(data), "--metrics-port", "off", *extra]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **(env or {})})
        try:
            from ._server_support import wait_for_port

            wait_for_port(port, proc)
            c = redis.Redis(host=HOST, port=port, socket_timeout=10)
            assert c.get("secret-key-01999").startswith(b"secret-value-01999")
            assert c.ttl("ttl-key") > 900
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


def test_in_process_server_opens_the_database_with_the_configured_key(tmp_path) -> None:
    data = tmp_path / "db"
    key_file = _key_file(tmp_path / "key")
    st = ServerThread(ServerConfig(port=0, dir=str(data), encryption_key_file=key_file))
    try:
        c = st.client()
        c.set("k", "plaintext-never-on-disk")
        assert c.get("k") == b"plaintext-never-on-disk"
        assert st.server is not None and st.server.db.encrypted
        assert st.server.db.options.encryption_key is None
    finally:
        st.stop()
    assert not any(b"plaintext-never-on-disk" in f for f in _files(data))


def test_a_write_refused_for_lack_of_descriptors_can_be_retried_when_encrypted(tmp_path
                                                                             ) -> None:
    # A write seals its WAL record (the nonce is the offset where it will start), then
    # reserves the map it needs; an EMFILE there answers -TRYAGAIN with nothing written. The
    # retry seals a record for the same offset again, which the cipher's nonce guard refused
    # (AssertionError): once one map growth met EMFILE, every later write of the segment
    # failed, as ERR, until a restart. The discarded record never reached the file, so
    # sealing that offset again reuses no nonce in anything written.
    import errno

    import shaledb
    from shaledb.engine.vfs import _storage_error
    from shaledb.testing import FaultInjectionFS

    class Fs(FaultInjectionFS):
        fail_grows = 0

        def _map_grow(self, f, fd, needed):  # type: ignore[no-untyped-def]
            if self.fail_grows and f.path.endswith(".log") and f.size > 0:
                self.fail_grows -= 1  # a live segment's next MiB: no descriptor for the map
                raise _storage_error("write", f.path, OSError(errno.EMFILE, "no fd"))
            super()._map_grow(f, fd, needed)

    path = str(tmp_path / "db")
    fs = Fs()
    db = shaledb.open(path, fs=fs, encryption_key=KEY, memtable_size=8 << 20)
    st = ServerThread(ServerConfig(port=0, host=HOST, dir=path, metrics_port=None), db)
    written: list[bytes] = []
    try:
        c = st.client()
        fs.fail_grows = 1
        refused = []
        for i in range(3000):  # 3 MB: the segment's map grows past its first MiB
            key = b"secret-key-%05d" % i
            try:
                assert c.set(key, b"secret-value-" + b"z" * 1000)
                written.append(key)
            except redis.ResponseError as exc:  # TryAgainError: -TRYAGAIN
                refused.append(f"{type(exc).__name__}: {exc}")
        assert fs.fail_grows == 0, "the map never grew"
        assert len(refused) == 1, refused[:3]
        assert refused[0].startswith("TryAgainError: the server is out of file descriptors"), \
            refused
        stats = st.call(db.stats)
        assert stats["read_only"] is False and stats["descriptor_shortages"] == 1
        assert c.get(written[-1]).startswith(b"secret-value-")
    finally:
        st.stop()
        db.close()
    assert not any(b"secret-key" in f or b"secret-value" in f for f in _files(tmp_path / "db"))
    with shaledb.open(path, encryption_key=KEY) as again:  # every acknowledged write is back
        assert all(again.get(b"\x00" + k) is not None for k in written)


def test_restarts_of_an_encrypted_server_never_create_a_file_number_twice(tmp_path) -> None:
    # Each open prepares the next WAL segment (NNNNNN.log.new, number taken after the one
    # its new manifest records) and a clean stop removes it unused. The next open handed
    # that number out again for its own WAL segment: one number, two files (and two file
    # keys). Now the close records the counter past it first.
    import shaledb
    from shaledb.engine.vfs import PosixFileSystem

    created: list[str] = []

    class Recording(PosixFileSystem):
        def create_mapped(self, p, *a, **k):  # type: ignore[no-untyped-def]
            created.append(os.path.basename(p))
            return super().create_mapped(p, *a, **k)

        def create(self, p, *a, **k):  # type: ignore[no-untyped-def]
            created.append(os.path.basename(p))
            return super().create(p, *a, **k)

    path = str(tmp_path / "db")
    for round_ in range(3):
        db = shaledb.open(path, fs=Recording(), encryption_key=KEY)
        st = ServerThread(ServerConfig(port=0, host=HOST, dir=path, metrics_port=None), db)
        try:
            c = st.client()
            assert c.ping()
            if round_ == 1:
                assert c.set("k", "v")
            assert c.get("k") == (b"v" if round_ >= 1 else None)
        finally:
            st.stop()
            db.close()
    numbers = [int(n.split(".")[0].split("-")[-1]) for n in created
               if n[0].isdigit() or n.startswith("MANIFEST-")]
    assert any(n.endswith(".log.new") for n in created)
    assert len(numbers) == len(set(numbers)), created


@pure_only
def test_writes_in_a_prepared_segment_whose_rename_was_lost_are_kept_decryptable(
        tmp_path, monkeypatch) -> None:
    # A crash right after a memtable switch whose rename (NNNNNN.log.new -> NNNNNN.log) did
    # not reach the disk while the segment's records did: the restarted server keeps the
    # writes before the switch and saves the others under lost/, with the segment's 48-byte
    # header so the database's key decrypts them. Before, the open read the encrypted
    # .log.new as a plain log, found no records and removed it: nothing was kept.
    import shutil
    import threading

    import format_reader as fr
    import shaledb
    from shaledb.engine.db import Engine

    gate = threading.Event()
    real = Engine._seal_retired_wals

    def held(self: Engine) -> None:  # the flush thread waits: the switch stays unsealed
        gate.wait(30)
        real(self)

    monkeypatch.setattr(Engine, "_seal_retired_wals", held)
    path = tmp_path / "db"
    db = shaledb.open(str(path), encryption_key=KEY, memtable_size=256 << 10,
                      fsync_interval=None)
    st = ServerThread(ServerConfig(port=0, host=HOST, dir=str(path), metrics_port=None), db)
    before: list[bytes] = []
    try:
        c = st.client()
        (prep,) = [n for n in os.listdir(path) if n.endswith(".log.new")]
        i = 0
        while not (path / prep[:-4]).exists():
            key = b"before-%05d" % i
            assert c.set(key, b"secret-value-" + b"z" * 2000)
            before.append(key)
            i += 1
        before.pop()  # the write that switched is in the new segment
        for j in range(10):
            assert c.set(b"after-%05d" % j, b"secret-after-" + b"y" * 2000)
        copy = tmp_path / "copy"
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("LOCK", "*.log.new"))
    finally:
        gate.set()
        st.stop()
        db.close()
    monkeypatch.setattr(Engine, "_seal_retired_wals", real)
    os.rename(copy / prep[:-4], copy / prep)
    header = (copy / prep).read_bytes()[:48]
    key_file = _key_file(tmp_path / "key")
    st = ServerThread(ServerConfig(port=0, host=HOST, dir=str(copy), metrics_port=None,
                                   encryption_key_file=key_file))
    try:
        c = st.client()
        assert all(c.get(k) is not None for k in before)
        assert c.get(b"after-00009") is None
    finally:
        st.stop()
    assert not (copy / prep).exists()
    (lost,) = [p for p in (copy / "lost").iterdir() if p.name.startswith(prep)]
    data = lost.read_bytes()
    assert data[:48] == header and b"secret-after" not in data
    keys = fr.read_keyring((copy / "KEYRING").read_bytes(), KEY)
    log = fr.read_log(data, int(prep.split(".")[0]), keys, fr.WAL_FILE)
    written = [op.key for p in log.payloads for op in fr.decode_wal_payload(p)]
    assert b"\x00after-00009" in written


@pure_only
def test_an_encrypted_server_restarts_after_a_power_loss_before_the_old_segment_is_sealed(
        tmp_path, monkeypatch) -> None:
    # A memtable switch, then a power loss before the flush thread sealed the old segment;
    # the new segment's name reached the disk, its records at random. The new segment's
    # records were written before any fsync of it: on an encrypted database they say 48 (its
    # header, fsynced when it was prepared), which vouching took for an fsync of records
    # (> 32, a plain header), so the old segment's torn tail read as corruption and the
    # server refused to start. It starts, holding a prefix of the writes.
    import contextlib
    import random
    import threading

    import shaledb
    from shaledb.engine.db import Engine
    from shaledb.testing import FaultInjectionFS

    key_file = _key_file(tmp_path / "key")
    real = Engine._seal_retired_wals
    for seed in range(1, 9):
        gate = threading.Event()

        def held(self: Engine, gate: threading.Event = gate) -> None:
            gate.wait(30)
            real(self)

        monkeypatch.setattr(Engine, "_seal_retired_wals", held)
        path = tmp_path / str(seed)
        fs = FaultInjectionFS()
        db = shaledb.open(str(path), fs=fs, encryption_key=KEY, memtable_size=128 << 10,
                          fsync_interval=None)
        st = ServerThread(ServerConfig(port=0, host=HOST, dir=str(path), metrics_port=None,
                                       appendfsync="no"), db)
        written: list[bytes] = []
        try:
            c = st.client()
            while len([n for n in os.listdir(path) if n.endswith(".log")]) < 2:
                written.append(b"k-%05d" % len(written))
                assert c.set(written[-1], b"secret-value-" + b"z" * 1000)
            for _ in range(30):  # (less than a memtable: the flush thread is held)
                written.append(b"k-%05d" % len(written))
                assert c.set(written[-1], b"secret-value-" + b"z" * 1000)
            fs.sync_dir(str(path))  # the names reach the disk (a journal commit)
            fs.crash(random.Random(seed))
        finally:
            gate.set()
            with contextlib.suppress(Exception):
                st.stop()
            with contextlib.suppress(shaledb.ShaleError):
                db.close()
        monkeypatch.setattr(Engine, "_seal_retired_wals", real)
        st = ServerThread(ServerConfig(port=0, host=HOST, dir=str(path), metrics_port=None,
                                       encryption_key_file=key_file))
        try:
            c = st.client()
            present = [c.get(k) is not None for k in written]
            assert present == sorted(present, reverse=True), f"seed {seed}: not a prefix"
        finally:
            st.stop()
