"""Redis glob patterns (KEYS, SCAN MATCH), compiled to a byte regex.

The rules of Redis' ``stringmatchlen``: ``*`` matches any run of bytes, ``?`` one byte,
``[abc]`` / ``[^abc]`` / ``[a-z]`` a byte in (or not in) a set, ``\\x`` the byte ``x`` itself.
One difference: an unclosed ``[`` is a literal ``[`` here (Redis matches it against the rest
of the pattern as a set).
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
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # *
            out += b".*"
        elif c == 63:  # ?
            out += b"."
        elif c == 92 and i + 1 < n:  # backslash
            i += 1
            out += _byte(pattern[i])
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
                out += _byte(c)
            else:
                out += b"[" + (b"^" if negate else b"") + bytes(items) + b"]" if items else (
                    b"[\\x00-\\xff]" if negate else b"(?!)")
                i = j
        else:
            out += _byte(c)
        i += 1
    regex = re.compile(bytes(out) + b"\\Z", re.DOTALL)
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
