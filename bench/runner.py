"""Command line and scheduling: every (store, workload group) runs in its own subprocess
(``sys.executable -m bench.worker``) in a fresh directory under ``--dir``, one at a time.

    python -m bench                       # 1M keys, all stores, all workloads
    python -m bench --quick               # small smoke run of everything (about a minute)
    python -m bench --stores shaledb,lmdb --workloads fillrandom,readrandom --keys 200000
    python -m bench --scale --sizes 1M,5M,20M      # ShaleDB at growing data-set sizes
    python -m bench --report              # regenerate docs/benchmarks.md from saved JSON
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import report
from .stores import ALL_STORES, POWER_LOSS, PROCESS_CRASH, STORES
from .workloads import ALL_WORKLOADS, DESCRIPTIONS, ORDERED_ONLY, default_params, plan

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"
QUICK_KEYS = 5_000


def parse_size(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    mult = 1
    if t.endswith("k"):
        mult, t = 1_000, t[:-1]
    elif t.endswith("m"):
        mult, t = 1_000_000, t[:-1]
    elif t.endswith("g"):
        mult, t = 1_000_000_000, t[:-1]
    return int(float(t) * mult)


def _csv(text: str | None, allowed: list[str], what: str) -> list[str]:
    if not text or text == "all":
        return list(allowed)
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="ShaleDB against the embedded stores a Python user would pick instead.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--keys", type=parse_size, default=None,
                    help="number of keys (default 1M; --quick: 5k); accepts 200k, 1M")
    ap.add_argument("--value-size", type=int, default=100, help="bytes per value (100)")
    ap.add_argument("--stores", default="all",
                    help=f"comma-separated subset of: {', '.join(ALL_STORES)}")
    ap.add_argument("--workloads", default="all",
                    help=f"comma-separated subset of: {', '.join(ALL_WORKLOADS)}")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke run of every store and workload; writes its report under "
                         "--dir, never over docs/")
    ap.add_argument("--reads", type=parse_size, default=None,
                    help="gets per read workload (default: --keys; seeks are a tenth of it)")
    ap.add_argument("--sync-ops", type=parse_size, default=None,
                    help="durable puts for fillsync / fillsync8 (default 5000; quick 200)")
    ap.add_argument("--rww-seconds", type=float, default=None,
                    help="length of readwhilewriting (default 15 s; quick 1 s)")
    ap.add_argument("--rww-readers", type=int, default=2,
                    help="reader threads in readwhilewriting (2)")
    ap.add_argument("--shaledb-fsync-interval", default="1.0",
                    help="ShaleDB's fsync_interval in process-crash mode: seconds or 'none' "
                         "(default 1.0, ShaleDB's own default)")
    ap.add_argument("--dir", default=None,
                    help="parent directory for the databases (default ./bench-data)")
    ap.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    ap.add_argument("--json", default=None,
                    help="results file (default bench-results/latest.json; --scale: "
                         "bench-results/scale.json; --quick: DIR/quick.json)")
    ap.add_argument("--no-docs", action="store_true",
                    help="do not regenerate docs/benchmarks.md and its plots")
    ap.add_argument("--docs-dir", default=None,
                    help="where benchmarks.md and benchmarks/*.png go (default docs/)")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds allowed per subprocess before it is killed (3600)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--scale", action="store_true",
                    help="scale run: fill + readrandom + RSS at each of --sizes (ShaleDB only "
                         "unless --stores says otherwise)")
    ap.add_argument("--sizes", default="1M,5M,20M",
                    help="data-set sizes for --scale, in keys (default 1M,5M,20M)")
    ap.add_argument("--scale-fill", choices=("batch", "put"), default="batch",
                    help="how --scale fills: batches of 1000 (default; the hardest on "
                         "compaction) or one put per call")
    ap.add_argument("--scale-reads", type=parse_size, default=200_000,
                    help="random reads at each size in --scale (200k)")
    ap.add_argument("--report", action="store_true",
                    help="only regenerate the docs from the saved JSON files")
    return ap


# -- subprocess handling -------------------------------------------------------------------
def run_child(spec: dict[str, Any], log_path: Path, timeout: float) -> dict[str, Any]:
    """Run one worker subprocess; its stderr is echoed (indented) and kept in ``log_path``."""
    spec_path = Path(spec["out"]).with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    out_path = Path(spec["out"])
    if out_path.exists():
        out_path.unlink()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    # Each ShaleDB column runs the build it names (compiled unless it is "shaledb-pure").
    env.pop("SHALEDB_PURE_PYTHON", None)
    store_cls = STORES.get(spec["store"])
    if store_cls is not None and getattr(store_cls, "BUILD", "") == "pure":
        env["SHALEDB_PURE_PYTHON"] = "1"
    cmd = [sys.executable, "-m", "bench.worker", str(spec_path)]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                print("    " + line.rstrip(), file=sys.stderr, flush=True)

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        th.join(timeout=5)
    wall = time.perf_counter() - t0
    if out_path.exists():
        result = json.loads(out_path.read_text())
    else:
        tail = log_path.read_text()[-2000:] if log_path.exists() else ""
        why = (f"killed after the {timeout:.0f} s timeout" if timed_out
               else f"exited with status {proc.returncode} without a result")
        result = {"store": spec["store"], "group": spec["group"], "error": why,
                  "log_tail": tail}
    result["wall_seconds"] = round(wall, 2)
    result["returncode"] = proc.returncode
    return result


def _fsync_interval(text: str) -> float | None:
    return None if text.strip().lower() in ("none", "off", "0") else float(text)


def _store_cfg(args: argparse.Namespace) -> dict[str, Any]:
    return {"shaledb_fsync_interval": _fsync_interval(args.shaledb_fsync_interval)}


def describe_stores(names: list[str], cfg: dict[str, Any]) -> tuple[dict[str, Any],
                                                                      dict[str, str]]:
    info: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in names:
        cls = STORES[name]
        why = cls.unavailable()
        if why is None:
            try:
                version = cls.version()
            except Exception as exc:  # noqa: BLE001 - an import that fails is a skip
                why = f"import failed: {type(exc).__name__}: {exc}"
        if why is not None:
            skipped[name] = why
            continue
        info[name] = {
            "label": cls.LABEL, "version": version, "settings": cls.SETTINGS,
            "ordered": cls.ORDERED,
            "durability": {m: cls.durability(m, cfg) for m in (PROCESS_CRASH, POWER_LOSS)},
        }
    return info, skipped


# -- the suite -------------------------------------------------------------------------------
def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    keys = args.keys or (QUICK_KEYS if quick else 1_000_000)
    stores = _csv(args.stores, ALL_STORES, "stores")
    chosen = set(_csv(args.workloads, ALL_WORKLOADS, "workloads"))
    workloads = [w for w in ALL_WORKLOADS if w in chosen]
    params = default_params(keys, quick, args.reads, args.sync_ops, args.rww_seconds,
                            args.rww_readers)
    cfg = _store_cfg(args)
    base = Path(args.dir or "./bench-data").resolve()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = base / f"run-{stamp}"
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    info, skipped = describe_stores(stores, cfg)
    meta = report.machine_info()
    meta.update({
        "kind": "suite", "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "keys": keys, "value_size": args.value_size, "key_size": 16, "quick": quick,
        "params": params, "seed": args.seed, "workloads": workloads,
        "workload_descriptions": {w: DESCRIPTIONS[w] for w in workloads},
        "stores": info, "skipped": skipped, "dir": str(base),
        "shaledb_fsync_interval": cfg["shaledb_fsync_interval"],
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    })
    results: dict[str, dict[str, Any]] = {}
    groups_out: dict[str, dict[str, Any]] = {}
    errors: dict[str, dict[str, str]] = {}
    print(f"bench: {keys:,} keys x {args.value_size} B values; stores: "
          f"{', '.join(info) or 'none'}; databases under {run_dir}", file=sys.stderr)
    for name, why in skipped.items():
        print(f"bench: skipping {name}: {why}", file=sys.stderr)

    for store in info:
        cls = STORES[store]
        results[store] = {}
        groups_out[store] = {}
        failed_groups: set[str] = set()
        mine = [w for w in workloads if cls.ORDERED or w not in ORDERED_ONLY]
        for w in workloads:
            if w not in mine:
                results[store][w] = {"skipped": f"{store} has no ordered iteration / seek"}
        for group, ws in plan(mine) if mine else []:
            runnable = tuple(w for w in ws if cls.ORDERED or w not in ORDERED_ONLY)
            if not runnable:
                continue
            if group.uses and group.uses in failed_groups:
                for w in runnable:
                    results[store][w] = {"error": f"set-up group {group.uses} failed"}
                failed_groups.add(group.name)
                continue
            path = run_dir / store / (group.uses or group.name)
            if not group.uses:
                shutil.rmtree(path, ignore_errors=True)
                path.parent.mkdir(parents=True, exist_ok=True)
            print(f"  {store} / {group.name}: {', '.join(runnable)} "
                  f"({group.mode})", file=sys.stderr, flush=True)
            spec = {
                "kind": "suite", "store": store, "group": group.name,
                "workloads": list(runnable), "mode": group.mode, "path": str(path),
                "keys": keys, "value_size": args.value_size, "seed": args.seed,
                "params": params, "drop_cache": group.drop_cache, "store_cfg": cfg,
                "out": str(logs / f"{store}.{group.name}.result.json"),
            }
            res = run_child(spec, logs / f"{store}.{group.name}.log", args.timeout)
            wls = res.pop("workloads", {}) or {}
            groups_out[store][group.name] = res
            for w, r in wls.items():
                if w not in workloads:
                    r["setup_only"] = True
                results[store][w] = r
            if res.get("error"):
                failed_groups.add(group.name)
                errors.setdefault(store, {})[group.name] = res["error"]
                for w in runnable:
                    results[store].setdefault(w, {"error": res["error"]})
            if not args.keep and not group.keep and group.uses is None:
                shutil.rmtree(path, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(run_dir / store, ignore_errors=True)
    if not args.keep and not errors:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"meta": meta, "results": results, "groups": groups_out, "errors": errors,
            "logs": str(logs) if errors or args.keep else None}


# -- the scale run ---------------------------------------------------------------------------
def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    stores = _csv(args.stores if args.stores != "all" else "shaledb", ALL_STORES, "stores")
    cfg = _store_cfg(args)
    info, skipped = describe_stores(stores, cfg)
    base = Path(args.dir or "./bench-data").resolve()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = base / f"scale-{stamp}"
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    meta = report.machine_info()
    meta.update({
        "kind": "scale", "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "sizes": sizes, "value_size": args.value_size, "key_size": 16, "fill": args.scale_fill,
        "reads": args.scale_reads, "stores": info, "skipped": skipped, "seed": args.seed,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "shaledb_fsync_interval": cfg["shaledb_fsync_interval"],
    })
    try:
        import shaledb

        o = shaledb.Options()
        meta["shaledb_memory_budget_bytes"] = 2 * o.memtable_size + o.block_cache_size
        meta["shaledb_memtable_size"] = o.memtable_size
        meta["shaledb_block_cache_size"] = o.block_cache_size
    except Exception:  # noqa: BLE001
        pass
    results: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, dict[str, str]] = {}
    for store in info:
        results[store] = []
        for n in sizes:
            path = run_dir / store / f"n{n}"
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            print(f"  {store} / scale {n:,} keys", file=sys.stderr, flush=True)
            params = default_params(n, False, min(args.scale_reads, n))
            spec = {"kind": "scale", "store": store, "group": f"scale-{n}", "path": str(path),
                    "keys": n, "value_size": args.value_size, "seed": args.seed,
                    "params": params, "mode": PROCESS_CRASH, "fill": args.scale_fill,
                    "store_cfg": cfg, "out": str(logs / f"{store}.scale-{n}.result.json")}
            res = run_child(spec, logs / f"{store}.scale-{n}.log", args.timeout)
            results[store].append(res)
            if res.get("error"):
                errors.setdefault(store, {})[f"scale-{n}"] = res["error"]
            if not args.keep:
                shutil.rmtree(path, ignore_errors=True)
    if not args.keep and not errors:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"meta": meta, "results": results, "errors": errors,
            "logs": str(logs) if errors or args.keep else None}


# -- output ---------------------------------------------------------------------------------
def _write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    docs_dir = Path(args.docs_dir).resolve() if args.docs_dir else ROOT / "docs"
    if args.report:
        suite = Path(args.json) if args.json else RESULTS / "latest.json"
        md = report.write_docs(suite, RESULTS / "scale.json", docs_dir)
        print(f"bench: wrote {md}", file=sys.stderr)
        return 0
    if args.scale:
        data = run_scale(args)
        out = Path(args.json) if args.json else RESULTS / "scale.json"
        _write_json(data, out)
        print(report.scale_table(data))
        print(f"\nbench: results in {out}", file=sys.stderr)
        if not args.no_docs:
            md = report.write_docs(RESULTS / "latest.json", out, docs_dir)
            print(f"bench: wrote {md}", file=sys.stderr)
        return 1 if data["errors"] else 0

    data = run_suite(args)
    base = Path(args.dir or "./bench-data").resolve()
    if args.quick:
        out = Path(args.json) if args.json else base / "quick.json"
    else:
        out = Path(args.json) if args.json else RESULTS / "latest.json"
    _write_json(data, out)
    print(report.stdout_tables(data))
    print(f"\nbench: results in {out}", file=sys.stderr)
    if args.quick and not args.docs_dir:
        # Exercise the whole report path without touching docs/.
        md = report.write_docs(out, None, base / "quick-report")
        print(f"bench: quick report (not docs/) in {md}", file=sys.stderr)
    elif not args.no_docs:
        md = report.write_docs(out, RESULTS / "scale.json", docs_dir)
        print(f"bench: wrote {md}", file=sys.stderr)
    if data["logs"]:
        print(f"bench: subprocess logs in {data['logs']}", file=sys.stderr)
    return 1 if data["errors"] else 0
