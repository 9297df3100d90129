"""Backups you can trust: online, incremental (content-addressed), verified, encrypted when
the database is, with point-in-time restore from an archived WAL. See docs/operations.md.

>>> info = db.backup("/backups/shop")                      # doctest: +SKIP
>>> shaledb.restore("/backups/shop", "/srv/shop-restored")  # doctest: +SKIP
"""

from __future__ import annotations

from .backup import RestoreInfo, restore, take_backup
from .repository import BackupInfo, PruneReport, Repository, RepoVerifyReport
from .storage import LocalStorage, Storage

__all__ = ["BackupInfo", "LocalStorage", "PruneReport", "RepoVerifyReport", "Repository",
           "RestoreInfo", "Storage", "restore", "take_backup"]
