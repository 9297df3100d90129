"""Sorted string tables: immutable files of sorted entries (see docs/format.md)."""

from .builder import TableBuilder
from .format import FORMAT_VERSION, FileMeta
from .reader import TableReader

__all__ = ["FORMAT_VERSION", "FileMeta", "TableBuilder", "TableReader"]
