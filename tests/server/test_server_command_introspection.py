"""COMMAND LIST / GETKEYS / GETKEYSANDFLAGS / INFO's movablekeys over a socket, against the
answers of a real Redis 7.0 (the key specs come from it: scripts/gen_keyspecs.py)."""

from __future__ import annotations

import pytest

from ._server_support import RawClient


@pytest.fixture
def raw(server):
    c = RawClient(server.port)
    yield c
    c.close()


def test_command_list_and_filters(raw) -> None:
    everything = raw("COMMAND", "LIST")
    assert b"set" in everything and b"client|list" in everything
    scripting = raw("COMMAND", "LIST", "FILTERBY", "ACLCAT", "scripting")
    assert b"eval" in scripting and b"script|kill" in scripting and b"set" not in scripting
    assert raw("COMMAND", "LIST", "FILTERBY", "ACLCAT", "nosuch") == []
    assert raw("COMMAND", "LIST", "FILTERBY", "PATTERN", "set") == [b"set"]
    config = raw("COMMAND", "LIST", "FILTERBY", "PATTERN", "config|*re*")
    assert b"config|resetstat" in config and b"config|rewrite" in config
    assert raw("COMMAND", "LIST", "FILTERBY", "MODULE", "m") == []
    for bad in (("bad",), ("FILTERBY", "bad"), ("FILTERBY", "bad", "x")):
        err = raw("COMMAND", "LIST", *bad)
        assert str(err) == "ERR syntax error"


def test_command_getkeysandflags(raw) -> None:
    assert raw("COMMAND", "GETKEYSANDFLAGS", "set", "k1", "v1") == [[b"k1", [b"OW", b"update"]]]
    assert raw("COMMAND", "GETKEYSANDFLAGS", "set", "k1", "v1", "GET") == [
        [b"k1", [b"RW", b"access", b"update"]]]
    assert raw("COMMAND", "GETKEYSANDFLAGS", "LMOVE", "k1", "k2", "left", "right") == [
        [b"k1", [b"RW", b"access", b"delete"]], [b"k2", [b"RW", b"insert"]]]
    assert raw("COMMAND", "GETKEYSANDFLAGS", "sort", "k1", "store", "k2") == [
        [b"k1", [b"RO", b"access"]], [b"k2", [b"OW", b"update"]]]
    assert raw("COMMAND", "GETKEYS", "eval", "return 1", "0") == []
    assert raw("COMMAND", "GETKEYS", "eval", "return 1", "1", "key") == [b"key"]
    keys = [f"key{i}".encode() for i in range(260)]
    assert raw("COMMAND", "GETKEYS", "ZUNIONSTORE", "t", "260", *keys) == [b"t", *keys]
    assert "no key arguments" in str(raw("COMMAND", "GETKEYS", "ping"))


def test_movablekeys_flag_as_redis(raw) -> None:
    def flags(name: str) -> list[bytes]:
        return raw("COMMAND", "INFO", name)[0][2]

    for name in ("zunionstore", "xread", "eval", "sort", "sort_ro", "georadius"):
        assert b"movablekeys" in flags(name), name
    for name in ("set", "get", "mset", "bitfield", "lmove", "blpop", "rename"):
        assert b"movablekeys" not in flags(name), name
