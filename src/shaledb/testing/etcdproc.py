"""A throw-away etcd on loopback for tests and the Jepsen-style harness.

:class:`EtcdProcess` starts the ``etcd`` binary (Debian package ``etcd-server``, installed by
``scripts/ensure-etcd.sh``) as a one-member cluster listening only on 127.0.0.1, on free
client and peer ports, with its own data directory, and stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"

#: Why the etcd tests skip when the binary is missing.
ETCD_MISSING = ("etcd is not installed (Debian package etcd-server; `make test` installs it "
                "with scripts/ensure-etcd.sh when run as root)")


def etcd_binary() -> str | None:
    """Path of the etcd binary, or None."""
    return shutil.which("etcd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    """One etcd member on loopback; ``url`` is its client URL once :meth:`start` returned."""

    def __init__(self, data_dir: Path, binary: str | None = None) -> None:
        found = binary or etcd_binary()
        if found is None:
            raise FileNotFoundError(ETCD_MISSING)
        self.binary = found
        self.data_dir = data_dir
        self.client_port = 0
        self.peer_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.client_port = _free_port()
        self.peer_port = _free_port()
        peer = f"http://{HOST}:{self.peer_port}"
        log = (self.data_dir / "etcd.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "--name", "test", "--data-dir", str(self.data_dir / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--initial-cluster-state", "new",
             "--log-level", "warn", "--logger", "zap"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see "
                                   f"{self.data_dir / 'etcd.log'}")
            if self._healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy within {timeout:g} s")

    def _healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection(HOST, self.client_port, timeout=1.0)
            try:
                conn.request("GET", "/health")
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
        except OSError:
            return False
        return resp.status == 200 and b'"true"' in body

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> EtcdProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EtcdProcess(url={self.url!r}, data_dir={str(self.data_dir)!r})"
