"""Protected mode: the decision on addresses, and the connection path with a remote peer
played in-process (all traffic stays on 127.0.0.1)."""

from __future__ import annotations

import pytest
import redis

from shaledb.errors import InvalidArgument
from shaledb.server import ServerConfig
from shaledb.server.net import connection as connection_module
from shaledb.server.net.security import PROTECTED_MODE_DENIED, protected_mode_refuses

from ._server_support import RawClient, raw_connect, read_until_closed

REMOTE = "203.0.113.9"  # TEST-NET-3: only ever a label here, never a destination


@pytest.mark.parametrize("host", [REMOTE, "10.1.2.3", "2001:db8::5", "::ffff:192.0.2.1",
                                  "fe80::1%eth0", "0.0.0.0"])
def test_protected_mode_refuses_remote_hosts_without_password(host: str) -> None:
    assert protected_mode_refuses(host, True, True)
    assert not protected_mode_refuses(host, True, False)  # a password is set
    assert not protected_mode_refuses(host, False, True)  # protected mode off


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_protected_mode_admits_loopback(host: str) -> None:
    assert not protected_mode_refuses(host, True, True)


def test_protected_mode_refuses_an_unknown_address() -> None:
    # None is a TCP client whose address is unknown (reset before the accept): remote, not
    # a Unix socket (the server has no Unix socket listener). Issue 10, item 1.
    assert protected_mode_refuses(None, True, True)


def _play_remote(monkeypatch: pytest.MonkeyPatch, host: str = REMOTE) -> None:
    """Make the server see every new connection as coming from ``host``."""
    monkeypatch.setattr(connection_module, "peer_address", lambda transport: (host, 40000))


def test_remote_client_is_denied_and_closed(server_factory, monkeypatch) -> None:
    st = server_factory()
    _play_remote(monkeypatch)
    s = raw_connect(st.port)
    s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
    assert read_until_closed(s) == PROTECTED_MODE_DENIED  # refused before any request ran
    s.close()
    assert PROTECTED_MODE_DENIED.startswith(b"-DENIED ShaleDB is running in protected mode")
    with pytest.raises(redis.ResponseError, match="^DENIED ShaleDB is running in protected"):
        st.client().ping()
    assert st.call(lambda: st.server.stats["protected_mode_refusals"]) == 2
    monkeypatch.undo()
    local = st.client()
    assert local.get("k") is None  # the refused SET never ran
    local.close()


def test_remote_client_is_served_once_a_password_is_set(server_factory, monkeypatch) -> None:
    st = server_factory(requirepass="pw")
    _play_remote(monkeypatch)
    c = RawClient(st.port)
    assert str(c("GET", "k")).startswith("NOAUTH")  # admitted, but must authenticate
    assert c("AUTH", "pw") == b"OK"
    assert c("SET", "k", "v") == b"OK"
    c.close()


def test_protected_mode_can_be_turned_off(server_factory, monkeypatch) -> None:
    st = server_factory(protected_mode=False)
    _play_remote(monkeypatch)
    c = st.client()
    assert c.ping() is True
    c.close()


def test_protected_mode_setting_is_validated() -> None:
    assert ServerConfig().protected_mode is True
    with pytest.raises(InvalidArgument, match="protected_mode"):
        ServerConfig(protected_mode="no")  # type: ignore[arg-type]
    assert ServerConfig.from_mapping({"protected-mode": False}).protected_mode is False
