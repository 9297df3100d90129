"""Which build of ShaleDB is running: the hot modules compiled by mypyc, or pure Python.

``setup.py`` compiles the modules listed in ``compiled_modules.txt`` with mypyc when it can,
and records each module's source hash in ``_build_info.json`` next to this file. The same
source always imports as pure Python too, so this module (never compiled itself) chooses,
once, before any other ShaleDB module is imported:

- ``SHALEDB_PURE_PYTHON=1`` (any value but ``0`` or empty) forces the pure build;
- a compiled module whose ``.py`` no longer matches the source it was compiled from is
  *stale* (an edited checkout whose extension was not rebuilt): running it would run old
  code, so every module then imports as pure Python and a warning says how to rebuild;
- otherwise the compiled extensions load (the import system prefers them to ``.py``).

Choosing pure Python means a meta-path finder that gives the listed modules their ``.py``
source loader, so the ``.so`` files beside them are never loaded. The choice is for the
whole process (and, through the environment it sets, for its compaction worker).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

ENV_PURE = "SHALEDB_PURE_PYTHON"
_ROOT = os.path.dirname(os.path.abspath(__file__))
_INFO_FILE = os.path.join(_ROOT, "_build_info.json")
_MODULES_FILE = os.path.join(_ROOT, "compiled_modules.txt")

_state: dict[str, Any] = {}


def listed_modules() -> list[str]:
    """The dotted names of the modules a compiled build compiles (compiled_modules.txt)."""
    with open(_MODULES_FILE, encoding="utf-8") as f:
        return [line.split("#", 1)[0].strip() for line in f
                if line.split("#", 1)[0].strip()]


def source_path(module: str) -> str:
    """The ``.py`` file of ``shaledb.x.y``."""
    return os.path.join(_ROOT, *module.split(".")[1:]) + ".py"


def source_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _extension_present(module: str) -> bool:
    base = os.path.join(_ROOT, *module.split(".")[1:])
    return any(os.path.exists(base + suffix)
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds the listed modules' ``.py`` files, ahead of the extension modules beside them."""

    def __init__(self, modules: Sequence[str]) -> None:
        self._modules = frozenset(modules)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def _read_info() -> dict[str, Any] | None:
    try:
        with open(_INFO_FILE, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _stale(info: dict[str, Any]) -> list[str]:
    """Compiled modules whose source changed since they were compiled (size and mtime first,
    so an unchanged checkout costs one ``stat`` per module; a hash settles the rest)."""
    stale = []
    for module, rec in info.get("modules", {}).items():
        path = source_path(module)
        try:
            st = os.stat(path)
        except OSError:
            stale.append(module)
            continue
        if st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns"):
            continue
        if source_hash(path) != rec.get("sha256"):
            stale.append(module)
    return stale


def choose() -> dict[str, Any]:
    """Decide the build for this process (idempotent); returns :func:`info`."""
    if _state:
        return info()
    listed = listed_modules()
    present = [m for m in listed if _extension_present(m)]
    reason = ""
    compiled = False
    if os.environ.get(ENV_PURE, "") not in ("", "0"):
        reason = f"{ENV_PURE} is set"
    elif not present:
        reason = "no compiled modules are installed (built without mypyc or a C compiler)"
    else:
        build = _read_info()
        stale = _stale(build) if build is not None else present
        if build is None:
            reason = "compiled modules without _build_info.json (a broken build)"
        elif stale:
            reason = ("compiled modules are older than their source: "
                      + ", ".join(sorted(stale)[:5]) + (" ..." if len(stale) > 5 else ""))
        else:
            compiled = True
        if not compiled:
            warnings.warn(f"ShaleDB runs as pure Python: {reason}. Rebuild with "
                          "`make build` (or `python setup.py build_ext --inplace`).",
                          RuntimeWarning, stacklevel=3)
    if not compiled:
        # The worker process and any child inherit the decision.
        if present:
            os.environ[ENV_PURE] = "1"
        sys.meta_path.insert(0, _SourceOnly(listed))
    _state.update(compiled=compiled, modules=present if compiled else [], reason=reason)
    return info()


def info() -> dict[str, Any]:
    """``{"compiled": bool, "modules": [...], "reason": why pure}`` for this process."""
    return {"compiled": bool(_state.get("compiled")), "modules": list(_state.get("modules", [])),
            "reason": str(_state.get("reason", ""))}


choose()
