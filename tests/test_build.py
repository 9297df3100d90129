"""The two builds (issue 14): mypyc-compiled hot modules, or the same source as pure Python.

Each runs in a subprocess, since the choice is made once per process at import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import shaledb
import shaledb.build
from conftest import compiled_build

PROBE = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import shaledb, shaledb.build, shaledb.engine.db as d
    db = shaledb.open({path!r})
    db.put(b"k", b"v")
    assert db.get(b"k") == b"v"
    assert list(db.range(b"a", b"z")) == [(b"k", b"v")]
    db.close()
print(json.dumps({{"info": shaledb.build.info(), "file": d.__file__,
                  "warnings": [str(w.message) for w in caught]}}))
"""


def _probe(tmp_path: Path, env: dict[str, str], pythonpath: str | None = None
           ) -> dict[str, object]:
    full = dict(os.environ)
    full.pop("SHALEDB_PURE_PYTHON", None)
    full.update(env)
    if pythonpath is not None:
        full["PYTHONPATH"] = pythonpath
    db_path = str(tmp_path / f"db{len(list(tmp_path.iterdir()))}")
    out = subprocess.run([sys.executable, "-c", PROBE.format(path=db_path)], env=full,
                         capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_listed_modules_exist_and_are_typed() -> None:
    listed = shaledb.build.listed_modules()
    assert "shaledb.engine.db" in listed and "shaledb.db" in listed
    for m in listed:
        assert os.path.exists(shaledb.build.source_path(m)), m


def test_pure_python_forced_by_environment(tmp_path: Path) -> None:
    got = _probe(tmp_path, {"SHALEDB_PURE_PYTHON": "1"})
    info = got["info"]
    assert isinstance(info, dict)
    assert info["compiled"] is False and "SHALEDB_PURE_PYTHON" in info["reason"]
    assert str(got["file"]).endswith(".py")


@pytest.mark.skipif(not compiled_build(), reason="this run is the pure build")
def test_compiled_build_loads_extensions(tmp_path: Path) -> None:
    got = _probe(tmp_path, {})
    info = got["info"]
    assert isinstance(info, dict)
    assert info["compiled"] is True, info
    assert sorted(info["modules"]) == sorted(shaledb.build.listed_modules())
    assert not str(got["file"]).endswith(".py")
    assert got["warnings"] == []


@pytest.mark.skipif(not compiled_build(), reason="this run is the pure build")
def test_stale_extension_is_not_run(tmp_path: Path) -> None:
    """An edited module whose extension was not rebuilt would run the old code: the whole
    package then imports as pure Python, with a warning that says how to rebuild."""
    pkg_root = Path(shaledb.__file__).parent
    copy = tmp_path / "tree"
    shutil.copytree(pkg_root, copy / "shaledb",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for group_lib in pkg_root.parent.glob("shaledb__mypyc*"):
        shutil.copy2(group_lib, copy / group_lib.name)
    # The untouched copy runs compiled ...
    got = _probe(tmp_path, {}, pythonpath=str(copy))
    assert str(got["file"]).startswith(str(copy))
    assert isinstance(got["info"], dict) and got["info"]["compiled"] is True
    # ... an edit to one compiled module's source makes every module pure.
    cache = copy / "shaledb" / "engine" / "cache.py"
    cache.write_text(cache.read_text() + "\n# edited after the build\n")
    got = _probe(tmp_path, {}, pythonpath=str(copy))
    info = got["info"]
    assert isinstance(info, dict)
    assert info["compiled"] is False and "shaledb.engine.cache" in info["reason"]
    assert str(got["file"]).endswith("db.py")
    warnings = got["warnings"]
    assert isinstance(warnings, list)
    assert any("make build" in w for w in warnings), warnings
    # A checkout that only touched the file (same bytes) is not stale.
    cache.write_text(cache.read_text().replace("\n# edited after the build\n", ""))
    os.utime(cache, None)
    got = _probe(tmp_path, {}, pythonpath=str(copy))
    assert isinstance(got["info"], dict) and got["info"]["compiled"] is True


@pytest.mark.skipif(not compiled_build(), reason="this run is the pure build")
def test_build_record_matches_source() -> None:
    info_file = Path(shaledb.__file__).parent / "_build_info.json"
    record = json.loads(info_file.read_text())
    assert set(record["modules"]) == set(shaledb.build.listed_modules())
    for m, rec in record["modules"].items():
        assert rec["sha256"] == shaledb.build.source_hash(shaledb.build.source_path(m))


def test_abandoned_iterators_release_their_version_pins(tmp_path: Path) -> None:
    """A range iterator pins a version (its tables stay on disk) until it ends. One dropped
    unfinished, or never started, must release it: Python runs a started generator's
    ``finally`` on collection, a mypyc-compiled generator does not (and cannot be weakly
    referenced), so the release rides on an object whose ``__del__`` works in both builds."""
    import gc

    with shaledb.open(tmp_path / "db") as db:
        for i in range(2000):
            db.put(b"k%05d" % i, b"v" * 50)
        engine = db._engine
        assert not engine._pinned
        started = db.range()
        next(started)
        never_started = db.range(b"k00100")
        live = db.live_records() if hasattr(db, "live_records") else None
        assert engine._pinned
        del started, never_started, live
        gc.collect()
        assert not engine._pinned, "an abandoned iterator kept its version pinned"
        finished = list(db.range())
        assert len(finished) == 2000 and not engine._pinned
