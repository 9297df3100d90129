"""Builds ShaleDB, compiling its hot modules with mypyc when it can (docs/design.md,
"Compiled build"); the project's metadata is in pyproject.toml.

- The modules in src/shaledb/compiled_modules.txt are compiled to C by mypyc and built with
  the platform's C compiler. Their ``.py`` source ships too: ``SHALEDB_PURE_PYTHON=1`` runs
  it instead (src/shaledb/build.py).
- ``SHALEDB_PURE_PYTHON=1`` at build time, no mypyc, or a failing C compiler: a pure-Python
  build, with a line saying why. ``pip install`` never fails for want of a compiler.
- Each build writes src/shaledb/_build_info.json (the hash of each compiled module's source),
  which lets a compiled module that is older than its source be detected and skipped.
- ``python setup.py build_ext --inplace`` (what ``make build`` runs) does nothing when the
  extensions in the tree already match their source.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(ROOT, "src")
INFO_REL = os.path.join("shaledb", "_build_info.json")
PURE = os.environ.get("SHALEDB_PURE_PYTHON", "") not in ("", "0")


def listed_modules() -> list[str]:
    with open(os.path.join(SRC, "shaledb", "compiled_modules.txt"), encoding="utf-8") as f:
        return [line.split("#", 1)[0].strip() for line in f if line.split("#", 1)[0].strip()]


def module_path(module: str) -> str:
    return os.path.join("src", *module.split(".")) + ".py"


def build_info() -> dict[str, object]:
    modules = {}
    for m in listed_modules():
        path = os.path.join(ROOT, module_path(m))
        with open(path, "rb") as f:
            data = f.read()
        st = os.stat(path)
        modules[m] = {"sha256": hashlib.sha256(data).hexdigest(), "size": st.st_size,
                      "mtime_ns": st.st_mtime_ns}
    import mypy.version

    return {"compiler": "mypyc", "mypy": mypy.version.__version__,
            "python": sys.version.split()[0], "modules": modules}


def say(msg: str) -> None:
    print(f"shaledb build: {msg}", file=sys.stderr)


class BuildExt(build_ext):
    """Writes _build_info.json beside the extensions; falls back to pure Python when the C
    compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any compiler failure means pure Python
            say(f"compiling failed ({type(e).__name__}: {e}); installing pure Python")
            return
        if not self.extensions:
            return
        target = os.path.join(SRC if self.inplace else self.build_lib, INFO_REL)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as f:
            json.dump(build_info(), f, indent=1, sort_keys=True)


def inplace_current() -> bool:
    """Whether the extensions in src/ were compiled from exactly the current source (then
    ``build_ext --inplace`` has nothing to do; mypyc alone would take a minute to find out)."""
    info_file = os.path.join(SRC, INFO_REL)
    try:
        with open(info_file, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        return False
    new = build_info()
    if {m: r["sha256"] for m, r in old.get("modules", {}).items()} != {
            m: r["sha256"] for m, r in new["modules"].items()}:  # type: ignore[attr-defined]
        return False
    if old.get("mypy") != new["mypy"] or old.get("python") != new["python"]:
        return False
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    for m in listed_modules():
        base = os.path.join(SRC, *m.split("."))
        if not any(os.path.exists(base + s) for s in suffixes):
            return False
    if old.get("modules") != new["modules"]:
        # Same source, touched files (a checkout): refresh the mtimes build.py checks first.
        with open(info_file, "w", encoding="utf-8") as f:
            json.dump(new, f, indent=1, sort_keys=True)
    return True


def extensions() -> list[object]:
    if PURE:
        say("SHALEDB_PURE_PYTHON is set: pure Python, nothing compiled")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        say("mypyc is not installed: pure Python")
        return []
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return list(mypycify([module_path(m) for m in listed_modules()], opt_level="3",
                             group_name="shaledb"))
    except Exception as e:  # noqa: BLE001 - e.g. a mypy error: the build is still usable
        say(f"mypyc could not compile ({type(e).__name__}: {e}); pure Python")
        return []
    finally:
        os.chdir(cwd)


if "build_ext" in sys.argv and "--inplace" in sys.argv and not PURE and inplace_current():
    say("compiled modules are up to date")
    sys.exit(0)
setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
