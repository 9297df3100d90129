"""TLS with a test CA generated at test time: redis-py over ``ssl=True`` on loopback, with
and without client certificates, for each ``tls-auth-clients`` mode."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shaledb.errors import InvalidArgument
from shaledb.server import ServerConfig

from ._server_support import HOST, RawClient, free_port, redis_cli, run_server_process
from ._tls_support import Pki, make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _tls_server(server_factory, pki: Pki, mode: str, **kw):
    return server_factory(tls_port=0, tls_cert_file=str(pki.server_cert),
                          tls_key_file=str(pki.server_key),
                          tls_ca_cert_file=str(pki.ca_cert), tls_auth_clients=mode, **kw)


def _client(port: int, pki: Pki, cert: Path | None = None, key: Path | None = None):
    return redis.Redis(host=HOST, port=port, ssl=True, ssl_ca_certs=str(pki.ca_cert),
                       ssl_certfile=str(cert) if cert else None,
                       ssl_keyfile=str(key) if key else None, socket_timeout=10,
                       retry=Retry(NoBackoff(), 0))  # see the first refusal, no retries


def _refused(port: int, pki: Pki, cert: Path | None = None, key: Path | None = None) -> None:
    c = _client(port, pki, cert, key)
    with pytest.raises(redis.ConnectionError):
        c.ping()  # TLS 1.3: the refusal may only show at the first read
    c.close()


def test_client_certificate_required(server_factory, pki: Pki) -> None:
    st = _tls_server(server_factory, pki, "yes")
    tls_port = st.server.tls_port
    assert tls_port and tls_port != st.port
    good = _client(tls_port, pki, pki.client_cert, pki.client_key)
    assert good.set("k", "over tls") is True and good.get("k") == b"over tls"
    good.close()
    _refused(tls_port, pki)  # no certificate
    _refused(tls_port, pki, pki.rogue_client_cert, pki.rogue_client_key)  # untrusted CA
    plain = st.client()  # the plain-text port still serves (loopback by default)
    assert plain.get("k") == b"over tls"
    plain.close()


def test_redis_cli_over_tls(server_factory, pki: Pki) -> None:
    st = _tls_server(server_factory, pki, "yes")
    base = [redis_cli(), "-h", HOST, "-p", str(st.server.tls_port), "--tls", "--cacert",
            str(pki.ca_cert)]
    ok = subprocess.run([*base, "--cert", str(pki.client_cert), "--key",
                         str(pki.client_key), "SET", "cli", "tls"],
                        capture_output=True, timeout=30)
    assert ok.stdout.strip() == b"OK", ok.stderr
    refused = subprocess.run([*base, "GET", "cli"], capture_output=True, timeout=30)
    assert b"tls" not in refused.stdout  # no client certificate: no answer


def test_client_certificate_optional(server_factory, pki: Pki) -> None:
    st = _tls_server(server_factory, pki, "optional")
    port = st.server.tls_port
    for cert, key in ((None, None), (pki.client_cert, pki.client_key)):
        c = _client(port, pki, cert, key)
        assert c.ping() is True
        c.close()
    _refused(port, pki, pki.rogue_client_cert, pki.rogue_client_key)  # sent, so checked


def test_client_certificate_not_asked(server_factory, pki: Pki) -> None:
    st = server_factory(tls_port=0, tls_cert_file=str(pki.server_cert),
                        tls_key_file=str(pki.server_key), tls_auth_clients="no")
    c = _client(st.server.tls_port, pki)
    assert c.ping() is True
    c.close()


def test_tls_only_and_auth_over_tls(server_factory, pki: Pki) -> None:
    st = _tls_server(server_factory, pki, "yes", tls_only=True, requirepass="pw")
    assert st.server.port is None  # no plain-text listener at all
    c = redis.Redis(host=HOST, port=st.server.tls_port, ssl=True,
                    ssl_ca_certs=str(pki.ca_cert), ssl_certfile=str(pki.client_cert),
                    ssl_keyfile=str(pki.client_key), password="pw", socket_timeout=10)
    assert c.acl_whoami() == "default"
    c.close()


def test_plain_text_client_on_the_tls_port_is_dropped(server_factory, pki: Pki) -> None:
    st = _tls_server(server_factory, pki, "yes")
    s = socket.create_connection((HOST, st.server.tls_port), timeout=10)
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    s.close()
    assert b"PONG" not in data  # no command ran without the handshake
    c = RawClient(st.port)  # and the server goes on serving
    assert c("PING") == b"PONG"
    c.close()


def test_silent_client_is_dropped_after_the_handshake_timeout(server_factory,
                                                             pki: Pki) -> None:
    st = _tls_server(server_factory, pki, "no", tls_handshake_timeout=0.3)
    s = socket.create_connection((HOST, st.server.tls_port), timeout=10)
    start = time.monotonic()
    assert s.recv(1) == b""  # closed by the server, not by our 10 s timeout
    assert time.monotonic() - start < 5
    s.close()


def test_server_refuses_tls_1_1(server_factory, pki: Pki) -> None:
    st = _tls_server(server_factory, pki, "no")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki.ca_cert))
    try:
        with warnings.catch_warnings():  # deprecated on purpose: the server must refuse it
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except ValueError:
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with (socket.create_connection((HOST, st.server.tls_port), timeout=10) as raw,
          pytest.raises(ssl.SSLError)):
        ctx.wrap_socket(raw, server_hostname=HOST).close()


def test_tls_settings_are_validated(tmp_path, pki: Pki) -> None:
    files = {"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key)}
    with pytest.raises(InvalidArgument, match="needs tls_cert_file and tls_key_file"):
        ServerConfig(tls_port=0)
    with pytest.raises(InvalidArgument, match="needs tls_ca_cert_file"):
        ServerConfig(tls_port=0, **files)  # client certificates are required by default
    with pytest.raises(InvalidArgument, match="tls_auth_clients must be one of"):
        ServerConfig(tls_port=0, tls_auth_clients="maybe", **files)
    with pytest.raises(InvalidArgument, match="tls_only needs tls_port"):
        ServerConfig(tls_only=True)
    with pytest.raises(InvalidArgument, match="tls_handshake_timeout"):
        ServerConfig(tls_handshake_timeout=0)
    with pytest.raises(InvalidArgument, match="tls_port must be"):
        ServerConfig(tls_port=70000, tls_auth_clients="no", **files)


def test_unreadable_certificate_stops_the_start(server_factory, tmp_path, pki: Pki) -> None:
    bad = tmp_path / "bad.crt"
    bad.write_text("not a certificate")
    with pytest.raises(InvalidArgument, match="cannot load tls_cert_file"):
        server_factory(tls_port=0, tls_cert_file=str(bad), tls_key_file=str(pki.server_key),
                       tls_auth_clients="no")
    with pytest.raises(InvalidArgument, match="cannot load tls_ca_cert_file"):
        server_factory(tls_port=0, tls_cert_file=str(pki.server_cert),
                       tls_key_file=str(pki.server_key), tls_ca_cert_file=str(bad))


def test_serve_tls_flags(tmp_path, pki: Pki) -> None:
    port, tls_port = free_port(), free_port()
    proc = run_server_process(
        tmp_path / "db", port, "--tls-port", str(tls_port), "--tls-cert-file",
        str(pki.server_cert), "--tls-key-file", str(pki.server_key), "--tls-ca-cert-file",
        str(pki.ca_cert), "--tls-auth-clients", "yes")
    try:
        c = _client(tls_port, pki, pki.client_cert, pki.client_key)
        assert c.ping() is True
        c.close()
        _refused(tls_port, pki)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
