"""A ShaleDB failover group on loopback for the Jepsen-style harness: one etcd, N nodes
(``shaledb serve --etcd`` subprocesses), and a proxy in front of each node (clients and
replicas reach it only through it: its announced port) and between each node and etcd, so
the nemesis can partition any node from everyone.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ...server.cluster.etcd import EtcdClient, EtcdError
from ...server.cluster.group import GroupState, read_group
from ..etcdproc import EtcdProcess
from .proxy import Proxy, ProxyLoop

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class ClusterConfig:
    workdir: Path
    nodes: int = 3
    group: str = "jepsen"
    ttl: int = 2
    safety_margin: float = 0.5
    #: Extra ``shaledb serve`` arguments of every node (sync mode: the replication branch's
    #: ``--sync-replicas K``).
    server_args: tuple[str, ...] = ()
    appendfsync: str = "always"


class Node:
    """One ``shaledb serve`` process and its two proxies."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster = cluster
        self.name = f"n{index + 1}"
        self.dir = cluster.config.workdir / self.name
        self.port = _free_port()
        self.inbound: Proxy = cluster.proxies.add((HOST, self.port), f"{self.name}-in")
        self.to_etcd: Proxy = cluster.proxies.add((HOST, cluster.etcd.client_port),
                                                  f"{self.name}-etcd")
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def address(self) -> tuple[str, int]:
        """Where clients and replicas reach this node (its proxy)."""
        return (HOST, self.inbound.port)

    def start(self, timeout: float = 30.0) -> None:
        cfg = self.cluster.config
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir.parent / f"{self.name}.toml"
        conf.write_text(f"failover_ttl = {cfg.ttl}\n"
                        f"failover_safety_margin = {cfg.safety_margin}\n")
        log = (self.dir.parent / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shaledb.cli", "serve", "--host", HOST, "--port",
             str(self.port), "--dir", str(self.dir / "data"), "--metrics-port", "off",
             "--log-level", "warning", "--appendfsync", cfg.appendfsync,
             "--config", str(conf),
             "--etcd", f"http://{HOST}:{self.to_etcd.port}", "--group", cfg.group,
             "--node-name", self.name, "--announce-port", str(self.inbound.port),
             *cfg.server_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited with {self.proc.returncode}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"node {self.name} did not listen within {timeout:g} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
                self.paused = False
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def isolate(self) -> None:
        """Cut this node from clients, the other nodes and etcd."""
        self.inbound.cut("blackhole")
        self.to_etcd.cut("blackhole")

    def heal(self) -> None:
        self.inbound.heal()
        self.to_etcd.heal()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.resume()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None


class Cluster:
    """etcd + proxies + nodes; a context manager that tears everything down."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        config.workdir.mkdir(parents=True, exist_ok=True)
        self.etcd = EtcdProcess(config.workdir / "etcd")
        self.proxies = ProxyLoop()
        self.nodes: list[Node] = []
        self.client: EtcdClient | None = None

    def start(self) -> None:
        self.etcd.start()
        self.client = EtcdClient(self.etcd.url)
        self.nodes = [Node(self, i) for i in range(self.config.nodes)]
        for n in self.nodes:
            n.start()

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def state(self) -> GroupState | None:
        assert self.client is not None
        try:
            return read_group(self.client, self.config.group)
        except EtcdError:
            return None

    def wait_leader(self, newer_than: int = 0, timeout: float = 30.0) -> GroupState | None:
        """The group once a leader of a term above ``newer_than`` holds the key (None when
        none did within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state()
            if st is not None and st.leader is not None and st.leader.term > newer_than:
                return st
            time.sleep(0.05)
        return None

    def close(self) -> None:
        for n in self.nodes:
            try:
                n.heal()
            finally:
                n.stop()
        self.proxies.close()
        if self.client is not None:
            self.client.close()
        self.etcd.stop()

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
