"""Redis glob patterns (KEYS, SCAN MATCH, ACL key patterns, CONFIG GET).

The rules of Redis' ``stringmatchlen``: ``*`` matches any run of bytes, ``?`` one byte,
``[abc]`` / ``[^abc]`` / ``[a-z]`` a byte in (or not in) a set, ``\\x`` the byte ``x`` itself.
One difference: an unclosed ``[`` is a literal ``[`` here (Redis matches it against the rest
of the pattern as a set).

Every atom but ``*`` matches exactly one byte, so a pattern is its star-separated *segments*,
each of a fixed length, and taking the leftmost match of each middle segment never loses a
match. So a key matches when it starts with the first segment, ends with the last, and the
middle ones are found in order, each searched from where the previous one ended: no
backtracking, ever (a regex with one ``.*`` per star backtracks exponentially: Redis'
CVE-2022-36021). A segment of plain bytes is a ``bytes.startswith``/``endswith``/``find``
(linear: CPython's two-way search); a segment with ``?`` or ``[...]`` is a small regex, whose
search costs at most (key length x segment length) steps. Compiling is linear in the
pattern: one pass, literal runs cut in C, and a bracket that turns out unclosed is never
rescanned.

Patterns from clients (KEYS, SCAN MATCH) are *bounded* (:func:`compile_glob` with
``bounded=True``): at most MAX_PATTERN bytes, and at most MAX_WILDCARD_SPAN key bytes covered
by segments that contain ``?`` or ``[...]``, a ``[...]`` counting CLASS_COST bytes (its
regex steps are that much slower). So compiling takes milliseconds and one match at most
about (key length x 1 KiB) regex steps -- 0.1 s for a 64 KiB key, and nothing for a
key shorter than the pattern's fixed part. Longer patterns get an error saying so, where a
1 MiB pattern once froze the server for 27 s.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from .errors import CommandError

#: Longest pattern KEYS and SCAN MATCH accept (keys are at most 64 KiB; Redis has no limit).
MAX_PATTERN: Final = 64 * 1024
#: Most key bytes that the segments with ``?`` or ``[...]`` of one such pattern may cover,
#: each ``[...]`` counting CLASS_COST.
MAX_WILDCARD_SPAN: Final = 1024
#: What one ``[...]`` counts in MAX_WILDCARD_SPAN: a regex step testing a byte against a set
#: costs 10-20 times one of ``?`` or a plain byte (a 64 KiB key against ``*[ba]...[ba]c*``,
#: 1023 sets: 0.25-1.1 s; with 1023 ``?``: 0.04-0.07 s).
CLASS_COST: Final = 16

#: The next byte with a meaning in a pattern.
_SPECIAL: Final = re.compile(rb"[*?\[\\]")
_NEVER: Final = object()
#: Flips a byte set's flags (``[^...]``).
_INVERT: Final = bytes((1 - b) & 1 for b in range(256))


class PatternError(CommandError):
    """A KEYS or SCAN MATCH pattern beyond the bounds of this module."""


def _class(table: bytearray) -> bytes | None:
    """The regex character class of the bytes flagged in ``table``; None for no byte."""
    ranges: list[bytes] = []
    b = 0
    while b < 256:
        if table[b]:
            lo = b
            while b + 1 < 256 and table[b + 1]:
                b += 1
            ranges.append(re.escape(bytes((lo,))) if lo == b else
                          re.escape(bytes((lo,))) + b"-" + re.escape(bytes((b,))))
        b += 1
    if not ranges:
        return None
    return b"." if len(ranges) == 1 and table.count(1) == 256 else b"[" + b"".join(ranges) + b"]"


def _bracket(pattern: bytes, i: int, dead: bytearray,
             classes: dict[bytes, bytes | object]) -> tuple[bytes | object, int] | None:
    """The set opened by the ``[`` at ``i``: (regex class, or _NEVER for an empty set; the
    index of its ``]``), or None when it is not closed (the ``[`` is then a literal).
    Positions from which the set scan was seen to run off the end are flagged in ``dead``: the
    scan from a position never depends on where the set began, so a later ``[`` whose scan
    reaches one stops at once (without it, ``[[[[...`` was quadratic). ``classes`` caches the
    regex class of each distinct set."""
    n = len(pattern)
    j = i + 1
    negate = j < n and pattern[j] == 94  # ^
    if negate:
        j += 1
    table = bytearray(256)
    path: list[int] = []
    while j < n and pattern[j] != 93:  # ]
        if dead[j]:
            break
        path.append(j)
        c = pattern[j]
        if c == 92 and j + 1 < n:  # backslash: the next byte itself
            j += 1
            table[pattern[j]] = 1
        elif j + 2 < n and pattern[j + 1] == 45 and pattern[j + 2] != 93:  # a-z
            lo, hi = sorted((c, pattern[j + 2]))
            table[lo:hi + 1] = b"\x01" * (hi - lo + 1)
            j += 2
        else:
            table[c] = 1
        j += 1
    if j >= n or dead[j]:
        for p in path:
            dead[p] = 1
        return None
    if negate:
        table = table.translate(_INVERT)
    key = bytes(table)
    atom = classes.get(key)
    if atom is None:
        atom = classes[key] = _class(table) or _NEVER
    return atom, j


#: One token of a pattern: a run of plain bytes, a run of stars, ``?``, an escape, ``[``.
_TOKEN: Final = re.compile(rb"[^*?\[\\]+|\*+|\?|\\[\s\S]?|\[")

#: A star-free stretch of a pattern: the key bytes it matches, and its plain bytes, or else
#: (it has ``?`` or ``[...]``) its regex, one atom per byte.
Segment = tuple[int, bytes | None, "re.Pattern[bytes] | None"]


def _parse(pattern: bytes, max_span: int | None) -> list[Segment] | None:
    """The star-separated segments of ``pattern`` (a leading or trailing star leaves an empty
    first or last one; runs of stars count as one); None when some atom matches no byte
    (``[]``), so that no key matches. Raises PatternError, before compiling a regex, when
    the segments with wildcards match more than ``max_span`` bytes."""
    raw: list[tuple[int, bytes | None, list[bytes] | None]] = []
    size = 0
    sets = 0  # atoms of the segments with wildcards that are byte sets (not ``.``)
    literal = bytearray()
    parts: list[bytes] | None = None  # the regex so far, once a wildcard was seen
    n = len(pattern)
    dead = bytearray(n + 1) if b"[" in pattern else bytearray()
    classes: dict[bytes, bytes | object] = {}
    i = 0
    token = _TOKEN.match
    while i < n:
        m = token(pattern, i)
        assert m is not None  # every byte starts a token
        t = m[0]
        c = t[0]
        i = m.end()
        atom: bytes | object | None = None
        if c == 42:  # *
            raw.append((size, bytes(literal) if parts is None else None, parts))
            size, literal, parts = 0, bytearray(), None
            continue
        if c == 63:  # ?
            atom = b"."
        elif c == 92:  # backslash: the next byte itself (a trailing one is a literal)
            t = t[-1:]
        elif c == 91:  # [
            found = _bracket(pattern, i - 1, dead, classes)
            if found is None:
                t = b"["
            else:
                atom, i = found[0], found[1] + 1
                if atom is _NEVER:
                    return None
        if atom is None:  # plain bytes
            size += len(t)
            if parts is None:
                literal += t
            else:
                parts.append(re.escape(t))
            continue
        assert isinstance(atom, bytes)
        if parts is None:
            parts = [re.escape(bytes(literal))] if literal else []
        parts.append(atom)
        size += 1
        if atom != b".":
            sets += 1
    raw.append((size, bytes(literal) if parts is None else None, parts))
    if max_span is not None:
        span = sum(size for size, _, parts in raw if parts is not None) \
            + sets * (CLASS_COST - 1)
        if span > max_span:
            raise PatternError(
                f"pattern too complex: its stretches between stars that use ? or [...] "
                f"match {span} bytes (each [...] counting {CLASS_COST}), at most {max_span} "
                "are allowed (use fewer wildcards between two stars)")
    return [(size, literal_, None if parts is None else re.compile(b"".join(parts), re.DOTALL))
            for size, literal_, parts in raw]


def compile_glob(pattern: bytes, *, bounded: bool = False) -> Callable[[bytes], bool]:
    """A predicate telling whether a key matches ``pattern``. ``bounded`` (patterns from
    KEYS and SCAN MATCH) raises :class:`PatternError` for a pattern past MAX_PATTERN bytes or
    MAX_WILDCARD_SPAN wildcard bytes, before compiling any regex."""
    if bounded and len(pattern) > MAX_PATTERN:
        raise PatternError(
            f"pattern too long ({len(pattern)} bytes; the maximum is {MAX_PATTERN})")
    if pattern == b"*":
        return lambda key: True
    segments = _parse(pattern, MAX_WILDCARD_SPAN if bounded else None)
    if segments is None:
        return lambda key: False
    fixed = sum(seg[0] for seg in segments)
    if len(segments) == 1:
        _, lit, rx = segments[0]
        if rx is None:
            return lambda key: key == lit
        return lambda key: len(key) == fixed and rx.match(key) is not None
    (first_size, first_lit, first_rx), (last_size, last_lit, last_rx) = segments[0], segments[-1]
    middle = [seg for seg in segments[1:-1] if seg[0]]

    def match(key: bytes) -> bool:
        n = len(key)
        if n < fixed:
            return False
        end = n - last_size
        if first_rx is not None:
            if first_rx.match(key) is None:
                return False
        elif first_lit and not key.startswith(first_lit):
            return False
        if last_rx is not None:
            if last_rx.match(key, end) is None:
                return False
        elif last_lit and not key.endswith(last_lit):
            return False
        pos = first_size
        for size, lit, rx in middle:
            if rx is None:
                pos = key.find(lit, pos, end)  # type: ignore[arg-type]
                if pos < 0:
                    return False
            else:
                m = rx.search(key, pos, end)
                if m is None:
                    return False
                pos = m.start()
            pos += size
        return True

    return match


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every key matching ``pattern`` starts with (lets KEYS scan only them)."""
    m = _SPECIAL.search(pattern)
    return pattern if m is None else pattern[:m.start()]


__all__ = ["CLASS_COST", "MAX_PATTERN", "MAX_WILDCARD_SPAN", "PatternError", "compile_glob",
           "literal_prefix"]
