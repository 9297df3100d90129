"""Prometheus metrics and the health status of a server, as text.

:func:`exposition` renders the Prometheus text format (version 0.0.4): a ``# HELP`` and a
``# TYPE`` line per metric family, then its samples. Counters end in ``_total``; the command
latency histogram reuses the buckets of :mod:`shaledb.server.admin.stats`, every second bound
(powers of two microseconds, 28 buckets) to keep the page small -- cumulative counts at a subset of
the bounds are still exact. Engine metrics come from one ``db.stats()`` call per scrape.

:func:`health` is what ``GET /health`` answers: 200 while the engine accepts writes, 503 once
it refuses them (a background I/O error, or a read-only database; ``db.stats()["read_only"]``
and ``["background_error"]``), and 503 ``degraded`` while the last completed scrub pass found
damage or failed, or the scrub thread died (:meth:`ScrubStatus.health_reason`); notices of a
pass do not degrade it; and 503 ``degraded`` while the last backup failed
(:meth:`~shaledb.server.exec.backups.BackupStatus.health_reason`: until one succeeds) or the
WAL archive is failing (its last attempt failed). ``reason`` names every cause.
"""

from __future__ import annotations

import json
import resource
import time
from typing import TYPE_CHECKING, Any, Final

import shaledb

from ..keyspace.scrub import RESULTS, ScrubStatus
from .info import REDIS_VERSION, rss_bytes
from .stats import BUCKET_BOUNDS_NS

if TYPE_CHECKING:
    from ..exec.context import Services

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Indexes into BUCKET_BOUNDS_NS exported as ``le`` buckets (1, 2, 4, ... us).
_EXPORTED_BUCKETS: Final = tuple(range(0, len(BUCKET_BOUNDS_NS), 2))


def escape_label(value: str) -> str:
    """A label value escaped as the text format requires."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Page:
    """Collects metric families in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: list[tuple[str, dict[str, str], float]]) -> None:
        """One family: ``samples`` are (suffix, labels, value)."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            label_text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            braces = f"{{{label_text}}}" if label_text else ""
            self.lines.append(f"{name}{suffix}{braces} {_number(value)}")

    def simple(self, name: str, kind: str, help_text: str, value: float) -> None:
        """A family of one unlabelled sample."""
        self.family(name, kind, help_text, [("", {}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _command_families(page: _Page, server: Services) -> None:
    commands = sorted(server.command_stats.commands.items())
    page.family("shaledb_commands_total", "counter", "Commands run, by command.",
                [("", {"cmd": n}, c.calls) for n, c in commands])
    page.family("shaledb_commands_rejected_total", "counter",
                "Commands refused before running (arity, authentication, ACL), by command.",
                [("", {"cmd": n}, c.rejected) for n, c in commands])
    page.family("shaledb_commands_failed_total", "counter",
                "Commands that ran and answered an error, by command.",
                [("", {"cmd": n}, c.failed) for n, c in commands])
    samples: list[tuple[str, dict[str, str], float]] = []
    for name, c in commands:
        cumulative = 0
        done = 0
        for i in _EXPORTED_BUCKETS:
            cumulative += sum(c.buckets[done:i + 1])
            done = i + 1
            samples.append(("_bucket", {"cmd": name, "le": repr(BUCKET_BOUNDS_NS[i] / 1e9)},
                            cumulative))
        samples.append(("_bucket", {"cmd": name, "le": "+Inf"}, c.calls))
        samples.append(("_sum", {"cmd": name}, c.nanos / 1e9))
        samples.append(("_count", {"cmd": name}, c.calls))
    page.family("shaledb_command_duration_seconds", "histogram",
                "Time commands took to run, by command.", samples)
    page.family("shaledb_error_replies_total", "counter", "Error replies, by error prefix.",
                [("", {"prefix": p}, n) for p, n in sorted(server.command_stats.errors.items())])


def _engine_families(page: _Page, engine: dict[str, Any]) -> None:
    levels = engine["levels"]
    cache = engine["block_cache"]
    lookups = cache["hits"] + cache["misses"]
    gauges = [
        ("memtable_bytes", "Bytes in the active memtable.", engine["memtable_bytes"]),
        ("memtable_entries", "Entries in the active memtable.", engine["memtable_entries"]),
        ("immutable_memtables", "Memtables waiting to be flushed.",
         engine["immutable_memtables"]),
        ("table_bytes", "Bytes of all live sorted tables.", engine["total_table_bytes"]),
        ("open_tables", "Sorted tables held open.", engine["open_tables"]),
        ("wal_bytes", "Bytes of the current WAL segment.", engine["wal_bytes"]),
        ("block_cache_bytes", "Bytes of cached blocks.", cache["bytes"]),
        ("block_cache_pinned_bytes", "Bytes of filters and indexes charged to the cache.",
         cache["pinned_bytes"]),
        ("block_cache_capacity_bytes", "The block cache's byte budget.", cache["capacity"]),
        ("block_cache_hit_ratio", "Block cache hits / lookups since open.",
         cache["hits"] / lookups if lookups else 0.0),
        ("live_snapshots", "Open snapshots.", engine["live_snapshots"]),
        ("read_only", "1 when the engine refuses writes (read-only or background error).",
         int(engine["read_only"])),
    ]
    for name, help_text, value in gauges:
        page.simple(f"shaledb_engine_{name}", "gauge", help_text, value)
    page.family("shaledb_engine_level_tables", "gauge", "Sorted tables per level.",
                [("", {"level": str(lv["level"])}, lv["files"]) for lv in levels])
    page.family("shaledb_engine_level_bytes", "gauge", "Bytes of sorted tables per level.",
                [("", {"level": str(lv["level"])}, lv["bytes"]) for lv in levels])
    counters = [
        ("flushes", "Memtable flushes.", engine["flushes"]),
        ("compactions", "Compactions (trivial moves included).", engine["compactions"]),
        ("compaction_read_bytes", "Bytes read by compactions.",
         engine["compaction_bytes_read"]),
        ("compaction_written_bytes", "Bytes written by compactions.",
         engine["compaction_bytes_written"]),
        ("flush_written_bytes", "Bytes written by flushes.", engine["flush_bytes_written"]),
        ("wal_written_bytes", "Bytes appended to the WAL.", engine["wal_bytes_written"]),
        ("wal_syncs", "WAL fsyncs.", engine["wal_syncs"]),
        ("write_groups", "Group commits (WAL records of one or more writes).",
         engine["group_commits"]),
        ("write_slowdowns", "Writes delayed by the L0 slowdown trigger.",
         engine["write_slowdowns"]),
        ("write_stalls", "Writes stopped until background work caught up.",
         engine["write_stalls"]),
        ("block_cache_hits", "Block cache hits.", cache["hits"]),
        ("block_cache_misses", "Block cache misses.", cache["misses"]),
        ("compaction_read_errors", "Compactions retried after a read error.",
         engine["compaction_read_errors"]),
        ("descriptor_shortages", "Files the engine could not open or map for lack of file "
         "descriptors (EMFILE/ENFILE): one write failed (TRYAGAIN) or a flush or compaction "
         "was retried.", engine["descriptor_shortages"]),
    ]
    for name, help_text, value in counters:
        page.simple(f"shaledb_engine_{name}_total", "counter", help_text, value)
    page.simple("shaledb_engine_slowdown_seconds_total", "counter",
                "Time writers spent slowed down.", engine["slowdown_ms"] / 1000)
    page.simple("shaledb_engine_stall_seconds_total", "counter",
                "Time writers spent stalled.", engine["stall_ms"] / 1000)


def _scrub_families(page: _Page, scrub: ScrubStatus) -> None:
    last = scrub.last
    page.simple("shaledb_scrub_enabled", "gauge",
                "1 when scrub passes are scheduled (scrub-interval > 0).", int(scrub.enabled))
    page.simple("shaledb_scrub_in_progress", "gauge", "1 while a scrub pass runs.",
                int(scrub.in_progress))
    page.family("shaledb_scrub_passes_total", "counter",
                "Scrub passes, by result (ok, damaged, error, stopped early).",
                [("", {"result": r}, scrub.passes[r]) for r in RESULTS])
    page.simple("shaledb_scrub_read_bytes_total", "counter", "Bytes read by scrub passes.",
                scrub.bytes_read)
    page.simple("shaledb_scrub_damage_found_total", "counter",
                "Damage found by scrub passes (problems, summed over passes).",
                scrub.damage_found)
    page.simple("shaledb_scrub_last_damage", "gauge",
                "Damage found by the last completed scrub pass (problems).",
                last.damage if last is not None else 0)
    page.simple("shaledb_scrub_last_notices", "gauge",
                "Notices of the last completed scrub pass (files in lost/ ...).",
                last.notices if last is not None else 0)
    page.simple("shaledb_scrub_last_failed", "gauge",
                "1 when the last scrub pass could not run to the end (an error).",
                int(last is not None and last.status == "error"))
    page.simple("shaledb_scrub_last_start_timestamp_seconds", "gauge",
                "Start of the last completed scrub pass, seconds since the epoch (0: none).",
                round(last.started, 3) if last is not None else 0)
    page.simple("shaledb_scrub_last_completion_timestamp_seconds", "gauge",
                "End of the last completed scrub pass, seconds since the epoch (0: none).",
                round(last.ended, 3) if last is not None else 0)
    page.simple("shaledb_scrub_last_duration_seconds", "gauge",
                "Length of the last completed scrub pass.",
                round(last.duration, 3) if last is not None else 0)
    page.simple("shaledb_scrub_last_bytes", "gauge", "Bytes read by the last completed pass.",
                last.bytes if last is not None else 0)


def _backup_families(page: _Page, server: Services, archive: dict[str, Any]) -> None:
    b = server.backups.status()
    last, ok = b.last, b.last_ok
    page.simple("shaledb_backup_configured", "gauge",
                "1 when a backup repository is configured (backup-repo).", int(b.configured))
    page.simple("shaledb_backup_in_progress", "gauge", "1 while a backup runs.",
                int(b.in_progress))
    page.family("shaledb_backups_total", "counter",
                "Backups since start (BGSAVE, SAVE, schedule) by result: ok, err (failed), "
                "stopped (by shutdown).",
                [("", {"result": r}, n) for r, n in b.results.items()])
    page.simple("shaledb_backup_failures_total", "counter", "Backups that failed.",
                b.results["err"])
    page.simple("shaledb_backup_last_failed", "gauge",
                "1 when the last backup failed (/health is degraded until one succeeds).",
                int(last is not None and last.status == "err"))
    page.simple("shaledb_backup_last_duration_seconds", "gauge",
                "Length of the last backup (successful or not).",
                0 if last is None else round(last.duration, 3))
    page.simple("shaledb_backup_last_success_timestamp_seconds", "gauge",
                "Time of the newest successful backup, seconds since the epoch (0: none).",
                0 if ok is None else round(ok.created_at.timestamp(), 3))
    page.simple("shaledb_backup_last_bytes", "gauge",
                "Bytes of the newest successful backup (all its files).",
                0 if ok is None else ok.bytes)
    page.simple("shaledb_backup_last_new_bytes", "gauge",
                "Bytes the newest successful backup added to the repository.",
                0 if ok is None else ok.new_bytes)
    page.simple("shaledb_backup_last_sequence", "gauge",
                "Last sequence number in the newest successful backup.",
                0 if ok is None else ok.sequence)
    page.simple("shaledb_wal_archive_segments_total", "counter",
                "WAL segments copied into the backup repository.", archive["archived"])
    page.simple("shaledb_wal_archive_errors_total", "counter",
                "Failed attempts to archive a WAL segment (each retried).", archive["errors"])
    page.simple("shaledb_wal_archive_waiting_segments", "gauge",
                "WAL segments waiting to be archived (kept on disk until then).",
                archive["waiting"])


def exposition(server: Services) -> str:
    """The Prometheus text page of ``server``."""
    page = _Page()
    st = server.stats
    ks = server.keyspace
    page.family("shaledb_info", "gauge", "Versions of this server (value 1).",
                [("", {"version": shaledb.__version__, "redis_version": REDIS_VERSION}, 1)])
    page.simple("shaledb_uptime_seconds", "gauge", "Seconds since the server started.",
                round(server.uptime, 3))
    page.simple("shaledb_connected_clients", "gauge", "Client connections open.",
                len(server.connections))
    page.simple("shaledb_connections_total", "counter", "Client connections accepted.",
                st["total_connections_received"])
    page.simple("shaledb_rejected_connections_total", "counter",
                "Connections refused (maxclients, protected mode, shutting down).",
                st["rejected_connections"])
    page.simple("shaledb_net_input_bytes_total", "counter", "Bytes read from clients.",
                st["total_net_input_bytes"])
    page.simple("shaledb_net_output_bytes_total", "counter", "Bytes of replies to clients.",
                st["total_net_output_bytes"])
    page.simple("shaledb_commands_processed_total", "counter", "Requests processed.",
                st["total_commands_processed"])
    page.simple("shaledb_keyspace_hits_total", "counter", "Key lookups that found the key.",
                ks.hits)
    page.simple("shaledb_keyspace_misses_total", "counter",
                "Key lookups that found no live key.", ks.misses)
    page.simple("shaledb_expired_keys_total", "counter", "Keys removed because they expired.",
                ks.expired_keys)
    page.simple("shaledb_slowlog_length", "gauge", "Entries in the slow log.",
                len(server.slowlog))
    _command_families(page, server)
    engine = server.db.stats()
    _engine_families(page, engine)
    _scrub_families(page, server.scrubber.status())
    _backup_families(page, server, engine["wal_archive"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    page.simple("process_cpu_seconds_total", "counter", "User and system CPU time.",
                usage.ru_utime + usage.ru_stime)
    page.simple("process_resident_memory_bytes", "gauge", "Resident memory size.",
                rss_bytes())
    page.simple("process_start_time_seconds", "gauge", "Start time, seconds since the epoch.",
                round(server.started, 3))
    return page.text()


def health(server: Services) -> tuple[int, bytes]:
    """``(HTTP status, JSON body)`` of ``GET /health``."""
    body: dict[str, Any] = {"status": "ok", "uptime_seconds": round(server.uptime, 3),
                            "role": server.replication.role, "version": shaledb.__version__}
    try:
        engine = server.db.stats()
    except shaledb.ShaleError as exc:  # closed while shutting down
        body.update(status="unavailable", reason=str(exc))
        return 503, json.dumps(body).encode()
    if engine["read_only"]:
        body["status"] = "read_only"
        body["reason"] = engine["background_error"] or "the database was opened read-only"
        return 503, json.dumps(body).encode()
    body["time"] = int(time.time())
    reasons: list[str] = []
    scrub = server.scrubber.status()
    reason = scrub.health_reason()
    if reason is not None:
        reasons.append(reason)
        last = scrub.last
        if last is not None:
            body["scrub"] = {"status": last.status, "started": int(last.started),
                             "damage": last.damage, "notices": last.notices,
                             "damaged_files": list(last.damaged_files),
                             "first_problem": last.first_problem, "error": last.error}
    backups = server.backups.status()
    reason = backups.health_reason()
    if reason is not None and backups.last is not None:
        reasons.append(reason)
        body["backup"] = {"status": backups.last.status, "trigger": backups.last.trigger,
                          "started": int(backups.last.started), "error": backups.last.error}
    archive = engine["wal_archive"]
    if archive["enabled"] and archive["last_error"]:
        # The engine keeps every segment it could not archive, and retries: the WAL grows
        # on disk, and a point-in-time restore cannot reach past the gap until it works.
        reasons.append(f"the WAL archive is failing ({archive['waiting']} segments wait on "
                       f"disk): {archive['last_error']}; fix the backup repository (space, "
                       f"permissions): the engine retries")
        body["wal_archive"] = {"waiting": archive["waiting"], "errors": archive["errors"],
                               "last_error": archive["last_error"]}
    reason = server.replication.health_reason()
    if reason is not None:
        reasons.append(reason)
    if reasons:
        body.update(status="degraded", reason="; ".join(reasons))
        return 503, json.dumps(body).encode()
    return 200, json.dumps(body).encode()


__all__ = ["CONTENT_TYPE", "escape_label", "exposition", "health"]
