"""The replication state record (docs/format.md, "Replication state record"): version 2 is
written, version 1 is still read, anything else is corruption."""

from __future__ import annotations

import struct

import pytest

import shaledb
from shaledb.server.exec.replication import (
    STATUS_REPLICA,
    STATUS_SYNCING,
    decode_state,
    encode_state,
)


def test_version_2_bytes_and_round_trip() -> None:
    raw = encode_state(STATUS_REPLICA, 7, 1234, "abc", 6)
    assert raw == bytes([2, STATUS_REPLICA]) + struct.pack(">QQQ", 7, 1234, 6) + b"abc"
    assert decode_state(raw) == (STATUS_REPLICA, 7, 1234, "abc", 6)
    # The data term defaults to the term (a primary's record).
    assert decode_state(encode_state(0, 3, 0, "r"))[4] == 3
    assert decode_state(None) == (0, 0, 0, "", 0)


def test_version_1_is_read_with_its_term_as_the_data_term() -> None:
    v1 = bytes([1, STATUS_SYNCING]) + struct.pack(">QQ", 5, 99) + b"rid"
    assert decode_state(v1) == (STATUS_SYNCING, 5, 99, "rid", 5)


@pytest.mark.parametrize("raw", [b"", bytes([3]) + bytes(30), bytes([2]) + bytes(10),
                                 bytes([1]) + bytes(5)])
def test_unknown_or_short_records_are_corruption(raw: bytes) -> None:
    with pytest.raises(shaledb.CorruptionError):
        decode_state(raw)
