"""Which arguments of a command are keys, and what the command does to each (Redis 7's key
specs), for the ACL's read/write key permissions (``%R~`` / ``%W~``) and ``COMMAND
GETKEYSANDFLAGS``.

The table (:mod:`.keyspecs_data`) is Redis 7.0's own, generated from a real server by
``scripts/gen_keyspecs.py``. :func:`keys_and_flags` follows Redis' getKeysFromCommandWithSpecs:
the specs when they are complete and their flags fixed; otherwise (SET, BITFIELD, SORT,
MIGRATE, and any spec that does not fit the arguments) the per-command rules Redis uses
(setGetKeys, bitfieldGetKeys, sortGetKeys, migrateGetKeys, the numkeys commands).

A key's flags say what permission it needs: ``access`` (the value is read or returned)
needs read; ``insert``, ``update`` and ``delete`` need write; a key with neither (EXISTS,
TYPE, STRLEN: only its existence or size is seen) needs any permission on the key.
Commands that Redis does not have return None: the caller decides (the ACL asks for
both read and write on their keys).
"""

from __future__ import annotations

from typing import Any, Final

from .keyspecs_data import KEY_SPECS

#: What a key of unknown use needs: read and write (we cannot tell, assume the worst).
WORST: Final = frozenset(("RW", "access", "update"))
READ: Final = 1
WRITE: Final = 2

_WRITE_FLAGS: Final = frozenset(("insert", "update", "delete"))


def needed(flags: frozenset[str]) -> int:
    """The permission bits (READ | WRITE) a key with these spec flags needs."""
    bits = READ if "access" in flags else 0
    return bits | (WRITE if flags & _WRITE_FLAGS else 0)


def movablekeys(name: str) -> bool:
    """Whether Redis marks the command ``movablekeys`` (its keys depend on the arguments)."""
    entry = KEY_SPECS.get(name)
    return bool(entry and entry[0])


def known(name: str) -> bool:
    """Whether the key spec table has ``name`` (a command or ``cmd|sub``)."""
    return name in KEY_SPECS


def _parse_count(arg: bytes) -> int | None:
    if not arg or not (arg.isdigit() or (arg[:1] == b"-" and arg[1:].isdigit())):
        return None
    return int(arg)


def _from_specs(specs: tuple[Any, ...], argv: list[bytes], arity_negative: bool
                ) -> list[tuple[int, frozenset[str]]] | None:
    """getKeysUsingKeySpecs: None when a spec is unknown, incomplete or does not fit."""
    out: list[tuple[int, frozenset[str]]] = []
    argc = len(argv)
    for flags_t, begin, find in specs:
        flags = frozenset(flags_t)
        if "not_key" in flags:
            continue
        if "incomplete" in flags or "variable_flags" in flags:
            return None
        if begin[0] == "index":
            first = begin[1]
        elif begin[0] == "keyword":
            keyword, startfrom = begin[1].encode(), begin[2]
            start = startfrom if startfrom > 0 else argc + startfrom
            end = argc - 1 if startfrom > 0 else 0
            first = 0
            i = start
            while i != end:
                if i >= argc or i < 1:
                    break
                if argv[i].lower() == keyword:
                    first = i + 1
                    break
                i = i + 1 if start <= end else i - 1
            if not first:
                continue
        else:
            return None
        if find[0] == "range":
            _, lastkey, step, limit = find
            if lastkey >= 0:
                last = first + lastkey
            elif not limit:
                last = argc + lastkey
            else:
                last = first + ((argc - first) // limit + lastkey)
        elif find[0] == "keynum":
            _, keynumidx, firstkey, step = find
            if keynumidx >= argc - first:
                return None
            numkeys = _parse_count(argv[first + keynumidx])
            if numkeys is None or numkeys < 0:
                return None
            first += firstkey
            last = first + numkeys - 1
        else:
            return None
        if last >= argc or last < first or first >= argc:
            return None
        for i in range(first, last + 1, max(step, 1)):
            if i >= argc:
                if arity_negative:
                    continue
                return None
            out.append((i, flags))
    return out


def _numkeys(argv: list[bytes], at: int, flags: frozenset[str]
             ) -> list[tuple[int, frozenset[str]]]:
    # genericGetKeys: a count that does not fit the arguments names no keys.
    num = _parse_count(argv[at]) if at < len(argv) else None
    if num is None or num < 1 or num > len(argv) - at - 1:
        return []
    return [(i, flags) for i in range(at + 1, at + 1 + num)]


def _set_keys(argv: list[bytes]) -> list[tuple[int, frozenset[str]]]:
    # setGetKeys: GET anywhere after the value makes it read the old value.
    if len(argv) < 2:
        return []
    if any(a.lower() == b"get" for a in argv[3:]):
        return [(1, frozenset(("RW", "access", "update")))]
    return [(1, frozenset(("OW", "update")))]


def _bitfield_keys(argv: list[bytes]) -> list[tuple[int, frozenset[str]]]:
    # bitfieldGetKeys: read-only only when every operation is a GET (or OVERFLOW).
    if len(argv) < 2:
        return []
    readonly = True
    i = 2
    while i < len(argv):
        rem = len(argv) - i - 1
        word = argv[i].lower()
        if word == b"get" and rem >= 2:
            i += 3
        elif word == b"overflow" and rem >= 1:
            i += 2
        else:
            readonly = False
            break
    if readonly:
        return [(1, frozenset(("RO", "access")))]
    return [(1, frozenset(("RW", "access", "update")))]


def _sort_keys(argv: list[bytes], readonly: bool) -> list[tuple[int, frozenset[str]]]:
    # sortGetKeys: LIMIT's, BY's and GET's arguments are skipped; the last STORE counts.
    if len(argv) < 2:
        return []
    out = [(1, frozenset(("RO", "access")))]
    if readonly:
        return out
    skip = {b"limit": 2, b"get": 1, b"by": 1}
    store = 0
    i = 2
    while i < len(argv):
        word = argv[i].lower()
        if word in skip:
            i += skip[word]
        elif word == b"store" and i + 1 < len(argv):
            store = i + 1
            i += 1
        i += 1
    if store:
        out.append((store, frozenset(("OW", "update"))))
    return out


def _migrate_keys(argv: list[bytes]) -> list[tuple[int, frozenset[str]]]:
    # migrateGetKeys: the key at 3, or (key "") the arguments after KEYS.
    flags = frozenset(("RW", "access", "delete"))
    if len(argv) < 6:
        return []
    if argv[3]:
        return [(3, flags)]
    i = 6
    while i < len(argv):
        word = argv[i].lower()
        if word == b"auth":
            i += 1
        elif word == b"auth2":
            i += 2
        elif word == b"keys":
            return [(j, flags) for j in range(i + 1, len(argv))]
        i += 1
    return []


def keys_and_flags(name: str, argv: list[bytes], arity: int = -1
                   ) -> list[tuple[int, frozenset[str]]] | None:
    """The key positions of ``argv`` (``argv[0]`` the command, ``name`` its lower-case name
    or ``cmd|sub``) with their spec flags; None when Redis does not have the command."""
    entry = KEY_SPECS.get(name)
    if entry is None:
        return None
    if name == "set":
        return _set_keys(argv)
    if name == "bitfield":
        return _bitfield_keys(argv)
    if name in ("sort", "sort_ro"):
        return _sort_keys(argv, name == "sort_ro")
    if name == "migrate":
        return _migrate_keys(argv)
    specs = entry[1]
    found = _from_specs(specs, argv, arity < 0)
    if found is not None:
        return found
    # A numkeys spec that does not fit (EVAL "" 3 a b): no keys, as genericGetKeys.
    for flags_t, begin, find in specs:
        if begin[0] == "index" and find[0] == "keynum":
            return _numkeys(argv, begin[1] + find[1], frozenset(flags_t))
    return []


__all__ = ["READ", "WORST", "WRITE", "keys_and_flags", "known", "movablekeys", "needed"]
