"""Fixtures of the failover tests: a real etcd (Debian etcd-server, installed by
scripts/ensure-etcd.sh) on free loopback client and peer ports with its own data directory,
one per test module; each test gets its own key prefix (group name)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.server._server_support import ServerThread
from tests.server.conftest import server_factory  # noqa: F401 (a fixture, used below)

from shaledb.server.cluster.etcd import EtcdClient
from shaledb.testing.etcdproc import ETCD_MISSING, EtcdProcess, etcd_binary

_groups = itertools.count()


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    if etcd_binary() is None:
        pytest.skip(ETCD_MISSING)
    proc = EtcdProcess(Path(tmp_path_factory.mktemp("etcd")))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def etcd_url(etcd_server: EtcdProcess) -> str:
    return etcd_server.url


@pytest.fixture
def etcd(etcd_url: str) -> Iterator[EtcdClient]:
    client = EtcdClient(etcd_url)
    yield client
    client.close()


@pytest.fixture
def group() -> str:
    """A replication group name no other test of the module uses."""
    return f"g{next(_groups)}"


@pytest.fixture
def servers(server_factory: Callable[..., ServerThread]) -> Callable[..., ServerThread]:  # noqa: F811
    """``servers(**settings)`` starts a server in this process on a free loopback port
    (tests/server's ``server_factory``), stopped at the end of the test."""
    return server_factory
