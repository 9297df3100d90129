"""The server's database map: which physical key range holds each logical database.

Every engine key of the server starts with one byte, the *physical* database id
(``0x00``..``0xEF``); SELECT numbers are *logical* (0-15). The map from logical to physical
is one engine entry (:data:`MAP_KEY`, under the metadata prefix ``0xFF`` that no physical id
uses), written in the same :class:`shaledb.WriteBatch` as the data change that needs it. That
makes SWAPDB one small write (two entries of the map swap) and FLUSHDB one small write too
(the logical database points at a fresh, empty physical id; the old id's keys are deleted
later, in the background, see :mod:`shaledb.server.keyspace.purge`). Both are therefore atomic, also
across a crash.

A directory without a map entry (written before the map existed) uses the identity map,
which is exactly the old layout (database byte = SELECT index); the keyspace upgrades it at
its first open and writes the map down.

Invariant: a physical id is either *mapped* (to exactly one logical database), *queued* for
purging (it may hold keys), or *free* (known to hold no entry). Only free ids are mapped by a
flush. Free and queued are not stored: on open, every unmapped id is checked, and any that
holds an entry is queued again, so a crash mid-purge loses nothing and resurrects nothing.

Record layout (docs/format.md, "Server keyspace"): version byte ``0x03``, count byte (16),
then one physical id byte per logical database, in logical order. The map's version is the
server keyspace's: version 2 maps (server keyspace version 3) come with chunked strings and
per-database key counts, so a server that knows only version 1 refuses the directory
instead of writing keys its counts and chunk garbage collection would not see. A version 1
map (or none) is read for the upgrade (:meth:`shaledb.server.keyspace.keyspace.Keyspace`).

A version 3 map (server keyspace version 4) comes with hashes and sets, version 4 (server
keyspace 5) with lists, version 5 (server keyspace 6) with sorted sets, version 6 (server
keyspace 7) with streams; an older map (version 2 to 5) is read as is and rewritten as
:data:`MAP_VERSION` by the first write.

The other reserved first bytes (docs/format.md): ``0xF0`` chunks of large strings,
``0xF1`` garbage records (chunk sets to delete), ``0xF2`` the members of hashes and sets,
``0xF3`` member garbage records (collections to delete), ``0xF4`` the score index of sorted
sets, ``0xF5`` the consumer groups of streams, and under ``0xFF`` one key-count record
per physical id (:func:`count_key`).
"""

from __future__ import annotations

import struct
from typing import Final

from ...errors import CorruptionError, IncompatibleFormatError

#: Number of logical databases (SELECT 0-15).
LOGICAL_DATABASES: Final = 16
#: Physical database ids are 0 .. PHYSICAL_DATABASES - 1 (0x00..0xEF); 0xF0..0xFE are
#: reserved, 0xFF is the metadata prefix.
PHYSICAL_DATABASES: Final = 240
#: First byte of every server metadata key; never a physical database id.
META_PREFIX: Final = 0xFF
#: The engine key of the map record.
MAP_KEY: Final = b"\xffdbmap"
#: Version byte of the map record this code writes (server keyspace version 7: streams).
MAP_VERSION: Final = 6
#: The map version of server keyspace version 6 (sorted sets): read as is; the first write
#: records MAP_VERSION, so a version 6 server, which would leak a dropped stream's
#: consumer-group records (0xF5), refuses the directory from then on.
ZSETS_MAP_VERSION: Final = 5
#: The map version of server keyspace version 5 (strings, hashes, sets, lists): read as is,
#: upgraded the same way (a version 5 server would not see a sorted set's score index when
#: it drops the set: it would leak).
LISTS_MAP_VERSION: Final = 4
#: The map version of server keyspace version 4 (strings, hashes and sets): read as is; the
#: first write records MAP_VERSION (nothing else changes), so a version 4 server, which
#: would not see a list's element records when it drops the list (they would leak), refuses
#: the directory from then on.
HASHES_MAP_VERSION: Final = 3
#: The map version of server keyspace version 3 (strings only): read as is; the first write
#: records MAP_VERSION (nothing else changes), so older servers refuse the directory from
#: then on, before it can hold a type they do not know.
STRINGS_MAP_VERSION: Final = 2
#: The version written before chunked strings and key counts (server keyspace version 2, or
#: 1 when no map record exists): read once, to upgrade the directory.
LEGACY_MAP_VERSION: Final = 1
#: First byte of the chunk records of large strings (docs/format.md, "Chunked strings").
CHUNK_PREFIX: Final = 0xF0
#: First byte of the garbage records: chunk sets no header references any more.
GARBAGE_PREFIX: Final = 0xF1
#: First byte of the member records of hashes and sets (docs/format.md, "Hashes and sets").
MEMBER_PREFIX: Final = 0xF2
#: First byte of the member garbage records: collections no header references any more.
MEMBER_GARBAGE_PREFIX: Final = 0xF3
#: First byte of the score index records of sorted sets (docs/format.md, "Sorted sets").
SCORE_PREFIX: Final = 0xF4
#: First byte of the consumer-group records of streams (docs/format.md, "Streams"): a
#: stream's anchor, its groups, their pending entries and consumers.
GROUP_PREFIX: Final = 0xF5
#: Engine key prefix of the per-physical-id key count records.
COUNT_PREFIX: Final = b"\xffcount"
_COUNTS: Final = struct.Struct(">QQ")


def identity_map() -> list[int]:
    """The map of a directory that has none: logical database n is physical id n."""
    return list(range(LOGICAL_DATABASES))


def encode_map(mapping: list[int]) -> bytes:
    """The map record of ``mapping`` (logical index -> physical id)."""
    return bytes((MAP_VERSION, len(mapping), *mapping))


def map_version(raw: bytes | None) -> int:
    """The version of a map record (None, no record: the legacy layout)."""
    if raw is None:
        return LEGACY_MAP_VERSION
    if not raw:
        raise CorruptionError("the server's database map record is empty")
    return raw[0]


def decode_map(raw: bytes | None) -> list[int]:
    """The mapping stored in a map record (None: no record, the identity map). Raises
    IncompatibleFormatError for a version this code does not know and CorruptionError for a
    record that breaks the invariants (so the server refuses to start rather than guess)."""
    if raw is None:
        return identity_map()
    if map_version(raw) not in (MAP_VERSION, ZSETS_MAP_VERSION, LISTS_MAP_VERSION,
                                HASHES_MAP_VERSION, STRINGS_MAP_VERSION, LEGACY_MAP_VERSION):
        raise IncompatibleFormatError(
            f"the server's database map has version {raw[0]}; this ShaleDB reads versions "
            f"{LEGACY_MAP_VERSION} to {MAP_VERSION} (open the directory with the ShaleDB "
            "that wrote it)")
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


def count_key(phys: int) -> bytes:
    """The engine key of physical id ``phys``'s key count record."""
    return COUNT_PREFIX + bytes((phys,))


def encode_counts(keys: int, expires: int) -> bytes:
    """A count record: keys present, and how many of them have an expiry."""
    return _COUNTS.pack(keys, expires)


def decode_counts(raw: bytes | None) -> tuple[int, int]:
    """Inverse of :func:`encode_counts` (None, no record: an empty id)."""
    if raw is None:
        return 0, 0
    if len(raw) != _COUNTS.size:
        raise CorruptionError(f"a key count record of the server has {len(raw)} bytes, "
                              f"expected {_COUNTS.size}")
    keys, expires = _COUNTS.unpack(raw)
    return keys, expires


__all__ = [
    "CHUNK_PREFIX",
    "COUNT_PREFIX",
    "GARBAGE_PREFIX",
    "LEGACY_MAP_VERSION",
    "LOGICAL_DATABASES",
    "MAP_KEY",
    "MEMBER_GARBAGE_PREFIX",
    "MEMBER_PREFIX",
    "GROUP_PREFIX",
    "ZSETS_MAP_VERSION",
    "STRINGS_MAP_VERSION",
    "HASHES_MAP_VERSION",
    "LISTS_MAP_VERSION",
    "SCORE_PREFIX",
    "MAP_VERSION",
    "META_PREFIX",
    "PHYSICAL_DATABASES",
    "count_key",
    "decode_counts",
    "decode_map",
    "encode_counts",
    "encode_map",
    "identity_map",
    "map_version",
]
