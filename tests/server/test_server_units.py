"""Unit tests of the server's small pure pieces: exact expiry hand-off to the engine, value
encoding, glob matching, inline splitting, number parsing and formatting."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import shaledb
from shaledb.server.commands import parse_float, parse_int
from shaledb.server.commands.strings import format_float
from shaledb.server.errors import CommandError, ProtocolError
from shaledb.server.glob import compile_glob, literal_prefix
from shaledb.server.keyspace.keyspace import MAX_EXPIRE_MS, Entry, decode_value, encode_value
from shaledb.server.net.protocol import split_inline


@given(st.integers(1, MAX_EXPIRE_MS))
@example(1)
@example(MAX_EXPIRE_MS)
def test_the_engine_gets_the_exact_millisecond(expire_ms: int) -> None:
    # The server hands the header's expiry to the engine as an absolute expire_at_ms.
    batch = shaledb.WriteBatch()
    batch.put(b"k", encode_value(b"v", expire_ms), expire_at_ms=expire_ms)
    assert [op[2] for op in batch.ops()] == [expire_ms]


def test_expire_at_ms_is_validated() -> None:
    batch = shaledb.WriteBatch()
    for bad in (0, -1, 10**15 + 1):
        with pytest.raises(shaledb.InvalidArgument):
            batch.put(b"k", b"v", expire_at_ms=bad)
    with pytest.raises(TypeError):
        batch.put(b"k", b"v", expire_at_ms=1.5)  # type: ignore[arg-type]
    with pytest.raises(shaledb.InvalidArgument):
        batch.put(b"k", b"v", ttl=1, expire_at_ms=5)
    assert len(batch) == 0


@given(st.binary(max_size=64), st.one_of(st.just(0), st.integers(1, MAX_EXPIRE_MS)))
def test_value_encoding_round_trips(value: bytes, expire_ms: int) -> None:
    raw = encode_value(value, expire_ms)
    assert raw[0] == (0x80 if expire_ms else 0x00)
    assert decode_value(raw) == Entry(value, expire_ms)


def test_unknown_value_tag_is_an_error() -> None:
    with pytest.raises(CommandError, match="unknown encoding"):
        decode_value(b"\x07abc")
    with pytest.raises(CommandError, match="unknown encoding"):
        decode_value(b"")


@pytest.mark.parametrize(("pattern", "yes", "no"), [
    (b"*", [b"", b"anything"], []),
    (b"h?llo", [b"hello", b"hallo"], [b"hllo", b"heello"]),
    (b"h*llo", [b"hllo", b"heeeello"], [b"hell"]),
    (b"h[ae]llo", [b"hello", b"hallo"], [b"hillo"]),
    (b"h[^e]llo", [b"hallo", b"hbllo"], [b"hello"]),
    (b"h[a-b]llo", [b"hallo", b"hbllo"], [b"hcllo"]),
    (b"h[b-a]llo", [b"hallo"], [b"hcllo"]),  # reversed ranges are swapped, as in Redis
    (b"a\\*b", [b"a*b"], [b"axb"]),
    (b"[", [b"["], [b"a"]),                 # an unclosed bracket is a literal here
    (b"k.+(x)", [b"k.+(x)"], [b"kk(x)"]),    # regex characters are literals
    (b"\xff*", [b"\xff\x00\n"], [b"\xfe"]),
])
def test_glob(pattern: bytes, yes: list[bytes], no: list[bytes]) -> None:
    match = compile_glob(pattern)
    for key in yes:
        assert match(key), key
    for key in no:
        assert not match(key), key


@given(st.binary(max_size=12).filter(lambda b: not re.search(rb"[*?\[\\]", b)))
def test_glob_literal_pattern_matches_only_itself(literal: bytes) -> None:
    assert compile_glob(literal)(literal)
    assert not compile_glob(literal)(literal + b"x")
    assert literal_prefix(literal + b"*") == literal


def test_literal_prefix() -> None:
    assert literal_prefix(b"user:*") == b"user:"
    assert literal_prefix(b"a?c") == b"a"
    assert literal_prefix(b"[ab]") == b""
    assert literal_prefix(b"plain") == b"plain"


@pytest.mark.parametrize(("line", "args"), [
    (b"SET a b", [b"SET", b"a", b"b"]),
    (b"  SET   a\tb  ", [b"SET", b"a", b"b"]),
    (b'SET "a b" c', [b"SET", b"a b", b"c"]),
    (b'ECHO "\\x41\\n\\t\\"q\\""', [b"ECHO", b'A\n\t"q"']),
    (b"ECHO 'it\\'s' ''", [b"ECHO", b"it's", b""]),
    (b"", []),
])
def test_split_inline(line: bytes, args: list[bytes]) -> None:
    assert split_inline(line) == args


@pytest.mark.parametrize("line", [b'SET "a', b"SET 'a", b'SET "a"b', b"SET 'a'b"])
def test_split_inline_unbalanced(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="unbalanced quotes"):
        split_inline(line)


def test_parse_int_is_strict() -> None:
    assert parse_int(b"0") == 0
    assert parse_int(b"-42") == -42
    assert parse_int(b"9223372036854775807") == 2**63 - 1
    assert parse_int(b"-9223372036854775808") == -(2**63)
    for bad in (b"", b"-", b"+1", b" 1", b"1 ", b"01", b"-0", b"1.0", b"1e3", b"0x10",
                b"9223372036854775808", b"\xd9\xa1"):
        with pytest.raises(CommandError):
            parse_int(bad)


def test_parse_and_format_float() -> None:
    assert parse_float(b"1.5") == 1.5
    assert parse_float(b"-3e2") == -300
    for bad in (b"", b" 1", b"abc", b"nan", b"1,5"):
        with pytest.raises(CommandError, match="not a valid float"):
            parse_float(bad)
    assert format_float(10.6) == b"10.6"
    assert format_float(5200.0) == b"5200"
    assert format_float(3e-5) == b"0.00003"
    assert format_float(1e20) == b"100000000000000000000"
    assert format_float(-0.0) == b"0"


def test_loopback_detection() -> None:
    from shaledb.server.net.security import is_loopback_address as lo

    assert lo("127.0.0.1") and lo("127.8.9.10") and lo("::1") and lo("localhost")
    assert lo("::ffff:127.0.0.1")  # IPv4-mapped, as a dual-stack socket reports it
    assert not lo("0.0.0.0") and not lo("::") and not lo("::ffff:192.0.2.7")
    assert not lo("192.0.2.7") and not lo("10.0.0.1") and not lo("example.org")
    assert not lo("fe80::1%eth0") and not lo("2001:db8::1") and not lo("")
