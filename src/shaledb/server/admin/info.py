"""The text of INFO: Redis' sections and field names, with our values.

``INFO`` answers ``# Section`` headers followed by ``field:value`` lines, CRLF-terminated,
sections separated by an empty line -- the format redis-py's ``info()``, redis-cli and
monitoring agents parse. Fields Redis has keep Redis' names and meaning where we have the
quantity; fields that only make sense for Redis' own machinery (RDB children, replication
backlog, allocator fragmentation) are reported with the value an idle standalone Redis shows,
or left out. Our own quantities start with ``shaledb_`` or live in the ``shaledb`` section.

Sections: ``default`` = server clients memory persistence stats replication cpu modules
errorstats cluster keyspace scrub shaledb; ``all`` adds commandstats and latencystats;
``everything`` is ``all`` (there are no modules).
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import shaledb

from ..keyspace.keyspace import Keyspace
from ..keyspace.scrub import info_safe
from .gcpauses import PAUSES

if TYPE_CHECKING:
    from ..exec.context import Services

#: The Redis version whose commands, replies and INFO fields we emulate.
REDIS_VERSION: Final = "7.2.0"
#: Percentiles of INFO latencystats (Redis' latency-tracking-info-percentiles default).
LATENCY_PERCENTILES: Final = (50.0, 99.0, 99.9)

Fields = list[tuple[str, Any]]


def human_bytes(n: int) -> str:
    """Redis' ``bytesToHuman``: 1.50K, 12.00M ..."""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if value < 1024 or unit == "P":
            return f"{int(value)}B" if unit == "B" else f"{value:.2f}{unit}"
        value /= 1024
    return f"{n}B"  # not reached


def rss_bytes() -> int:
    """Resident set size of this process (/proc/self/statm on Linux; the peak from
    getrusage elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def heap_bytes() -> int:
    """Resident memory not backed by a file: RSS minus the resident pages of mapped files
    (the tables read through maps, ``mmap_reads``), which are the OS page cache, shared and
    reclaimable. RSS where /proc/self/statm is missing."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return rss_bytes()


def peak_rss_bytes() -> int:
    """Largest resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def key_counts(keyspace: Keyspace) -> dict[int, tuple[int, int]]:
    """``{db: (keys, keys with an expiry)}`` of the non-empty databases: the keyspace's
    count records, exact and O(databases) (kept in the same write batches as the writes)."""
    return keyspace.key_counts()


def keyspace_fields(counts: dict[int, tuple[int, int]]) -> Fields:
    """``db0:keys=..,expires=..,avg_ttl=0`` for every non-empty database. avg_ttl is 0: Redis
    estimates it from sampled keys, we do not sample."""
    return [(f"db{db}", f"keys={keys},expires={expires},avg_ttl=0")
            for db, (keys, expires) in sorted(counts.items()) if keys]


def _server(s: Services) -> Fields:
    uptime = int(s.uptime)
    try:
        import uvloop  # noqa: F401
        api = "uvloop"
    except ImportError:
        api = "asyncio"
    uname = platform.uname()
    return [
        ("redis_version", REDIS_VERSION),
        ("redis_git_sha1", "00000000"),
        ("redis_git_dirty", 0),
        ("redis_mode", "standalone"),
        ("shaledb_version", shaledb.__version__),
        ("shaledb_build", "compiled" if shaledb.build.info()["compiled"] else "pure"),
        ("python_version", platform.python_version()),
        ("os", f"{uname.system} {uname.release} {uname.machine}"),
        ("arch_bits", 64 if sys.maxsize > 2**32 else 32),
        ("multiplexing_api", api),
        ("process_id", os.getpid()),
        ("process_supervised", "no"),
        ("run_id", s.run_id),
        ("tcp_port", s.port if s.port is not None else 0),
        ("tls_port", s.tls_port if s.tls_port is not None else 0),
        ("metrics_port", s.metrics_port if s.metrics_port is not None else 0),
        ("server_time_usec", time.time_ns() // 1000),
        ("uptime_in_seconds", uptime),
        ("uptime_in_days", uptime // 86400),
        # The active-expiry sweeper's ticks per second (the other periodic work, ops
        # sampling and the idle sweep, runs once a second).
        ("hz", s.config.hz),
        ("configured_hz", s.config.hz),
        ("executable", sys.executable),
        ("config_file", s.config_file or ""),
    ]


def _clients(s: Services) -> Fields:
    return [
        ("connected_clients", len(s.connections)),
        ("cluster_connections", 0),
        ("maxclients", s.config.maxclients),
        ("blocked_clients", len(s.blocking)),
        ("tracking_clients", 0),
        ("pubsub_clients", sum(1 for c in s.connections.values()
                               if c.client is not None and c.client.subscriptions)),
        ("watching_clients", sum(1 for c in s.connections.values()
                                 if c.client is not None and c.client.watched)),
        ("total_watched_keys", len(s.watches)),
    ]


def _memory(s: Services, engine: dict[str, Any]) -> Fields:
    rss = rss_bytes()
    heap = heap_bytes()
    peak = max(peak_rss_bytes(), rss)
    cache = engine["block_cache"]
    return [
        # Redis' used_memory is what its allocator handed out; a Python process has no
        # such number: the resident memory not backed by a file (the mapped tables' pages
        # are page cache). used_memory_rss is the whole resident set, as in Redis.
        ("used_memory", heap),
        ("used_memory_human", human_bytes(heap)),
        ("used_memory_rss", rss),
        ("used_memory_rss_human", human_bytes(rss)),
        ("used_memory_peak", peak),
        ("used_memory_peak_human", human_bytes(peak)),
        ("maxmemory", 0),
        ("maxmemory_human", "0B"),
        ("maxmemory_policy", "noeviction"),
        ("mem_allocator", "pymalloc"),
        ("shaledb_memtable_bytes", engine["memtable_bytes"]),
        ("shaledb_immutable_memtables", engine["immutable_memtables"]),
        ("shaledb_block_cache_bytes", cache["bytes"]),
        ("shaledb_block_cache_pinned_bytes", cache["pinned_bytes"]),
        ("shaledb_block_cache_capacity", cache["capacity"]),
        # Lua scripting (exec/scripting.py), as Redis names them.
        ("used_memory_lua", s.scripts.memory_used()),
        ("number_of_cached_scripts", len(s.scripts.scripts)),
        ("used_memory_scripts", s.scripts.cache_bytes),
    ]


def _persistence(s: Services, engine: dict[str, Any]) -> Fields:
    # The WAL plays the part of Redis' AOF: always on, fsynced per appendfsync. Redis' RDB
    # fields describe the backups (exec/backups.py): BGSAVE takes one.
    status = "ok" if engine["background_error"] is None else "err"
    b = s.backups.status()
    last, ok = b.last, b.last_ok
    changes = max(0, engine["last_sequence"] - ok.sequence) if ok is not None else \
        engine["last_sequence"]
    archive = engine["wal_archive"]
    now = time.time()
    return [
        ("loading", 0),
        ("async_loading", 0),
        # Writes (sequence numbers) since the newest backup: what a restore would lose
        # without the WAL archive. Without a repository: 0, as Redis with no saving.
        ("rdb_changes_since_last_save", changes if b.configured else 0),
        ("rdb_bgsave_in_progress", int(s.bgsave_in_progress)),
        ("rdb_last_save_time", s.last_save_time),
        ("rdb_last_bgsave_status", "ok" if last is None else last.status),
        ("rdb_last_bgsave_time_sec", -1 if last is None else round(last.duration)),
        ("rdb_current_bgsave_time_sec",
         round(now - b.current_started) if b.in_progress else -1),
        ("rdb_saves", b.results["ok"]),
        ("aof_enabled", 1),
        ("aof_rewrite_in_progress", 0),
        ("aof_last_write_status", status),
        ("appendfsync", s.config.appendfsync),
        ("shaledb_wal_bytes", engine["wal_bytes"]),
        ("shaledb_wal_syncs", engine["wal_syncs"]),
        ("shaledb_read_only", int(engine["read_only"])),
        ("shaledb_backup_repo_configured", int(b.configured)),
        ("shaledb_backup_interval", _number(b.interval)),
        ("shaledb_backup_current_trigger", b.current_trigger),
        ("shaledb_backup_current_bytes", b.current_bytes),
        ("shaledb_backup_current_total_bytes", b.current_total),
        ("shaledb_backups_ok", b.results["ok"]),
        ("shaledb_backups_failed", b.results["err"]),
        ("shaledb_backups_stopped", b.results["stopped"]),
        ("shaledb_backup_last_trigger", "" if last is None else last.trigger),
        ("shaledb_backup_last_start_time", 0 if last is None else int(last.started)),
        ("shaledb_backup_last_duration_sec", "0" if last is None else f"{last.duration:.3f}"),
        ("shaledb_backup_last_error", "" if last is None else info_safe(last.error)),
        # The newest successful backup (this run's, or the newest found in the repository).
        ("shaledb_backup_last_id", "" if ok is None else ok.id),
        ("shaledb_backup_last_sequence", 0 if ok is None else ok.sequence),
        ("shaledb_backup_last_time", 0 if ok is None else int(ok.created_at.timestamp())),
        ("shaledb_backup_last_files", 0 if ok is None else ok.files),
        ("shaledb_backup_last_bytes", 0 if ok is None else ok.bytes),
        ("shaledb_backup_last_new_bytes", 0 if ok is None else ok.new_bytes),
        ("shaledb_wal_archive_enabled", int(archive["enabled"])),
        ("shaledb_wal_archive_segments", archive["archived"]),
        # Segments the engine is done with but the archive has not taken yet (kept on disk).
        ("shaledb_wal_archive_waiting", archive["waiting"]),
        ("shaledb_wal_archive_errors", archive["errors"]),
        ("shaledb_wal_archive_last_error", info_safe(archive["last_error"] or "")),
    ]


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _stats(s: Services) -> Fields:
    st = s.stats
    ks = s.keyspace
    total = st["total_commands_processed"]
    return [
        ("total_connections_received", st["total_connections_received"]),
        ("total_commands_processed", total),
        ("instantaneous_ops_per_sec", s.command_stats.ops_per_sec(total)),
        ("total_net_input_bytes", st["total_net_input_bytes"]),
        ("total_net_output_bytes", st["total_net_output_bytes"]),
        ("rejected_connections", st["rejected_connections"]),
        ("expired_keys", ks.expired_keys),
        ("evicted_keys", 0),
        ("keyspace_hits", ks.hits),
        ("keyspace_misses", ks.misses),
        ("pubsub_channels", len(s.pubsub.channels)),
        ("pubsub_patterns", len(s.pubsub.patterns)),
        ("pubsubshard_channels", len(s.pubsub.shard_channels)),
        ("total_error_replies", s.command_stats.total_error_replies),
        ("acl_access_denied_auth", st["auth_failures"]),
        ("shaledb_auth_rate_limited", st["auth_rate_limited"]),
        ("shaledb_protected_mode_refusals", st["protected_mode_refusals"]),
        ("client_output_buffer_limit_disconnections",
         st["client_output_buffer_limit_disconnections"]),
        ("shaledb_idle_timeouts", st["idle_timeouts"]),
        ("shaledb_rate_limited_waits", st["rate_limited_waits"]),
        ("shaledb_clients_killed", st["clients_killed"]),
        ("shaledb_slowlog_len", len(s.slowlog)),
    ]


def _replication(s: Services) -> Fields:
    return s.replication.info_fields()


def _cpu(s: Services) -> Fields:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the compaction worker process
    fields: Fields = [
        ("used_cpu_sys", f"{me.ru_stime:.6f}"),
        ("used_cpu_user", f"{me.ru_utime:.6f}"),
        ("used_cpu_sys_children", f"{kids.ru_stime:.6f}"),
        ("used_cpu_user_children", f"{kids.ru_utime:.6f}"),
    ]
    thread = getattr(resource, "RUSAGE_THREAD", None)
    if thread is not None:  # INFO runs on the event-loop thread
        main = resource.getrusage(thread)
        fields += [("used_cpu_sys_main_thread", f"{main.ru_stime:.6f}"),
                   ("used_cpu_user_main_thread", f"{main.ru_utime:.6f}")]
    return fields


def _commandstats(s: Services) -> Fields:
    out: Fields = []
    for name, c in sorted(s.command_stats.commands.items()):
        per_call = c.usec / c.calls if c.calls else 0.0
        out.append((f"cmdstat_{name}", f"calls={c.calls},usec={c.usec},"
                    f"usec_per_call={per_call:.2f},rejected_calls={c.rejected},"
                    f"failed_calls={c.failed}"))
    return out


def _errorstats(s: Services) -> Fields:
    return [(f"errorstat_{prefix}", f"count={n}")
            for prefix, n in sorted(s.command_stats.errors.items())]


def _latencystats(s: Services) -> Fields:
    out: Fields = []
    for name, c in sorted(s.command_stats.commands.items()):
        if c.calls:
            values = ",".join(f"p{p:g}={c.percentile(p):.3f}" for p in LATENCY_PERCENTILES)
            out.append((f"latency_percentiles_usec_{name}", values))
    return out


def _scrub(s: Services) -> Fields:
    # The background scrub (scrub.py): settings, the running pass, the last completed one.
    return [(f"scrub_{name}", value) for name, value in s.scrubber.status().fields()]


def _failover(s: Services) -> Fields:
    # Automatic failover (cluster/election.py): what this node's election last saw.
    runner = s.failover
    if runner is None:
        return [("failover_enabled", 0)]
    st = runner.election.status()
    cfg = runner.election.config
    left = "" if st.deadline_in is None else int(max(st.deadline_in, 0.0) * 1000)
    return [
        ("failover_enabled", 1),
        ("failover_group", cfg.group),
        ("failover_node", cfg.node),
        ("failover_role", st.role),
        ("failover_writable", int(runner.control.is_writable())),
        ("failover_term", st.term),
        ("failover_leader", st.leader or ""),
        ("failover_write_deadline_in_ms", left),
        ("failover_lease_ttl", cfg.ttl),
        ("failover_sync_members", ",".join(st.sync_members)),
        ("failover_promotion_blocked", st.promotion_blocked or ""),
        ("failover_last_error", st.last_error or ""),
    ]


def _shaledb(s: Services, engine: dict[str, Any]) -> Fields:
    cache = engine["block_cache"]
    lookups = cache["hits"] + cache["misses"]
    fields: Fields = [
        ("path", engine["path"]),
        ("last_sequence", engine["last_sequence"]),
        ("memtable_bytes", engine["memtable_bytes"]),
        ("memtable_entries", engine["memtable_entries"]),
        ("immutable_memtables", engine["immutable_memtables"]),
        # When the active-expiry sweeper's last full pass ended (INFO keyspace's counts
        # are the exact count records now, whatever the sweeper did).
        ("keyspace_counted_at_ms", s.keyspace.last_sweep_ms()),
        ("expire_sweep_passes", s.keyspace.sweeper.passes),
        # Chunks of large strings no key names any more, deleted by the purger; whether
        # some wait to be deleted.
        ("purged_chunks", s.keyspace.purger.purged_chunks),
        ("chunk_garbage_pending", int(s.keyspace.chunk_garbage_pending)),
        ("purged_members", s.keyspace.purger.purged_members),
        ("member_garbage_pending", int(s.keyspace.member_garbage_pending)),
    ]
    for level in engine["levels"]:
        fields.append((f"level{level['level']}",
                       f"files={level['files']},bytes={level['bytes']},"
                       f"score={level['score']}"))
    fields += [
        ("l0_tables", engine["levels"][0]["files"] if engine["levels"] else 0),
        ("total_table_bytes", engine["total_table_bytes"]),
        ("open_tables", engine["open_tables"]),
        ("flushes", engine["flushes"]),
        ("compactions", engine["compactions"]),
        ("trivial_moves", engine["trivial_moves"]),
        ("compactions_in_worker", engine["compactions_in_worker"]),
        ("compaction_bytes_read", engine["compaction_bytes_read"]),
        ("compaction_bytes_written", engine["compaction_bytes_written"]),
        ("flush_bytes_written", engine["flush_bytes_written"]),
        ("write_groups", engine["group_commits"]),
        ("wal_records", engine["wal_records"]),
        ("wal_bytes_written", engine["wal_bytes_written"]),
        ("wal_syncs", engine["wal_syncs"]),
        ("write_slowdowns", engine["write_slowdowns"]),
        ("slowdown_ms", engine["slowdown_ms"]),
        ("write_stalls", engine["write_stalls"]),
        ("stall_ms", engine["stall_ms"]),
        ("block_cache_hits", cache["hits"]),
        ("block_cache_misses", cache["misses"]),
        ("block_cache_hit_ratio", f"{cache['hits'] / lookups:.4f}" if lookups else "0"),
        ("live_snapshots", engine["live_snapshots"]),
        ("compaction_read_errors", engine["compaction_read_errors"]),
        ("descriptor_shortages", engine["descriptor_shortages"]),
        ("read_only", int(engine["read_only"])),
        ("background_error", engine["background_error"] or ""),
        # The cyclic garbage collector as `shaledb serve` tunes it (server.tune_gc).
        ("gc_young_threshold", gc.get_threshold()[0]),
        ("gc_frozen_objects", gc.get_freeze_count()),
        *PAUSES.fields(),
    ]
    return fields


#: Section name -> (header, builder). Builders that need the engine's stats get them as a
#: second argument (one db.stats() call per INFO).
_SECTIONS: Final[dict[str, tuple[str, Callable[..., Fields], bool]]] = {
    "server": ("Server", _server, False),
    "clients": ("Clients", _clients, False),
    "memory": ("Memory", _memory, True),
    "persistence": ("Persistence", _persistence, True),
    "stats": ("Stats", _stats, False),
    "replication": ("Replication", _replication, False),
    "cpu": ("CPU", _cpu, False),
    "modules": ("Modules", lambda s: [], False),
    "commandstats": ("Commandstats", _commandstats, False),
    "errorstats": ("Errorstats", _errorstats, False),
    "latencystats": ("Latencystats", _latencystats, False),
    "cluster": ("Cluster", lambda s: [("cluster_enabled", 0)], False),
    "keyspace": ("Keyspace", lambda s: keyspace_fields(key_counts(s.keyspace)), False),
    "scrub": ("Scrub", _scrub, False),
    "failover": ("Failover", _failover, False),
    "shaledb": ("Shaledb", _shaledb, True),
}
DEFAULT_SECTIONS: Final = ("server", "clients", "memory", "persistence", "stats",
                           "replication", "cpu", "modules", "errorstats", "cluster",
                           "keyspace", "scrub", "shaledb")
ALL_SECTIONS: Final = ("server", "clients", "memory", "persistence", "stats", "replication",
                       "cpu", "modules", "commandstats", "errorstats", "latencystats",
                       "cluster", "keyspace", "scrub", "failover", "shaledb")


def select_sections(args: Iterable[str]) -> list[str]:
    """The sections INFO ``args`` asks for, in Redis' order (no argument: default; unknown
    names are ignored, as in Redis)."""
    wanted: set[str] = set()
    names = [a.lower() for a in args] or ["default"]
    for name in names:
        if name in ("all", "everything"):
            wanted.update(ALL_SECTIONS)
        elif name == "default":
            wanted.update(DEFAULT_SECTIONS)
        elif name in _SECTIONS:
            wanted.add(name)
    return [name for name in ALL_SECTIONS if name in wanted]


def info_text(server: Services, args: Iterable[str] = ()) -> str:
    """The INFO reply for ``args`` (section names)."""
    parts: list[str] = []
    engine: dict[str, Any] | None = None
    for name in select_sections(args):
        header, build, needs_engine = _SECTIONS[name]
        if needs_engine:
            if engine is None:
                engine = server.db.stats()
            fields = build(server, engine)
        else:
            fields = build(server)
        lines = [f"# {header}"] + [f"{k}:{v}" for k, v in fields]
        parts.append("\r\n".join(lines) + "\r\n")
    return "\r\n".join(parts)


__all__ = ["ALL_SECTIONS", "DEFAULT_SECTIONS", "LATENCY_PERCENTILES",
           "REDIS_VERSION", "human_bytes", "info_text", "key_counts", "keyspace_fields",
           "peak_rss_bytes", "rss_bytes", "select_sections"]
