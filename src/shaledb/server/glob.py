"""Redis glob patterns (KEYS, SCAN MATCH), compiled to a byte regex.

The rules of Redis' ``stringmatchlen``: ``*`` matches any run of bytes, ``?`` one byte,
``[abc]`` / ``[^abc]`` / ``[a-z]`` a byte in (or not in) a set, ``\\x`` the byte ``x`` itself.
One difference: an unclosed ``[`` is a literal ``[`` here (Redis matches it against the rest
of the pattern as a set).

Every atom but ``*`` matches exactly one byte, so a pattern is its star-separated segments,
and taking the leftmost match of each middle segment never loses a match. The regex says so
with atomic groups (``seg0 (?>.*?seg1) ... .*segN``): matching is O(len(key) x
len(pattern)). A plain ``.*`` per star backtracks exponentially (``*a*a*a...*b`` against a
long key ran for hours: Redis' CVE-2022-36021), and SCAN MATCH is open to every reader.
"""

from __future__ import annotations

import re
from collections.abc import Callable


def _byte(b: int) -> bytes:
    return re.escape(bytes((b,)))


def compile_glob(pattern: bytes) -> Callable[[bytes], bool]:
    """A predicate telling whether a key matches ``pattern``."""
    if pattern == b"*":
        return lambda key: True
    # One regex per byte-matching atom; None for a star.
    atoms: list[bytes | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # *
            atoms.append(None)
        elif c == 63:  # ?
            atoms.append(b".")
        elif c == 92 and i + 1 < n:  # backslash
            i += 1
            atoms.append(_byte(pattern[i]))
        elif c == 91 and b"]" in pattern[i + 1:]:  # [
            j = i + 1
            negate = j < n and pattern[j] == 94  # ^
            if negate:
                j += 1
            items = bytearray()
            while j < n and pattern[j] != 93:  # ]
                if pattern[j] == 92 and j + 1 < n:
                    j += 1
                    items += _byte(pattern[j])
                elif j + 2 < n and pattern[j + 1] == 45 and pattern[j + 2] != 93:  # a-z
                    lo, hi = sorted((pattern[j], pattern[j + 2]))
                    items += _byte(lo) + b"-" + _byte(hi)
                    j += 2
                else:
                    items += _byte(pattern[j])
                j += 1
            if j >= n:  # the "]" was escaped: no closing bracket after all
                atoms.append(_byte(c))
            else:
                atoms.append(b"[" + (b"^" if negate else b"") + bytes(items) + b"]" if items
                             else (b"[\\x00-\\xff]" if negate else b"(?!)"))
                i = j
        else:
            atoms.append(_byte(c))
        i += 1
    segments: list[bytes] = [b""]
    for atom in atoms:
        if atom is None:
            segments.append(b"")
        else:
            segments[-1] += atom
    out = segments[0]
    if len(segments) > 1:
        out += b"".join(b"(?>.*?" + seg + b")" for seg in segments[1:-1] if seg)
        out += b".*" + segments[-1]
    regex = re.compile(out + b"\\Z", re.DOTALL)
    return lambda key: regex.match(key) is not None


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every key matching ``pattern`` starts with (lets KEYS scan only them)."""
    end = len(pattern)
    for i, c in enumerate(pattern):
        if c in b"*?[\\":
            end = i
            break
    return pattern[:end]


__all__ = ["compile_glob", "literal_prefix"]
