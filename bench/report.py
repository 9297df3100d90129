"""Machine description, the stdout tables, ``docs/benchmarks.md`` and its PNG plots."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20

#: Workloads whose latency table entry is interesting (fills with one op per call, reads).
LATENCY_WORKLOADS = ("fillrandom", "overwrite", "fillbatch", "readrandom", "readhot",
                     "readmissing", "seekrandom", "deleterandom", "fillsync", "fillsync8",
                     "readwhilewriting")


# -- machine ---------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _mount_of(path: str) -> str:
    best = ("", "?", "?")
    p = os.path.realpath(path)
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and (p == parts[1] or p.startswith(parts[1].rstrip("/") + "/")) \
                and len(parts[1]) >= len(best[0]):
            best = (parts[1], parts[2], parts[0])
    return f"{best[1]} ({best[2]} on {best[0]})" if best[0] else "?"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def harness_overhead_ns() -> float:
    """Cost per operation of the fillrandom loop itself (key and value slicing, the closure,
    the latency sampling) with a C-level no-op store, in nanoseconds."""
    from .workloads import MASK, STRIDE, _loop

    n = 200_000
    kb = os.urandom(16 * n)
    pool = os.urandom((1 << 20) + 100)
    put = {}.get

    def op(i: int) -> None:
        o = (i * STRIDE) & MASK
        put(kb[i * 16: i * 16 + 16], pool[o: o + 100])

    best = math.inf
    for _ in range(3):
        secs, _lat = _loop(n, op, 8)
        best = min(best, secs)
    return round(best / n * 1e9, 1)


def machine_info() -> dict[str, Any]:
    cpu = "?"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    libs: dict[str, str] = {}
    import importlib.metadata as md

    for dist in ("shaledb", "lmdb", "rocksdict", "plyvel", "diskcache", "sqlitedict",
                 "matplotlib"):
        try:
            libs[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    import sqlite3

    libs["sqlite (library)"] = sqlite3.sqlite_version
    status = _git("status", "--porcelain", "--", "src")
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpu": cpu, "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "ram_bytes": mem, "kernel": platform.release(), "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": libs, "filesystem": _mount_of(os.getcwd()),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "src_modified": bool(status), "loadavg_at_start": [round(x, 2) for x in load],
        "harness_overhead_ns_per_op": harness_overhead_ns(),
    }


# -- formatting ------------------------------------------------------------------------------
def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:,.1f}"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    if b >= 1 << 30:
        return f"{b / (1 << 30):.2f} GiB"
    return f"{b / MiB:,.1f} MiB"


def _cell(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    if "skipped" in r:
        return "n/a"
    if "ops_per_sec" not in r:
        return "ERR"
    s = fmt_rate(r["ops_per_sec"])
    return s + ("!" if r.get("error") else "")


def _ops(r: dict[str, Any] | None) -> float | None:
    if not r or "ops_per_sec" not in r or r.get("error") or not r["ops_per_sec"]:
        return None
    return float(r["ops_per_sec"])


def _table(header: list[str], rows: list[list[str]], md: bool = False) -> str:
    if md:
        out = ["| " + " | ".join(header) + " |",
               "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i])
                       for i, h in enumerate(header))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(r)))
    return "\n".join(lines)


def _workloads(data: dict[str, Any]) -> list[str]:
    return list(data["meta"].get("workloads", []))


def _stores(data: dict[str, Any]) -> list[str]:
    return [s for s in data["meta"]["stores"] if s in data["results"]]


def ops_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    stores = _stores(data)
    header = ["ops/s", *stores]
    rows = [[w, *(_cell(data["results"][s].get(w)) for s in stores)] for w in _workloads(data)]
    return header, rows


#: ShaleDB's own variants: not peers (compared with plain ShaleDB in their own table).
VARIANTS = ("shaledb-pure", "shaledb-enc")


def _peers(stores: list[str]) -> list[str]:
    return [s for s in stores if s != "shaledb" and s not in VARIANTS]


def variant_rows(data: dict[str, Any], variant: str, title: str
                 ) -> tuple[list[str], list[list[str]]]:
    """Plain compiled ShaleDB against ``variant`` (the pure build, the encrypted store),
    workload by workload, same run: the factor is shaledb ops/s / variant ops/s."""
    stores = _stores(data)
    header = ["workload", "shaledb ops/s", f"{variant} ops/s", title]
    rows: list[list[str]] = []
    if "shaledb" not in stores or variant not in stores:
        return header, rows
    logs = []
    for w in _workloads(data):
        a = _ops(data["results"]["shaledb"].get(w))
        b = _ops(data["results"][variant].get(w))
        if a and b:
            rows.append([w, fmt_rate(a), fmt_rate(b), f"{a / b:.2f}x"])
            logs.append(math.log(a / b))
    if logs:
        rows.append(["geo. mean", "", "", f"{math.exp(sum(logs) / len(logs)):.2f}x"])
    return header, rows


def _geo_mean(data: dict[str, Any], mine: str, peer: str) -> str:
    rs = []
    for w in _workloads(data):
        a, b = _ops(data["results"][mine].get(w)), _ops(data["results"][peer].get(w))
        if a and b:
            rs.append(math.log(a / b))
    return f"{math.exp(sum(rs) / len(rs)):.2f}x" if rs else "-"


def ratio_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    stores = _stores(data)
    peers = _peers(stores)
    header = ["ShaleDB / peer", *peers]
    rows = []
    if "shaledb" not in stores:
        return header, rows
    for w in _workloads(data):
        mine = _ops(data["results"]["shaledb"].get(w))
        row = [w]
        for p in peers:
            theirs = _ops(data["results"][p].get(w))
            row.append("-" if mine is None or theirs is None else f"{mine / theirs:.2f}x")
        rows.append(row)
    rows.append(["geo. mean", *(_geo_mean(data, "shaledb", p) for p in peers)])
    if "shaledb-pure" in stores:
        rows.append(["geo. mean, pure build",
                     *(_geo_mean(data, "shaledb-pure", p) for p in peers)])
    return header, rows


def stdout_tables(data: dict[str, Any]) -> str:
    m = data["meta"]
    out = [f"\n{m['keys']:,} keys x {m['value_size']} B values; {m['cpu']}, {m['cores']} cores; "
           f"{m['python']}\n"]
    h, rows = ops_rows(data)
    out.append(_table(h, rows))
    h, rows = ratio_rows(data)
    if rows:
        out.append("\n" + _table(h, rows))
    for variant, title in (("shaledb-pure", "compiled / pure"),
                           ("shaledb-enc", "plain / encrypted")):
        h, rows = variant_rows(data, variant, title)
        if rows:
            out.append(f"\n{title} (ops/s divided, same run):\n" + _table(h, rows))
    out.append("\nn/a: the store has no ordered iteration; ERR / '!': the workload failed or "
               "returned wrong data (see the JSON). fillsync/fillsync8 are power-loss durable; "
               "everything else process-crash durable:")
    for s, info in m["stores"].items():
        out.append(f"  {s}: {info['durability']['process-crash']}")
    for s, why in m.get("skipped", {}).items():
        out.append(f"  skipped {s}: {why}")
    for s, errs in data.get("errors", {}).items():
        for g, e in errs.items():
            out.append(f"  ERROR {s} / {g}: {e}")
    for s in _stores(data):
        for w, r in data["results"][s].items():
            if r.get("error") and "ops_per_sec" in r:
                out.append(f"  ERROR {s} / {w}: {r['error']}")
    return "\n".join(out)


def _count_secs(eng: dict[str, Any], count: str, ms: str) -> str:
    """``count (seconds)`` for an engine counter and its time counter."""
    if count not in eng:
        return "-"
    if ms not in eng:
        return str(eng[count])
    return f"{eng[count]} ({eng[ms] / 1000:.1f})"


def scale_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["store", "keys", "fill ops/s", "readrandom ops/s", "peak RSS", "RSS over start",
              "heap RSS over start", "L0 files max", "stalls (s)", "slowdowns (s)",
              "slowest write ms", "W-amp", "catch-up s", "disk"]
    rows = []
    for store, runs in data["results"].items():
        for r in runs:
            f = r.get("fill", {}) if isinstance(r.get("fill"), dict) else {}
            rr = r.get("readrandom", {})
            eng = f.get("engine", {})
            peak = max([x for x in (f.get("peak_rss_bytes"), f.get("sampled_rss_max_bytes"),
                                    rr.get("peak_rss_bytes"), rr.get("sampled_rss_max_bytes"))
                        if x] or [0]) or None
            rows.append([
                store, f"{r.get('keys', 0):,}", fmt_rate(f.get("ops_per_sec")),
                fmt_rate(rr.get("ops_per_sec")), fmt_bytes(peak),
                fmt_bytes(r.get("rss_over_baseline_max_bytes")),
                fmt_bytes(r.get("anon_rss_over_baseline_max_bytes")),
                str(f.get("l0_files_max", "-")), _count_secs(eng, "write_stalls", "stall_ms"),
                _count_secs(eng, "write_slowdowns", "slowdown_ms"),
                fmt_rate((f.get("latency_us") or {}).get("max", 0) / 1000) if f.get("latency_us")
                else "-",
                f"{f['write_amp']:.2f}" if f.get("write_amp") else "-",
                str(f.get("compaction_catchup_seconds", "-")), fmt_bytes(r.get("disk_bytes")),
            ])
            if r.get("error"):
                rows[-1][0] += " (ERROR)"
    return header, rows


def scale_table(data: dict[str, Any]) -> str:
    h, rows = scale_rows(data)
    out = [_table(h, rows)]
    b = data["meta"].get("shaledb_memory_budget_bytes")
    if b:
        out.append(f"\nShaleDB memory budget (2 x memtable_size + block_cache_size): "
                   f"{fmt_bytes(b)}; 'RSS over start' excludes the harness's own key buffer; "
                   "'heap RSS over start' also excludes pages of mapped files (page cache).")
    for s, errs in data.get("errors", {}).items():
        for g, e in errs.items():
            out.append(f"ERROR {s} / {g}: {e}")
    return "\n".join(out)


# -- plots -------------------------------------------------------------------------------------
COLORS = {"shaledb": "#d62728", "lmdb": "#1f77b4", "rocksdict": "#ff7f0e", "plyvel": "#2ca02c",
          "sqlite3": "#9467bd", "diskcache": "#8c564b", "sqlitedict": "#e377c2",
          "dbm.gnu": "#7f7f7f"}


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def plot_ops(data: dict[str, Any], path: Path) -> None:
    plt = _plt()
    stores = _stores(data)
    wls = _workloads(data)
    cols = 4
    rows = math.ceil(len(wls) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    for ax, w in zip(axes.flat, wls, strict=False):
        vals = [_ops(data["results"][s].get(w)) or 0.0 for s in stores]
        bars = ax.bar(range(len(stores)), vals, color=[COLORS.get(s, "#333") for s in stores])
        ax.set_title(w, fontsize=10)
        ax.set_xticks(range(len(stores)))
        ax.set_xticklabels(stores, rotation=45, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.yaxis.set_major_formatter(
            plt.matplotlib.ticker.FuncFormatter(lambda v, _p: _short(v)))
        top = max(vals) if vals else 0
        for b, v, s in zip(bars, vals, stores, strict=True):
            r = data["results"][s].get(w) or {}
            label = _short(v) if v else ("n/a" if "skipped" in r else "err" if r else "")
            ax.text(b.get_x() + b.get_width() / 2, (v or 0) + top * 0.01, label,
                    ha="center", va="bottom", fontsize=6)
        ax.set_ylim(0, top * 1.15 if top else 1)
    for ax in list(axes.flat)[len(wls):]:
        ax.axis("off")
    m = data["meta"]
    fig.suptitle(f"ops/s by store and workload ({m['keys']:,} keys x {m['value_size']} B; "
                 f"higher is better)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ratios(data: dict[str, Any], path: Path) -> bool:
    stores = _stores(data)
    peers = _peers(stores)
    if "shaledb" not in stores or not peers:
        return False
    plt = _plt()
    import numpy as np

    wls = _workloads(data)
    grid = np.full((len(wls), len(peers)), np.nan)
    for i, w in enumerate(wls):
        a = _ops(data["results"]["shaledb"].get(w))
        for j, p in enumerate(peers):
            b = _ops(data["results"][p].get(w))
            if a and b:
                grid[i, j] = math.log10(a / b)
    fig, ax = plt.subplots(figsize=(1.3 * len(peers) + 2.5, 0.42 * len(wls) + 1.6))
    lim = max(1.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0)
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(peers)))
    ax.set_xticklabels(peers, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(wls)))
    ax.set_yticklabels(wls, fontsize=8)
    for i in range(len(wls)):
        for j in range(len(peers)):
            v = grid[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{10 ** v:.2g}x", ha="center",
                    va="center", fontsize=7)
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("log10(ShaleDB / peer)", fontsize=8)
    ax.set_title("ShaleDB ops/s divided by each peer's (>1: ShaleDB faster)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_scale(data: dict[str, Any], path: Path) -> bool:
    runs_by_store = {s: [r for r in runs if isinstance(r.get("fill"), dict)]
                     for s, runs in data["results"].items()}
    if not any(runs_by_store.values()):
        return False
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for s, runs in runs_by_store.items():
        if not runs:
            continue
        xs = [r["keys"] for r in runs]
        c = COLORS.get(s, "#333")
        a1.plot(xs, [r["fill"]["ops_per_sec"] for r in runs], "o-", color=c,
                label=f"{s} fill ({data['meta'].get('fill', 'batch')})")
        a1.plot(xs, [r.get("readrandom", {}).get("ops_per_sec", 0) for r in runs], "s--",
                color=c, label=f"{s} readrandom")
        peak = [max(r["fill"].get("peak_rss_bytes", 0), r["fill"].get("sampled_rss_max_bytes", 0),
                    r.get("readrandom", {}).get("peak_rss_bytes", 0)) / MiB for r in runs]
        over = [r.get("rss_over_baseline_max_bytes", 0) / MiB for r in runs]
        heap = [r.get("anon_rss_over_baseline_max_bytes", 0) / MiB for r in runs]
        a2.plot(xs, peak, "o-", color=c, label=f"{s} peak RSS (process)")
        a2.plot(xs, over, "s--", color=c, label=f"{s} RSS over start (store only)")
        a2.plot(xs, heap, "^:", color=c, label=f"{s} heap RSS over start (no mapped files)")
    b = data["meta"].get("shaledb_memory_budget_bytes")
    if b:
        a2.axhline(b / MiB, color="k", lw=0.8, ls=":",
                   label="2 x memtable_size + block_cache_size")
    sizes = sorted({r["keys"] for runs in runs_by_store.values() for r in runs})
    fmt = plt.matplotlib.ticker.FuncFormatter(lambda v, _p: _short(v))
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
        ax.set_xlabel("keys in the data set")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    a1.set_ylabel("ops/s")
    a1.yaxis.set_major_formatter(fmt)
    a1.set_ylim(bottom=0)
    a2.set_ylabel("MiB")
    a2.set_ylim(bottom=0)
    a1.set_title("throughput against data-set size", fontsize=10)
    a2.set_title("memory against data-set size", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- docs/benchmarks.md -------------------------------------------------------------------------
def _load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not Path(path).exists():
        return None
    try:
        return json.loads(Path(path).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def _machine_md(m: dict[str, Any]) -> list[str]:
    libs = ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items())
    return [
        "| | |", "|---|---|",
        f"| CPU | {m.get('cpu')} |",
        f"| cores | {m.get('cores')} (usable: {m.get('affinity_cores')}) |",
        f"| RAM | {fmt_bytes(m.get('ram_bytes'))} |",
        f"| OS | {m.get('os')} |",
        f"| file system of the data | {m.get('filesystem')} |",
        f"| Python | {m.get('python')} |",
        f"| libraries | {libs} |",
        f"| ShaleDB commit | {m.get('git_commit')}"
        f"{' (with uncommitted changes under src/)' if m.get('src_modified') else ''} |",
        f"| date | {m.get('date')} |",
        f"| load average at start | {', '.join(map(str, m.get('loadavg_at_start', [])))} |",
        f"| command | `{m.get('command')}` |",
    ]


def _lat(r: dict[str, Any] | None) -> str:
    if not r or not r.get("latency_us") or "ops_per_sec" not in r:
        return "n/a" if r and "skipped" in r else "-"
    lat = r["latency_us"]
    return f"{lat['p50']:g} / {lat['p99']:g} / {lat['p999']:g}"


def _notes(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    res = data["results"]
    stores = _stores(data)
    notes: list[str] = []
    if "shaledb" in stores:
        wins, losses = [], []
        for w in _workloads(data):
            a = _ops(res["shaledb"].get(w))
            if not a:
                continue
            others = {p: _ops(res[p].get(w)) for p in _peers(stores)}
            others = {p: v for p, v in others.items() if v}
            if not others:
                continue
            best_p = max(others, key=lambda p: others[p])
            if a >= others[best_p]:
                wins.append(w)
            else:
                losses.append(f"{w} ({best_p} {others[best_p] / a:.1f}x faster)")
        if wins:
            notes.append(f"ShaleDB is the fastest store measured on: {', '.join(wins)}.")
        if losses:
            notes.append("ShaleDB is behind the fastest peer on: " + "; ".join(losses) + ".")
    notes += [
        "One run on a shared, noisy virtual machine (see the load average above): differences "
        "under about 15% are within the noise. Every store ran alone, one subprocess at a "
        "time, but other tenants' work was not controlled.",
        "ShaleDB is Python on top of a few small C extensions; every peer is a C, C++ or Rust "
        "engine behind a thin binding. Every number includes the same harness cost per "
        f"operation (slicing the key and value, the loop, the sampling): about "
        f"{m.get('harness_overhead_ns_per_op', '?')} ns per operation measured against a "
        "no-op store, which matters only for the fastest peers.",
        "Durability is matched per workload and stated per store above. In process-crash mode "
        "ShaleDB also fsyncs its WAL in the background every "
        f"{m.get('shaledb_fsync_interval')} s (its default), work the peers do not do in that "
        "mode." if m.get("shaledb_fsync_interval") else
        "Durability is matched per workload and stated per store above; ShaleDB ran with "
        "fsync_interval=None in process-crash mode.",
        "Caches are matched where the store has one (64 MiB block or page cache); LevelDB and "
        "RocksDB get a 10-bit bloom filter (ShaleDB always has one). Everything else is the "
        "library's default. diskcache and sqlitedict have no ordered access, so seekrandom "
        "and scan are n/a for them.",
        "readrandom starts in a new process after close, with every file of the store "
        "fsynced and dropped from the page cache (POSIX_FADV_DONTNEED): the first reads go to "
        "the disk. The data set is small against RAM, so the OS cache warms during the run; "
        "readhot, readmissing, seekrandom and scan follow in the same process.",
        "Peak RSS is the kernel's high-water mark (VmHWM) for the subprocess during that "
        "workload, reset through /proc/self/clear_refs before each workload; it includes the "
        f"harness's own data (the key buffer alone is {m.get('keys', 0) * 16 / MiB:.0f} MiB) "
        "and the Python interpreter. The JSON also has getrusage's ru_maxrss, which cannot be "
        "reset and never reads below the runner's RSS at fork time.",
        "Write amplification (ShaleDB) = (WAL + flush + compaction bytes written) / user key "
        "and value bytes, counted from the engine's stats() at the end of the workload "
        "(compaction still pending then is not counted).",
    ]
    for s in stores:
        rww = res[s].get("readwhilewriting") or {}
        alone = _ops(res[s].get("fillrandom"))
        w = rww.get("writer_ops_per_sec")
        if w and alone and w < 0.1 * alone:
            notes.append(
                f"In readwhilewriting the {s} writer thread managed only {w:,.0f} puts/s "
                f"against {alone:,.0f} alone in fillrandom (writer p99 "
                f"{(rww.get('writer_latency_us') or {}).get('p99', '?')} us) while "
                f"{rww.get('readers', '?')} reader threads ran. One sample on a shared "
                f"machine: confirm with `python -m bench --stores {s} --workloads "
                "readwhilewriting` before drawing conclusions.")
    mapped = [x for x in stores if x.startswith("shaledb") or x in ("lmdb", "plyvel")]
    if mapped:
        notes.append(f"RSS of {', '.join(mapped)} counts the pages of memory-mapped files "
                     "that the process touched (LMDB maps its data file; LevelDB, and ShaleDB "
                     "with its default `mmap_reads`, read their tables through mmap): they are "
                     "shared with the OS page cache and reclaimable, unlike heap memory "
                     "(`sampled_anon_rss_max_bytes` in the JSON leaves them out).")
    errs = []
    for s, ge in data.get("errors", {}).items():
        for g, e in ge.items():
            errs.append(f"{s} / {g}: {e}")
    for s in stores:
        for w, r in res[s].items():
            if r.get("error") and "ops_per_sec" in r:
                errs.append(f"{s} / {w}: {r['error']}")
    if errs:
        notes.append("Errors in this run: " + "; ".join(errs) + ".")
    return notes


def server_section(data: dict[str, Any] | None) -> list[str]:
    """The markdown of the server benchmark (``make bench-server``)."""
    md = ["## Server (ShaleDB against Redis over the network)", ""]
    if data is None or not data.get("results"):
        return md + ["No server run yet: `make bench-server`.", ""]
    m = data["meta"]
    md += [f"`{m.get('command')}` on {m.get('date')} ({m.get('cpu')}, {m.get('cores')} cores, "
           f"Python {m.get('python')}, ShaleDB {m.get('shaledb_commit')}, "
           f"{m.get('redis_server')}). redis-benchmark (`{m.get('redis_benchmark')}`) on "
           f"loopback: {m.get('clients')} clients, {m.get('value_size')}-byte values, random "
           f"keys from {m.get('keyspace'):,}, one request per round trip (pipeline 1) and "
           "pipelines of 16. Redis runs with AOF, ShaleDB with its WAL, both with the same "
           f"`appendfsync` ({m.get('durability')}). Medians of {m.get('repeat')} runs, the "
           "two servers alternating, so both see the same drift of the shared machine.", ""]
    rows = [[r["test"], str(r["pipeline"]), r.get("appendfsync", "everysec"),
             f"{r.get('requests', m.get('requests')):,}", fmt_rate(r["shaledb"]),
             fmt_rate(r["redis"]), f"{r['ratio']:.2f}x",
             " / ".join(fmt_rate(x) for x in r.get("shaledb_runs", []))]
            for r in data["results"]]
    md += [_table(["test", "pipeline", "appendfsync", "requests", "ShaleDB req/s",
                   "Redis req/s", "ShaleDB / Redis", "ShaleDB runs"], rows, md=True), ""]
    return md


def write_docs(suite_json: Path | None, scale_json: Path | None, docs_dir: Path,
               server_json: Path | None = ROOT / "bench-results" / "server.json") -> Path:
    """Regenerate ``benchmarks.md`` and ``benchmarks/*.png`` under ``docs_dir``."""
    suite = _load(suite_json)
    scale = _load(scale_json)
    server = _load(server_json)
    docs_dir.mkdir(parents=True, exist_ok=True)
    img = docs_dir / "benchmarks"
    img.mkdir(parents=True, exist_ok=True)
    md: list[str] = ["# Benchmarks", ""]
    md.append("Generated by `python -m bench` (`make bench`; the scale section by "
              "`make bench-large`, the server section by `make bench-server`) on "
              f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')}; "
              "do not edit by hand. The harness is in `bench/` (see `python -m bench --help`); "
              "the raw numbers are in `bench-results/latest.json`, "
              "`bench-results/scale.json` and (`make bench-server`) "
              "`bench-results/server.json`.")
    md.append("")
    if suite is None:
        md += ["No suite results yet: run `make bench`.", ""]
    else:
        m = suite["meta"]
        md += ["## Machine", ""] + _machine_md(m) + [""]
        md += ["## Stores and durability", "",
               "Every workload runs in **process-crash** mode (a write is in the OS when the "
               "call returns: it survives a crash of the process, not a power loss) except "
               "`fillsync` and `fillsync8`, which run in **power-loss** mode (fsync per "
               "commit). What each store does in each mode:", "",
               "| store | version | process-crash mode | power-loss mode | settings |",
               "|---|---|---|---|---|"]
        for s, info in m["stores"].items():
            md.append(f"| {s} | {info['version']} | {info['durability']['process-crash']} | "
                      f"{info['durability']['power-loss']} | {info['settings']} |")
        for s, why in m.get("skipped", {}).items():
            md.append(f"| {s} | - | skipped: {why} | | |")
        md.append("")
        p = m["params"]
        md += ["## Workloads", "",
               f"{m['keys']:,} random 16-byte keys, {m['value_size']}-byte random "
               "(incompressible) values. Each group of workloads runs in its own subprocess "
               "and a fresh directory: fillseq | fillrandom, overwrite | fillbatch | "
               "readrandom, readhot, readmissing, seekrandom, scan (on the fillbatch data) | "
               "readwhilewriting, deleterandom (same data) | fillsync | fillsync8.", ""]
        counts = {"fillseq": m["keys"], "fillrandom": m["keys"], "fillbatch": m["keys"],
                  "overwrite": p["overwrite_ops"], "readrandom": p["reads"],
                  "readhot": p["reads"], "readmissing": p["reads"], "seekrandom": p["seeks"],
                  "scan": m["keys"], "deleterandom": p["deletes"], "fillsync": p["sync_ops"],
                  "fillsync8": p["sync_ops"]}
        for w, desc in m["workload_descriptions"].items():
            c = counts.get(w)
            extra = f" ({c:,} ops)" if c else ""
            if w == "readhot":
                extra = f" ({c:,} gets over {p['hot_keys']:,} keys)"
            if w == "readwhilewriting":
                extra = (f" ({p['rww_readers']} readers, {p['rww_seconds']:g} s; ops/s = the "
                         "readers' gets)")
            md.append(f"- `{w}`: {desc}{extra}.")
        md.append("")
        md += ["## Throughput", "", "Operations per second (scan: entries per second; "
               "seekrandom: seeks, each followed by 10 nexts). Higher is better. n/a: the "
               "store has no ordered access.", ""]
        h, rows = ops_rows(suite)
        md += [_table(h, rows, md=True), ""]
        h, rows = ratio_rows(suite)
        if rows:
            md += ["ShaleDB's rate divided by each peer's (above 1: ShaleDB is faster):", "",
                   _table(h, rows, md=True), ""]
        h, rows = variant_rows(suite, "shaledb-pure", "compiled / pure")
        if rows:
            md += ["What the compiled build buys (issue 14; docs/design.md, \"Compiled "
                   "build\"): ShaleDB compiled with mypyc against the same source run as pure "
                   "Python (`SHALEDB_PURE_PYTHON=1`) in the same run.", "",
                   _table(h, rows, md=True), ""]
        h, rows = variant_rows(suite, "shaledb-enc", "plain / encrypted")
        if rows:
            md += ["The cost of encryption at rest: ShaleDB with `encryption_key` (AES-256-GCM "
                   "on every WAL record, manifest edit and table block) against plain ShaleDB "
                   "in the same run; the factor is plain ops/s / encrypted ops/s (below 1: "
                   "noise in the encrypted store's favour). readrandom is the cold "
                   "random read (new process, page cache dropped).", "",
                   _table(h, rows, md=True), ""]
        if _have_matplotlib():
            plot_ops(suite, img / "ops_by_store.png")
            md += ["![ops/s by store per workload](benchmarks/ops_by_store.png)", ""]
            if plot_ratios(suite, img / "ratio.png"):
                md += ["![ShaleDB / peer ratios](benchmarks/ratio.png)", ""]
        else:
            md += ["(Plots skipped: matplotlib is not installed.)", ""]
        stores = _stores(suite)
        md += ["## Latency", "", "Microseconds per operation, p50 / p99 / p99.9, from "
               "`perf_counter_ns` around a sample of the operations (every 8th; every one "
               "for the sync and multi-threaded workloads). fillbatch: per batch of 1000. "
               "readwhilewriting: the readers' gets.", ""]
        rows = [[w, *(_lat(suite["results"][s].get(w)) for s in stores)]
                for w in LATENCY_WORKLOADS if w in _workloads(suite)]
        md += [_table(["workload", *stores], rows, md=True), ""]
        if "readwhilewriting" in _workloads(suite):
            rows = []
            for s in stores:
                r = suite["results"][s].get("readwhilewriting") or {}
                if "writer_ops_per_sec" in r:
                    rows.append([s, fmt_rate(r["ops_per_sec"]), fmt_rate(r["writer_ops_per_sec"]),
                                 _lat({"latency_us": r.get("writer_latency_us"),
                                       "ops_per_sec": 1})])
            if rows:
                md += ["readwhilewriting in detail:", "",
                       _table(["store", "reader gets/s", "writer puts/s",
                               "writer p50/p99/p99.9 us"], rows, md=True), ""]
        md += ["## Memory and disk", "",
               "Peak RSS of the subprocess during the workload (\"RSS before open\": the "
               "interpreter, the libraries and the harness's data, before the store is opened), "
               "and the allocated size of the store's directory: right after the workload (an "
               "LSM store may be mid-compaction then, holding inputs and outputs at once) and "
               "after the store was closed at the end of the workload's group (raw key + value "
               f"bytes: {fmt_bytes(m['keys'] * (16 + m['value_size']))}).", ""]
        mem_w = [w for w in ("fillrandom", "overwrite", "fillbatch", "readrandom", "scan")
                 if w in _workloads(suite)]
        rows = []
        for s in stores:
            g = (suite.get("groups", {}).get(s) or {})
            base = (g.get("fillrandom") or g.get("fillbatch") or {}).get("baseline_rss_bytes")
            row = [s, fmt_bytes(base)]
            for w in mem_w:
                r = suite["results"][s].get(w) or {}
                row.append(fmt_bytes(r.get("peak_rss_bytes")) if "ops_per_sec" in r
                           else ("n/a" if "skipped" in r else "-"))
            for w, group in (("overwrite", "fillrandom"), ("fillbatch", "fillbatch")):
                r = suite["results"][s].get(w) or {}
                row.append(fmt_bytes(r.get("disk_bytes")) if "disk_bytes" in r else "-")
                closed = (g.get(group) or {}).get("final_disk_bytes")
                row.append(fmt_bytes(closed) if closed else "-")
            rows.append(row)
        md += [_table(["store", "RSS before open", *(f"RSS {w}" for w in mem_w),
                       "disk after overwrite", "closed", "disk after fillbatch", "closed"],
                      rows, md=True), ""]
        if "shaledb" in stores:
            rows = []
            for w in _workloads(suite):
                r = suite["results"]["shaledb"].get(w) or {}
                if "engine" in r and r.get("user_writes"):
                    e = r["engine"]
                    rows.append([w, f"{r.get('write_amp', 0):.2f}",
                                 _count_secs(e, "write_stalls", "stall_ms"),
                                 _count_secs(e, "write_slowdowns", "slowdown_ms"),
                                 str(r.get("l0_files_max", "-")),
                                 str(e.get("flushes")), str(e.get("compactions")),
                                 " ".join(map(str, r.get("levels", [])))])
            if rows:
                md += ["## ShaleDB engine counters", "",
                       "From `db.stats()` before and after each writing workload.", "",
                       _table(["workload", "write amp", "stalls (s)", "slowdowns (s)",
                               "L0 files max", "flushes", "compactions",
                               "files per level after"], rows, md=True), ""]
    md += ["## Scale (ShaleDB against data-set size)", ""]
    if scale is None or not scale.get("results"):
        md += ["No scale run yet: `make bench-large` (1M, 5M and 20M keys, ShaleDB only; "
               "unattended, about an hour on 2 cores).", ""]
    else:
        sm = scale["meta"]
        md.append(f"`{sm.get('command')}` on {sm.get('date')} ({sm.get('cpu')}, "
                  f"{sm.get('cores')} cores, {fmt_bytes(sm.get('ram_bytes'))} RAM, "
                  f"{sm.get('python')}). Each size: a fresh directory, a fill "
                  f"({sm.get('fill')}), waiting for compaction to catch up (catch-up s), close, "
                  f"page cache dropped, reopen, {sm.get('reads', 0):,} random reads. "
                  f"{sm.get('value_size')}-byte values. \"stalls\" and \"slowdowns\" "
                  "are the engine's counters with their total time in seconds (waits for L0 "
                  "to drain below l0_stop_trigger or for a memtable flush, and throttling "
                  "sleeps from l0_slowdown_trigger on); "
                  "\"slowest write\" is the longest single fill call (a batch of 1000, or a "
                  "put), so the longest stall.")
        md.append("")
        h, rows = scale_rows(scale)
        md += [_table(h, rows, md=True), ""]
        b = sm.get("shaledb_memory_budget_bytes")
        if b:
            md += [f"ShaleDB's memory budget is 2 x memtable_size + block_cache_size = "
                   f"{fmt_bytes(b)}; \"RSS over start\" is the largest RSS during the fill and "
                   "the reads minus the RSS before the store was opened (which holds the "
                   "harness's key buffer, 16 bytes per key); it counts the pages of the "
                   "tables ShaleDB reads through read-only maps (`mmap_reads`, the default), "
                   "which are the OS page cache, shared and reclaimable. \"heap RSS over "
                   "start\" leaves them out (resident pages not backed by a file, sampled "
                   "every 0.2 s): the memory the budget bounds.", ""]
        if _have_matplotlib() and plot_scale(scale, img / "scale.png"):
            md += ["![ShaleDB throughput and RSS against data-set size](benchmarks/scale.png)",
                   ""]
    md += server_section(server)
    if suite is not None:
        md += ["## Notes", ""] + [f"- {n}" for n in _notes(suite)] + [""]
    out = docs_dir / "benchmarks.md"
    out.write_text("\n".join(md))
    return out


if __name__ == "__main__":  # pragma: no cover - debugging aid
    t0 = time.perf_counter()
    print(write_docs(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None,
                     Path(sys.argv[3]) if len(sys.argv) > 3 else ROOT / "docs"))
    print(f"{time.perf_counter() - t0:.2f} s")
