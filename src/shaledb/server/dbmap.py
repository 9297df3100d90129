"""The server's database map: which physical key range holds each logical database.

Every engine key of the server starts with one byte, the *physical* database id
(``0x00``..``0xEF``); SELECT numbers are *logical* (0-15). The map from logical to physical
is one engine entry (:data:`MAP_KEY`, under the metadata prefix ``0xFF`` that no physical id
uses), written in the same :class:`shaledb.WriteBatch` as the data change that needs it. That
makes SWAPDB one small write (two entries of the map swap) and FLUSHDB one small write too
(the logical database points at a fresh, empty physical id; the old id's keys are deleted
later, in the background, see :mod:`shaledb.server.purge`). Both are therefore atomic, also
across a crash.

A directory without a map entry (written before the map existed) uses the identity map,
which is exactly the old layout (database byte = SELECT index), so it opens unchanged.

Invariant: a physical id is either *mapped* (to exactly one logical database), *queued* for
purging (it may hold keys), or *free* (known to hold no entry). Only free ids are mapped by a
flush. Free and queued are not stored: on open, every unmapped id is checked, and any that
holds an entry is queued again, so a crash mid-purge loses nothing and resurrects nothing.

Record layout (docs/format.md, "Server keyspace"): version byte ``0x01``, count byte (16),
then one physical id byte per logical database, in logical order.
"""

from __future__ import annotations

from typing import Final

from ..errors import CorruptionError, IncompatibleFormatError

#: Number of logical databases (SELECT 0-15).
LOGICAL_DATABASES: Final = 16
#: Physical database ids are 0 .. PHYSICAL_DATABASES - 1 (0x00..0xEF); 0xF0..0xFE are
#: reserved, 0xFF is the metadata prefix.
PHYSICAL_DATABASES: Final = 240
#: First byte of every server metadata key; never a physical database id.
META_PREFIX: Final = 0xFF
#: The engine key of the map record.
MAP_KEY: Final = b"\xffdbmap"
#: Version byte of the map record this code writes and reads.
MAP_VERSION: Final = 1


def identity_map() -> list[int]:
    """The map of a directory that has none: logical database n is physical id n."""
    return list(range(LOGICAL_DATABASES))


def encode_map(mapping: list[int]) -> bytes:
    """The map record of ``mapping`` (logical index -> physical id)."""
    return bytes((MAP_VERSION, len(mapping), *mapping))


def decode_map(raw: bytes | None) -> list[int]:
    """The mapping stored in a map record (None: no record, the identity map). Raises
    IncompatibleFormatError for a version this code does not know and CorruptionError for a
    record that breaks the invariants (so the server refuses to start rather than guess)."""
    if raw is None:
        return identity_map()
    if not raw:
        raise CorruptionError("the server's database map record is empty")
    if raw[0] != MAP_VERSION:
        raise IncompatibleFormatError(
            f"the server's database map has version {raw[0]}; this ShaleDB reads version "
            f"{MAP_VERSION} (open the directory with the ShaleDB that wrote it)")
    if len(raw) != 2 + LOGICAL_DATABASES or raw[1] != LOGICAL_DATABASES:
        raise CorruptionError(
            f"the server's database map record has {len(raw)} bytes, expected "
            f"{2 + LOGICAL_DATABASES} for {LOGICAL_DATABASES} databases")
    mapping = list(raw[2:])
    if max(mapping) >= PHYSICAL_DATABASES or len(set(mapping)) != len(mapping):
        raise CorruptionError(
            f"the server's database map {mapping} names an id twice or one past "
            f"{PHYSICAL_DATABASES - 1}")
    return mapping


__all__ = [
    "LOGICAL_DATABASES",
    "MAP_KEY",
    "MAP_VERSION",
    "META_PREFIX",
    "PHYSICAL_DATABASES",
    "decode_map",
    "encode_map",
    "identity_map",
]
