"""Subprocess entry point: ``python -m bench.worker SPEC.json`` runs one group of workloads on
one store and writes its results to the ``out`` path named in the spec.

Per workload it records, besides the workload's own numbers: the peak RSS of this process
during the workload (the kernel's high-water mark VmHWM, reset through ``/proc/self/clear_refs``
before each workload; ``ru_maxrss`` is recorded too, see :func:`peak_rss_bytes`), the
largest RSS seen by a 0.2 s sampler, the size of the store's directory afterwards, and for
ShaleDB the engine counters (write amplification, write stalls, largest number of L0 tables).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
import traceback
from typing import Any

from .stores import STORES, Store
from .workloads import WORKLOAD_FUNCS, Dataset

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def anon_rss_bytes() -> int:
    """Resident pages not backed by a file (the heap): RSS minus the pages of mapped files,
    which are the OS page cache (a store reading its files through mmap touches them)."""
    with open("/proc/self/statm", "rb") as f:
        fields = f.read().split()
    return (int(fields[1]) - int(fields[2])) * PAGE


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak RSS: VmHWM (which /proc/self/clear_refs resets), else ru_maxrss.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is also recorded (``ru_maxrss_bytes``), but it never
    drops below the RSS of the parent at the moment it forked this process (the kernel keeps
    the pre-exec high-water mark), so for a small worker it reports the runner's size."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return ru_maxrss_bytes()


def ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def disk_usage(path: str) -> dict[str, int]:
    """Allocated bytes (what du counts), apparent bytes (sum of sizes) and file count."""
    apparent = allocated = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return {"disk_bytes": allocated, "disk_apparent_bytes": apparent, "disk_files": files}


def drop_page_cache(path: str) -> int:
    """fsync then POSIX_FADV_DONTNEED every file under ``path``; returns the bytes dropped."""
    dropped = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            fn = os.path.join(root, name)
            try:
                fd = os.open(fn, os.O_RDONLY)
            except OSError:
                continue
            try:
                try:
                    os.fsync(fd)
                except OSError:
                    pass
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                dropped += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return dropped


class Sampler:
    """Background sampling of RSS (every 0.2 s) and of the store's L0 table count (1 s)."""

    def __init__(self, store: Store | None, period: float = 0.2, probe_every: int = 5) -> None:
        self.store = store
        self.period = period
        self.probe_every = probe_every
        self._stop = threading.Event()
        self.rss_max = 0
        self.anon_rss_max = 0
        self.l0_max: int | None = None
        self.timeline: list[tuple[float, int, int | None]] = []
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self.rss_max = rss_bytes()
        self.anon_rss_max = anon_rss_bytes()
        self._t0 = time.perf_counter()
        self._t.start()
        return self

    def _probe(self) -> int | None:
        if self.store is None:
            return None
        try:
            l0 = self.store.l0_files()
        except Exception:  # noqa: BLE001 - the store may be closing
            return None
        if l0 is not None:
            self.l0_max = l0 if self.l0_max is None else max(self.l0_max, l0)
        return l0

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(self.period):
            rss = rss_bytes()
            self.rss_max = max(self.rss_max, rss)
            self.anon_rss_max = max(self.anon_rss_max, anon_rss_bytes())
            l0 = self._probe() if k % self.probe_every == 0 else None
            k += 1
            if k % 5 == 0 or l0 is not None:
                self.timeline.append((round(time.perf_counter() - self._t0, 2), rss, l0))

    def stop(self) -> None:
        self._stop.set()
        self._t.join()
        self.rss_max = max(self.rss_max, rss_bytes())
        self.anon_rss_max = max(self.anon_rss_max, anon_rss_bytes())
        self._probe()


def _engine_counters(st: dict[str, Any] | None) -> dict[str, Any]:
    if not st:
        return {}
    keys = ("wal_bytes_written", "flush_bytes_written", "compaction_bytes_written",
            "write_stalls", "write_slowdowns", "stall_ms", "slowdown_ms", "flushes",
            "compactions", "trivial_moves")
    return {k: int(st.get(k, 0) or 0) for k in keys}


def engine_delta(before: dict[str, Any], after_st: dict[str, Any] | None,
                 user_bytes: int) -> dict[str, Any]:
    after = _engine_counters(after_st)
    if not after:
        return {}
    d = {k: after[k] - before.get(k, 0) for k in after}
    written = d["wal_bytes_written"] + d["flush_bytes_written"] + d["compaction_bytes_written"]
    out: dict[str, Any] = {"engine": d}
    if user_bytes:
        out["write_amp"] = round(written / user_bytes, 3)
    assert after_st is not None
    out["levels"] = [lv.get("files", 0) for lv in after_st.get("levels", [])]
    return out


def settle(store: Store, timeout: float = 120.0) -> float:
    """Wait (untimed) until the LSM's background flushes/compactions go idle."""
    t0 = time.perf_counter()
    last = None
    quiet = 0
    while time.perf_counter() - t0 < timeout:
        st = store.stats()
        if not st:
            return 0.0
        sig = (st.get("flushes"), st.get("compactions"), st.get("trivial_moves"))
        busy = st.get("immutable_memtables", 0) or any(
            lv.get("score", 0) >= 1 for lv in st.get("levels", []))
        quiet = quiet + 1 if (sig == last and not busy) else 0
        if quiet >= 3:
            break
        last = sig
        time.sleep(0.5)
    return time.perf_counter() - t0


def run(spec: dict[str, Any]) -> dict[str, Any]:
    store_cls = STORES[spec["store"]]
    params = spec["params"]
    path = spec["path"]
    out: dict[str, Any] = {"store": spec["store"], "group": spec["group"], "workloads": {},
                           "pid": os.getpid()}
    t0 = time.perf_counter()
    data = Dataset(spec["keys"], spec["value_size"], spec["seed"])
    for w in spec["workloads"]:  # precompute the index streams outside the timed loops
        if w in ("readrandom", "readhot", "overwrite", "seekrandom"):
            count = {"readrandom": params["reads"], "readhot": params["reads"],
                     "overwrite": params["overwrite_ops"], "seekrandom": params["seeks"]}[w]
            bound = params["hot_keys"] if w == "readhot" else data.n
            data.stream(w, count, bound)
        if w in ("readmissing", "readwhilewriting"):
            data.missing_keys(params["reads"])
    out["setup_seconds"] = round(time.perf_counter() - t0, 3)
    out["baseline_rss_bytes"] = rss_bytes()
    if spec.get("drop_cache"):
        out["page_cache_dropped_bytes"] = drop_page_cache(path)

    store = store_cls({**spec.get("store_cfg", {}), "keys": spec["keys"],
                       "value_size": spec["value_size"]})
    reset_peak_rss()
    t0 = time.perf_counter()
    store.open(path, spec["mode"])
    out["open_seconds"] = round(time.perf_counter() - t0, 4)
    out["rss_after_open_bytes"] = rss_bytes()
    group_start = _engine_counters(store.stats())
    group_user_bytes = 0
    try:
        for w in spec["workloads"]:
            print(f"[{spec['store']}] {w} ...", file=sys.stderr, flush=True)
            before = _engine_counters(store.stats())
            scoped = reset_peak_rss()
            sampler = Sampler(store).start()
            try:
                res = WORKLOAD_FUNCS[w](store, data, params)
            except Exception as exc:  # noqa: BLE001 - recorded, and the group stops
                sampler.stop()
                out["workloads"][w] = {"error": f"{type(exc).__name__}: {exc}",
                                       "traceback": traceback.format_exc()}
                out["error"] = f"{w}: {type(exc).__name__}: {exc}"
                print(f"[{spec['store']}] {w}: FAILED {out['error']}", file=sys.stderr,
                      flush=True)
                break
            sampler.stop()
            res["peak_rss_bytes"] = peak_rss_bytes()
            res["ru_maxrss_bytes"] = ru_maxrss_bytes()
            res["peak_rss_scope"] = "workload" if scoped else "process"
            res["sampled_rss_max_bytes"] = sampler.rss_max
            res["sampled_anon_rss_max_bytes"] = sampler.anon_rss_max
            if sampler.l0_max is not None:
                res["l0_files_max"] = sampler.l0_max
            writes = res.get("user_writes", 0) * data.record_bytes
            group_user_bytes += writes
            res.update(engine_delta(before, store.stats(), writes))
            res.update(disk_usage(path))
            res["mode"] = spec["mode"]
            out["workloads"][w] = res
            line = f"[{spec['store']}] {w}: {res['ops_per_sec']:,.0f} ops/s"
            if res.get("error"):
                line += f"  ERROR: {res['error']}"
            print(line, file=sys.stderr, flush=True)
        if store.stats() is not None and group_user_bytes and "error" not in out:
            out["settle_seconds"] = round(settle(store), 2)
            out.update({f"group_{k}": v for k, v in
                        engine_delta(group_start, store.stats(), group_user_bytes).items()})
    finally:
        t0 = time.perf_counter()
        store.close()
        out["close_seconds"] = round(time.perf_counter() - t0, 4)
    out.update({f"final_{k}": v for k, v in disk_usage(path).items()})
    out["process_peak_rss_bytes"] = peak_rss_bytes()
    return out


def run_scale(spec: dict[str, Any]) -> dict[str, Any]:
    """One size of the scale run: fill, let compaction catch up, close, drop the page cache,
    reopen, random reads; with RSS, L0 and stall figures throughout."""
    from .workloads import fillbatch, fillrandom, readrandom

    store_cls = STORES[spec["store"]]
    params = spec["params"]
    path = spec["path"]
    n = spec["keys"]
    out: dict[str, Any] = {"store": spec["store"], "group": "scale", "keys": n,
                           "value_size": spec["value_size"], "fill": spec["fill"]}
    t0 = time.perf_counter()
    data = Dataset(n, spec["value_size"], spec["seed"])
    data.stream("readrandom", params["reads"], n)
    out["setup_seconds"] = round(time.perf_counter() - t0, 3)
    out["baseline_rss_bytes"] = base = rss_bytes()
    out["baseline_anon_rss_bytes"] = anon_base = anon_rss_bytes()
    store = store_cls({**spec.get("store_cfg", {}), "keys": n,
                       "value_size": spec["value_size"]})
    reset_peak_rss()
    store.open(path, spec["mode"])
    print(f"[{spec['store']} scale {n:,}] fill ({spec['fill']}) ...", file=sys.stderr,
          flush=True)
    sampler = Sampler(store).start()
    fill = fillbatch if spec["fill"] == "batch" else fillrandom
    res = fill(store, data, params)
    st = store.stats()
    t1 = time.perf_counter()
    settle_s = settle(store, timeout=600.0) if st is not None else 0.0
    sampler.stop()
    out["fill"] = {
        "ops_per_sec": res["ops_per_sec"], "seconds": res["seconds"],
        "mb_per_sec": res["mb_per_sec"], "latency_us": res.get("latency_us", {}),
        "compaction_catchup_seconds": round(settle_s, 2),
        "peak_rss_bytes": peak_rss_bytes(), "sampled_rss_max_bytes": sampler.rss_max,
        "sampled_anon_rss_max_bytes": sampler.anon_rss_max, "l0_files_max": sampler.l0_max,
    }
    out["fill"].update(engine_delta({}, store.stats(), n * data.record_bytes))
    if st is not None:
        out["fill"]["stats_at_end_of_fill"] = {
            k: st.get(k) for k in ("write_stalls", "write_slowdowns", "stall_ms", "slowdown_ms",
                                   "flushes", "compactions", "immutable_memtables",
                                   "memtable_bytes")}
        out["fill"]["levels_at_end_of_fill"] = [lv.get("files") for lv in st.get("levels", [])]
        out["fill"]["settle_wall_seconds"] = round(time.perf_counter() - t1, 2)
    out["timeline"] = sampler.timeline
    store.close()
    out.update(disk_usage(path))
    out["page_cache_dropped_bytes"] = drop_page_cache(path)
    print(f"[{spec['store']} scale {n:,}] readrandom ...", file=sys.stderr, flush=True)
    reset_peak_rss()
    t0 = time.perf_counter()
    store.open(path, spec["mode"])
    out["open_seconds"] = round(time.perf_counter() - t0, 4)
    sampler = Sampler(store).start()
    r = readrandom(store, data, params)
    sampler.stop()
    cache = (store.stats() or {}).get("block_cache", {})
    store.close()
    out["readrandom"] = {
        "ops_per_sec": r["ops_per_sec"], "ops": r["ops"], "latency_us": r.get("latency_us", {}),
        "error": r.get("error"), "peak_rss_bytes": peak_rss_bytes(),
        "sampled_rss_max_bytes": sampler.rss_max,
        "sampled_anon_rss_max_bytes": sampler.anon_rss_max, "block_cache": cache,
    }
    out["rss_over_baseline_max_bytes"] = max(out["fill"]["sampled_rss_max_bytes"],
                                             out["readrandom"]["sampled_rss_max_bytes"],
                                             out["fill"]["peak_rss_bytes"],
                                             out["readrandom"]["peak_rss_bytes"]) - base
    # Sampled (every 0.2 s), so it can miss a short peak that VmHWM would catch.
    out["anon_rss_over_baseline_max_bytes"] = max(
        out["fill"]["sampled_anon_rss_max_bytes"],
        out["readrandom"]["sampled_anon_rss_max_bytes"]) - anon_base
    if r.get("error"):
        out["error"] = f"readrandom: {r['error']}"
    return out


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        result = run_scale(spec) if spec.get("kind") == "scale" else run(spec)
        rc = 1 if result.get("error") else 0
    except Exception as exc:  # noqa: BLE001 - the parent reads the error from the file
        result = {"store": spec["store"], "group": spec["group"],
                  "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        rc = 1
    tmp = spec["out"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, spec["out"])
    sys.exit(rc)


if __name__ == "__main__":
    main()
