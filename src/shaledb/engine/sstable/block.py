"""Data and index blocks: column lists, encoded with one msgpack call.

A data block payload is ``msgpack([keys, seqs, kinds, expires, values])``: five lists of
equal length, in table order (user key ascending, sequence descending). Decoding is one C
call that yields Python lists, which the block cache keeps, so a lookup in a cached block is
one ``bisect`` on ``keys``. The versions of one user key never straddle two blocks.

An index block payload is ``msgpack([last_keys, offsets, sizes])``: the last user key, the
offset and the payload size of every data block.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ...errors import CorruptionError

#: Estimated Python memory per decoded entry beyond its key and value bytes (list slots,
#: int objects, bytes headers); used to charge the block cache honestly.
DECODED_ENTRY_OVERHEAD = 120


class DataBlock:
    """A decoded data block."""

    __slots__ = ("keys", "seqs", "kinds", "expires", "values", "charge")

    def __init__(self, keys: list[bytes], seqs: list[int], kinds: list[int],
                 expires: list[int], values: list[bytes], charge: int) -> None:
        self.keys = keys
        self.seqs = seqs
        self.kinds = kinds
        self.expires = expires
        self.values = values
        self.charge = charge

    def __len__(self) -> int:
        return len(self.keys)


def encode_columns(columns: list[list[Any]]) -> bytes:
    """Payload of a data or index block."""
    packed: bytes = msgpack.packb(columns, use_bin_type=True)
    return packed


def _unpack(payload: bytes, ncols: int, what: str, path: str) -> list[list[Any]]:
    try:
        cols = msgpack.unpackb(payload, raw=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptionError(f"table {path!r}: malformed {what} block: {exc}") from exc
    if (not isinstance(cols, list) or len(cols) != ncols
            or not all(isinstance(c, list) and len(c) == len(cols[0]) for c in cols)):
        raise CorruptionError(f"table {path!r}: malformed {what} block")
    return cols


def decode_data_block(payload: bytes, path: str) -> DataBlock:
    """Decode a verified data block payload."""
    keys, seqs, kinds, expires, values = _unpack(payload, 5, "data", path)
    charge = len(payload) + len(keys) * DECODED_ENTRY_OVERHEAD
    return DataBlock(keys, seqs, kinds, expires, values, charge)


def decode_index_block(payload: bytes, path: str) -> tuple[list[bytes], list[int], list[int]]:
    """Decode a verified index block payload."""
    last_keys, offsets, sizes = _unpack(payload, 3, "index", path)
    return last_keys, offsets, sizes
