"""The harness's TCP proxy: forwards, cuts (blackhole, reset) and heals, on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from shaledb.testing.jepsen.proxy import ProxyLoop


@pytest.fixture
def echo() -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve(c: socket.socket) -> None:
        with c:
            while True:
                try:
                    data = c.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                c.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def roundtrip(port: int, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_forward_cut_and_heal(echo: int) -> None:
    with ProxyLoop() as loop:
        p = loop.add(("127.0.0.1", echo), "n1")
        assert roundtrip(p.port) == b"ping"
        big = bytes(range(256)) * 4000
        assert roundtrip(p.port, big) == big
        # An open connection across a blackhole: nothing comes back, the caller times out.
        s = socket.create_connection(("127.0.0.1", p.port), timeout=1)
        s.sendall(b"a")
        assert s.recv(10) == b"a"
        p.cut("blackhole")
        s.sendall(b"lost")
        t0 = time.monotonic()
        with pytest.raises(socket.timeout):
            s.recv(10)
        assert time.monotonic() - t0 >= 0.9
        with pytest.raises(socket.timeout):  # new connections are accepted and ignored
            roundtrip(p.port, timeout=0.5)
        assert p.dropped >= 4
        p.heal()
        assert roundtrip(p.port) == b"ping"
        # The connection blackholed during the cut was aborted at the heal.
        with pytest.raises(OSError):
            s.settimeout(2)
            data = s.recv(10)
            if not data:
                raise ConnectionResetError
        s.close()
        p.cut("reset")
        with pytest.raises(OSError):
            got = roundtrip(p.port, timeout=2)
            if not got:
                raise ConnectionResetError
        p.heal()
        assert roundtrip(p.port) == b"ping"
        with pytest.raises(ValueError):
            p.cut("sideways")


def test_target_down_resets_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with ProxyLoop() as loop:
        p = loop.add(("127.0.0.1", dead))
        with pytest.raises(OSError):
            got = roundtrip(p.port, timeout=2)
            if not got:
                raise ConnectionResetError
