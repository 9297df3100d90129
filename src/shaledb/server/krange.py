"""Compatibility name: the KRANGE helpers moved to :mod:`shaledb.client.krange` (they are
client code, not part of the server). README documented ``shaledb.server.krange``, so it
keeps working."""

from __future__ import annotations

from shaledb.client.krange import DEFAULT_PAGE, iter_krange, kbatch, kdelrange, krange

__all__ = ["DEFAULT_PAGE", "iter_krange", "kbatch", "kdelrange", "krange"]
