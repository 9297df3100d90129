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
