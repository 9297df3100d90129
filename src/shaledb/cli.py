"""The ``shaledb`` command: a demo/smoke run and small administration commands.

Subcommands::

    shaledb demo PATH [--records N] [--value-size B] [--seed S]
    shaledb stats PATH [--json]
    shaledb get PATH KEY [--hex]
    shaledb put PATH KEY VALUE [--ttl SECONDS] [--hex] [--no-sync]
    shaledb delete PATH KEY [--hex]
    shaledb scan PATH [--start K] [--stop K] [--prefix P] [--limit N] [--reverse] [--hex]
    shaledb verify PATH [--json]
    shaledb repair PATH DEST [--json]
    shaledb rotate-key PATH --key-file OLD --new-key-file NEW [--new-data-key]
    shaledb reencrypt PATH --key-file K
    shaledb encrypt PATH DEST --key-file K
    shaledb decrypt PATH DEST --key-file K
    shaledb backup PATH REPO [--json] [--repo-key-file F]
    shaledb restore REPO DEST [--backup ID] [--until TIME|SEQ] [--json] [--repo-key-file F]
    shaledb backups list REPO [--json] [--repo-key-file F]
    shaledb backups verify REPO [--backup ID] [--json] [--repo-key-file F]
    shaledb backups prune REPO --keep-last N [--keep-daily D] [--keep-weekly W] [--dry-run]
                          [--repo-key-file F]
    shaledb serve [--host H] [--port P] [--dir PATH] [--appendfsync MODE] [--config FILE]
                  [--aclfile FILE] [--[no-]protected-mode] [--tls-port P --tls-cert-file F
                  --tls-key-file F [--tls-ca-cert-file F] [--tls-auth-clients yes|no|optional]]
                  [--metrics-host H] [--metrics-port P|off] [--log-format text|json]
                  [--log-level L] [--slowlog-log-slower-than US] [--slowlog-max-len N]
                  [--scrub-interval SECONDS] [--scrub-rate BYTES]
                  [--backup-repo DIR] [--backup-interval SECONDS] [--no-backup-wal-archive]
                  [--backup-repo-key-file F] [--no-mmap-reads]
    shaledb cli [--host H] [--port P] [--config FILE] [--user U] [--tls] [ARGS...]

Every command that opens a database takes ``--encryption-key-file FILE`` (or the environment
variable ``SHALEDB_ENCRYPTION_KEY_FILE``) for an encrypted one: a file of 32 raw bytes or 64
hexadecimal characters that only its owner may read. Keys are never printed; messages name
a key by its id.

Keys and values given on the command line are UTF-8 text, or hexadecimal with ``--hex``.
Keys and values are printed as text when they are printable UTF-8, else as ``0x`` + hex.
Every :class:`~shaledb.errors.ShaleError` is reported as one line on stderr with exit code 1.
``verify`` and ``backups verify`` exit 2 when they find damage and ``repair`` exits 2 when
something was lost. Progress bars are drawn only when the output is a terminal.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

import shaledb
from shaledb.errors import ShaleError

#: Keys per write batch in the demo.
DEMO_BATCH = 1000
#: Operations between two progress-bar updates (keeps the bar's overhead out of the rates).
PROGRESS_STEP = 1000
#: Size of the random pool demo values are sliced from (values stay incompressible-ish
#: without holding ``records * value_size`` bytes in memory).
VALUE_POOL = 1 << 20

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")


# -- helpers -------------------------------------------------------------------------------


def show(data: bytes, width: int | None = None) -> str:
    """``data`` as printable text when it is printable UTF-8, else ``0x`` + hex.

    With ``width``, the result is cut to at most ``width`` characters (ending in ``…``).
    """
    try:
        text = data.decode("utf-8")
        if not text.isprintable() or text.startswith("0x"):
            raise ValueError("not plain text")
    except ValueError:
        text = "0x" + data.hex()
    if width is not None and len(text) > width:
        text = text[: max(width - 1, 0)] + "…"
    return text


def parse_bytes(value: str, as_hex: bool, what: str) -> bytes:
    """A command-line argument as bytes: UTF-8 text, or hexadecimal when ``as_hex``."""
    if not as_hex:
        return value.encode("utf-8")
    text = value[2:] if value.lower().startswith("0x") else value
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise click.BadParameter(f"{what} is not valid hexadecimal: {value!r}") from None


def human_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable string (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def fail(message: str) -> NoReturn:
    """Print ``message`` as an error and exit with status 1."""
    raise click.ClickException(message)


#: Environment variable of the key file (every command that opens a database, and serve).
KEY_FILE_ENV = "SHALEDB_ENCRYPTION_KEY_FILE"

_key_file_option = click.option(
    "--encryption-key-file", "key_file", envvar=KEY_FILE_ENV, default=None,
    type=click.Path(dir_okay=False),
    help="Key file of an encrypted database (32 raw bytes or 64 hex characters, mode 0600; "
         f"also ${KEY_FILE_ENV}). A new database is created encrypted with it.")


#: Environment variable of a backup repository's own key file (backup, restore, backups
#: list|verify|prune, and serve's backup-repo-key-file).
REPO_KEY_FILE_ENV = "SHALEDB_BACKUP_REPO_KEY_FILE"

_repo_key_option = click.option(
    "--repo-key-file", "repo_key_file", envvar=REPO_KEY_FILE_ENV, default=None,
    type=click.Path(dir_okay=False),
    help="Key file of an encrypted backup repository (its own key, not the database's: 32 "
         f"raw bytes or 64 hex characters, mode 0600; also ${REPO_KEY_FILE_ENV}). A new "
         "repository is created encrypted with it; an existing one must have been.")


def open_repo(repo: str, repo_key_file: str | None, *, create: bool) -> Any:
    """The backup repository at ``repo``, opened with its key when given."""
    from shaledb.backup import Repository

    return Repository(repo, create=create, encryption_key_file=repo_key_file)


def open_db(path: str, key_file: str | None = None, **options: Any) -> shaledb.DB:
    """Open the database at ``path``, encrypted with the key in ``key_file`` when given
    (errors surface as :class:`ShaleError`)."""
    if key_file is not None:
        options["encryption_key_file"] = key_file
    return shaledb.open(path, **options)


def _format_stat(name: str, value: Any) -> str:
    """One statistic as display text; byte counts are shown in human units."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int) and (name.endswith("bytes") or name.endswith("capacity")):
        return f"{value:,} ({human_bytes(value)})"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def stats_tables(stats: dict[str, Any]) -> list[Table]:
    """Render ``db.stats()`` as rich tables: scalar counters, then one table per list."""
    main = Table(title="engine stats", show_header=True)
    main.add_column("stat")
    main.add_column("value", justify="right")
    extra: list[Table] = []
    for name, value in stats.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                main.add_row(Text(f"{name}.{sub}"), Text(_format_stat(sub, subvalue)))
        elif isinstance(value, list) and all(isinstance(row, dict) for row in value):
            table = Table(title=name)
            columns: list[str] = []
            for row in value:
                columns.extend(c for c in row if c not in columns)
            for column in columns:
                table.add_column(column, justify="right")
            for row in value:
                table.add_row(*(Text(_format_stat(c, row.get(c, ""))) for c in columns))
            extra.append(table)
        else:
            main.add_row(Text(name), Text(_format_stat(name, value)))
    return [main, *extra]


def _progress() -> Progress:
    """A progress bar with counts, rate-friendly timing and an ETA."""
    return Progress(
        TextColumn("[bold]{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


# -- the command group ---------------------------------------------------------------------


class ShaleGroup(click.Group):
    """A click group that turns ShaleDB errors into clean one-line messages (exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; a :class:`ShaleError` becomes ``Error: <Type>: <message>``."""
        try:
            return super().invoke(ctx)
        except ShaleError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@click.group(cls=ShaleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    shaledb.__version__, prog_name="shaledb",
    message="%(prog)s %(version)s (" + ("compiled by mypyc" if shaledb.build.info()["compiled"]
                                        else "pure Python") + ")")
def cli() -> None:
    """ShaleDB: an embedded LSM-tree key-value store. Administration and demo commands."""


# -- demo ----------------------------------------------------------------------------------


class DemoData:
    """The demo's records: random 16-byte keys and values sliced from a random pool.

    Value ``i`` is a deterministic slice of the pool, so verification needs no copy of the
    values and memory stays at about ``records * 50`` bytes for the key list.
    """

    def __init__(self, records: int, value_size: int, seed: int | None) -> None:
        """Generate ``records`` distinct keys (random, 16 bytes) and the value pool."""
        rng = random.Random(seed)
        self.value_size = value_size
        self.pool = rng.randbytes(VALUE_POOL + value_size)
        raw = rng.randbytes(16 * records)
        keys = [raw[i : i + 16] for i in range(0, len(raw), 16)]
        if len(set(keys)) != len(keys):  # astronomically unlikely, but cheap to rule out
            keys = list(dict.fromkeys(keys))
        self.keys = keys
        self.rng = rng

    def value(self, i: int) -> bytes:
        """The value stored under ``keys[i]``."""
        off = (i * 104_729) % VALUE_POOL
        return self.pool[off : off + self.value_size]


class PhaseResult:
    """Timing of one demo phase."""

    def __init__(self, name: str, ops: int, seconds: float, nbytes: int = 0,
                 note: str = "") -> None:
        """Record that ``name`` did ``ops`` operations (``nbytes`` of payload) in ``seconds``."""
        self.name = name
        self.ops = ops
        self.seconds = seconds
        self.nbytes = nbytes
        self.note = note

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.ops / self.seconds if self.seconds > 0 else float("inf")


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    """Run ``fn`` and return ``(its result, elapsed seconds)``."""
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def _demo_write(db: shaledb.DB, data: DemoData) -> int:
    """Write every record in batches of :data:`DEMO_BATCH` (sync=False)."""
    keys = data.keys
    n = len(keys)
    with _progress() as progress:
        task = progress.add_task("write", total=n)
        for start in range(0, n, DEMO_BATCH):
            end = min(start + DEMO_BATCH, n)
            with db.batch(sync=False) as batch:
                for i in range(start, end):
                    batch.put(keys[i], data.value(i))
            progress.update(task, completed=end)
    return n


def _demo_read(db: shaledb.DB, data: DemoData) -> int:
    """Read every record back in random order and verify its value."""
    order = list(range(len(data.keys)))
    data.rng.shuffle(order)
    keys = data.keys
    bad: list[bytes] = []
    with _progress() as progress:
        task = progress.add_task("read", total=len(order))
        for done, i in enumerate(order, 1):
            if db.get(keys[i]) != data.value(i):
                bad.append(keys[i])
            if done % PROGRESS_STEP == 0:
                progress.update(task, completed=done)
        progress.update(task, completed=len(order))
    if bad:
        fail(f"read verification failed for {len(bad)} of {len(order)} keys "
             f"(first: {show(bad[0])})")
    return len(order)


def _count_ordered(items: Iterator[tuple[bytes, bytes]]) -> int:
    """Count ``items``, checking that keys are strictly ascending."""
    count = 0
    previous: bytes | None = None
    for key, _value in items:
        if previous is not None and key <= previous:
            fail(f"scan returned keys out of order: {show(previous)} then {show(key)}")
        previous = key
        count += 1
    return count


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--records", "-n", default=300_000, show_default=True,
              type=click.IntRange(min=1), help="Number of records to write.")
@click.option("--value-size", default=100, show_default=True,
              type=click.IntRange(min=0, max=shaledb.MAX_VALUE_SIZE), help="Bytes per value.")
@click.option("--seed", type=int, default=None, help="Random seed (default: random).")
@_key_file_option
def demo(path: str, records: int, value_size: int, seed: int | None,
         key_file: str | None) -> None:
    """Write, read back, scan and reopen a database at PATH, printing rates and stats.

    Writes RECORDS random 16-byte keys in batches of 1000 (sync=False), reads them all back
    in random order verifying every value, scans the whole database in order, scans one
    prefix, then closes and reopens it, timing the recovery. PATH may hold an existing
    database; its records are kept and counted by the scans.
    """
    console.print(f"[bold]ShaleDB {shaledb.__version__} demo[/]: {records:,} records of "
                  f"16-byte keys and {value_size}-byte values in {Text(path)}")
    data = DemoData(records, value_size, seed)
    n = len(data.keys)
    payload = n * (16 + value_size)
    results: list[PhaseResult] = []

    t0 = time.perf_counter()
    db = open_db(path, key_file)
    results.append(PhaseResult("open", 1, time.perf_counter() - t0))
    try:
        was_empty = next(iter(db), None) is None

        _, secs = _timed(lambda: _demo_write(db, data))
        results.append(PhaseResult("write (batch 1000)", n, secs, payload))

        _, secs = _timed(lambda: _demo_read(db, data))
        results.append(PhaseResult("random read", n, secs, payload))

        with console.status("full ordered scan"):
            count, secs = _timed(lambda: _count_ordered(db.range()))
        note = "" if was_empty else "includes earlier data"
        if was_empty and count != n:
            fail(f"full scan found {count:,} keys, expected {n:,}")
        results.append(PhaseResult("full scan", count, secs, note=note))

        prefix = data.keys[0][:1]
        with console.status("prefix scan"):
            pcount, secs = _timed(lambda: _count_ordered(db.prefix(prefix)))
        expected = sum(1 for k in data.keys if k[:1] == prefix)
        if was_empty and pcount != expected:
            fail(f"prefix scan found {pcount:,} keys, expected {expected:,}")
        results.append(PhaseResult("prefix scan", pcount, secs,
                                   note=f"prefix 0x{prefix.hex()}"))

        workload_stats = db.stats()
        t0 = time.perf_counter()
        db.close()
        results.append(PhaseResult("close", 1, time.perf_counter() - t0))
        t0 = time.perf_counter()
        db = open_db(path, key_file)
        reopen = time.perf_counter() - t0
        recovered = db.stats().get("memtable_entries", "?")
        results.append(PhaseResult("reopen (recovery)", 1, reopen,
                                   note=f"{recovered} entries replayed"))
        console.print(f"recovery: reopened in [bold]{reopen * 1000:.1f} ms[/]")

        sample = data.rng.sample(range(n), min(n, 1000))
        missing = [i for i in sample if db.get(data.keys[i]) != data.value(i)]
        if missing:
            fail(f"{len(missing)} of {len(sample)} sampled keys wrong after reopen")
    finally:
        db.close()

    table = Table(title="demo results")
    for column in ("phase", "ops", "seconds", "ops/s", "MiB/s", "note"):
        table.add_column(column, justify="left" if column in ("phase", "note") else "right")
    for r in results:
        mib = f"{r.nbytes / r.seconds / 2**20:,.1f}" if r.nbytes and r.seconds > 0 else ""
        table.add_row(r.name, f"{r.ops:,}", f"{r.seconds:.3f}",
                      f"{r.rate:,.0f}" if r.ops > 1 else "", mib, Text(r.note))
    console.print(table)
    console.print("engine stats below were taken before the close, after the workload")
    for t in stats_tables(workload_stats):
        console.print(t)


# -- admin commands ------------------------------------------------------------------------


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw stats as JSON.")
@_key_file_option
def stats(path: str, as_json: bool, key_file: str | None) -> None:
    """Open the database at PATH read-only and print its engine statistics."""
    with open_db(path, key_file, read_only=True, create_if_missing=False) as db:
        data = db.stats()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    for table in stats_tables(data):
        console.print(table)


_hex_option = click.option("--hex", "as_hex", is_flag=True,
                           help="Keys and values on the command line are hexadecimal.")


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.argument("key")
@_hex_option
@_key_file_option
def get(path: str, key: str, as_hex: bool, key_file: str | None) -> None:
    """Print the value of KEY; exit status 1 when it is missing (or expired)."""
    k = parse_bytes(key, as_hex, "KEY")
    with open_db(path, key_file, read_only=True, create_if_missing=False) as db:
        value = db.get(k)
        ttl = db.ttl(k) if value is not None else None
    if value is None:
        fail(f"key not found: {show(k)}")
    click.echo(value.hex() if as_hex else show(value))
    if ttl is not None:
        err_console.print(f"(expires in {ttl:.3f} s)")


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.argument("key")
@click.argument("value")
@click.option("--ttl", type=float, default=None, help="Expire the key after this many seconds.")
@click.option("--sync/--no-sync", default=True, show_default=True,
              help="fsync the write-ahead log before returning.")
@_hex_option
@_key_file_option
def put(path: str, key: str, value: str, ttl: float | None, sync: bool, as_hex: bool,
        key_file: str | None) -> None:
    """Set KEY to VALUE (creates the database when PATH holds none, encrypted with
    --encryption-key-file when given)."""
    k = parse_bytes(key, as_hex, "KEY")
    v = parse_bytes(value, as_hex, "VALUE")
    with open_db(path, key_file) as db:
        db.put(k, v, sync=sync, ttl=ttl)


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.argument("key")
@click.option("--sync/--no-sync", default=True, show_default=True,
              help="fsync the write-ahead log before returning.")
@_hex_option
@_key_file_option
def delete(path: str, key: str, sync: bool, as_hex: bool, key_file: str | None) -> None:
    """Delete KEY (deleting a missing key is not an error)."""
    k = parse_bytes(key, as_hex, "KEY")
    with open_db(path, key_file, create_if_missing=False) as db:
        db.delete(k, sync=sync)


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--start", default=None, help="First key (inclusive).")
@click.option("--stop", default=None, help="End key (exclusive).")
@click.option("--prefix", default=None, help="Only keys starting with this prefix.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=0),
              help="At most this many entries (0: no limit).")
@click.option("--reverse", is_flag=True, help="Descending key order.")
@click.option("--width", default=60, show_default=True, type=click.IntRange(min=8),
              help="Cut values longer than this many characters.")
@_hex_option
@_key_file_option
def scan(path: str, start: str | None, stop: str | None, prefix: str | None, limit: int,
         reverse: bool, width: int, as_hex: bool, key_file: str | None) -> None:
    """List keys and values in key order: a range [--start, --stop) or a --prefix."""
    if prefix is not None and (start is not None or stop is not None):
        raise click.UsageError("--prefix cannot be combined with --start/--stop")
    lim = limit or None
    table = Table(show_header=True)
    table.add_column("key")
    table.add_column("value")
    rows = 0
    with open_db(path, key_file, read_only=True, create_if_missing=False) as db:
        if prefix is not None:
            items = db.prefix(parse_bytes(prefix, as_hex, "--prefix"), reverse=reverse, limit=lim)
        else:
            lo = None if start is None else parse_bytes(start, as_hex, "--start")
            hi = None if stop is None else parse_bytes(stop, as_hex, "--stop")
            items = db.range(lo, hi, reverse=reverse, limit=lim)
        for key, value in items:
            table.add_row(Text(show(key)), Text(show(value, width)))
            rows += 1
    console.print(table)
    console.print(f"{rows} entr{'y' if rows == 1 else 'ies'}")


# -- verify and repair ---------------------------------------------------------------------

#: Exit status of ``verify`` on damage and of ``repair`` when something was lost.
EXIT_DAMAGE = 2


def _checked_progress(as_json: bool) -> Progress | None:
    """A progress bar when stdout is a terminal and the output is for people."""
    return None if as_json or not console.is_terminal else _progress()


def _run_with_progress(label: str, as_json: bool, fn: Callable[[Any], T]) -> T:
    bar = _checked_progress(as_json)
    if bar is None:
        return fn(None)
    with bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return fn(update)


def _locked_hint(exc: ShaleError) -> NoReturn:
    fail(f"{type(exc).__name__}: {exc}. To check a database while it is open, call db.verify() "
         "inside the process that has it open")


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@_key_file_option
def verify(path: str, as_json: bool, key_file: str | None) -> None:
    """Check every file of the closed database at PATH: checksums of every block and record,
    the manifest's references (missing and unreferenced files), key order within tables and
    across the tables of a level, sequence numbers. Writes nothing.

    Exit status: 0 when no damage was found (notices are allowed), 2 on damage, 1 when the
    check could not run (no database there, or it is open in another process).
    """
    from shaledb.engine.verify import verify as run_verify
    from shaledb.errors import LockedError

    try:
        report = _run_with_progress("verify", as_json,
                                    lambda progress: run_verify(
                                        path, progress=progress, encryption_key_file=key_file))
    except LockedError as exc:
        _locked_hint(exc)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        t = report.totals
        table = Table(title=f"verify {report.path}", show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        for name, value in (("result", "OK" if report.ok else "DAMAGED"),
                            ("damage", f"{len(report.damage):,}"),
                            ("notices", f"{len(report.notices):,}"),
                            ("files", f"{t.files:,}"),
                            ("bytes", f"{t.bytes:,} ({human_bytes(t.bytes)})"),
                            ("tables", f"{t.tables:,}"), ("blocks", f"{t.blocks:,}"),
                            ("entries", f"{t.entries:,}"),
                            ("WAL segments", f"{t.wal_segments:,}"),
                            ("WAL records", f"{t.wal_records:,}"),
                            ("seconds", f"{t.seconds:.2f}"),
                            ("MB/s", f"{t.mb_per_s:,.0f}")):
            table.add_row(name, value)
        console.print(table)
        for problem in report.problems:
            console.print(Text(str(problem),
                               style="red" if problem.severity.value == "damage" else "yellow"),
                          soft_wrap=True)
    if not report.ok:
        raise SystemExit(EXIT_DAMAGE)


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@_key_file_option
def repair(path: str, dest: str, as_json: bool, key_file: str | None) -> None:
    """Salvage every readable record of the database at PATH into a new database at DEST
    (which must not exist, or be empty). PATH is only read, never written.

    Uses the manifest's table list when the manifest reads, every table otherwise; every
    intact data block; every intact WAL record. The newest version of each key wins; deleted
    and expired keys stay deleted. An encrypted database needs its key; DEST is encrypted
    with the same key. Exit status: 0 when nothing was lost, 2 when something was (the
    report names the files, offsets, key ranges and counts), 1 on error.
    """
    from shaledb.engine.repair import repair as run_repair
    from shaledb.errors import LockedError

    try:
        report = _run_with_progress("repair", as_json,
                                    lambda progress: run_repair(
                                        path, dest, progress=progress,
                                        encryption_key_file=key_file))
    except LockedError as exc:
        fail(f"{type(exc).__name__}: {exc}")
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        table = Table(title=f"repair {report.source} -> {report.dest}", show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        for name, value in (("result", "nothing lost" if report.lossless else "DATA LOST"),
                            ("manifest used", "yes" if report.manifest_used else "no"),
                            ("files read", f"{report.files_read:,}"),
                            ("bytes read", f"{report.bytes_read:,}"),
                            ("tables read", f"{report.tables_read:,}"),
                            ("blocks read", f"{report.blocks_read:,}"),
                            ("blocks lost", f"{report.blocks_lost:,}"),
                            ("WAL records read", f"{report.wal_records:,}"),
                            ("WAL records lost", f"{report.wal_records_lost:,}"),
                            ("versions read", f"{report.entries_read:,}"),
                            ("keys written", f"{report.keys_written:,}"),
                            ("deleted (not written)", f"{report.deleted:,}"),
                            ("expired (not written)", f"{report.expired:,}"),
                            ("damaged files", ", ".join(report.damaged_files) or "none"),
                            ("seconds", f"{report.seconds:.2f}")):
            table.add_row(name, value)
        console.print(table)
        for loss in report.losses:
            console.print(Text(str(loss), style="red"), soft_wrap=True)
        for note in report.notices:
            console.print(Text(f"NOTICE  {note}", style="yellow"), soft_wrap=True)
    if not report.lossless:
        raise SystemExit(EXIT_DAMAGE)


# -- keys ----------------------------------------------------------------------------------

_old_key_option = click.option("--key-file", "key_file", required=True,
                               type=click.Path(dir_okay=False),
                               help="The database's key file (mode 0600).")


@cli.command("rotate-key")
@click.argument("path", type=click.Path(file_okay=False))
@_old_key_option
@click.option("--new-key-file", required=True, type=click.Path(dir_okay=False),
              help="The new key file (mode 0600; make one with `openssl rand -hex 32`).")
@click.option("--new-data-key", is_flag=True,
              help="Also start a fresh data key for the files written from now on "
                   "(`shaledb reencrypt` rewrites the older files with it).")
def rotate_key(path: str, key_file: str, new_key_file: str, new_data_key: bool) -> None:
    """Re-wrap the data keys of the closed, encrypted database at PATH under a new master
    key. Only KEYRING is rewritten (atomically); afterwards only the new key opens PATH."""
    change = shaledb.rotate_key(path, old_key_file=key_file, new_key_file=new_key_file,
                                new_data_key=new_data_key)
    console.print(f"{Text(change.path)}: key {change.old_key_id} -> {change.new_key_id}; "
                  f"data keys {list(change.data_keys)}, active {change.active_data_key}")


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@_old_key_option
def reencrypt(path: str, key_file: str) -> None:
    """Rewrite every file of the closed, encrypted database at PATH with a fresh data key
    (a full compaction), then drop the data keys no file uses from KEYRING."""
    change = shaledb.reencrypt(path, key_file=key_file)
    console.print(f"{Text(change.path)}: every file under data key {change.active_data_key}; "
                  f"KEYRING holds data keys {list(change.data_keys)}")


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--key-file", "key_file", required=True, type=click.Path(dir_okay=False),
              help="Key file of the new, encrypted database (mode 0600).")
def encrypt(path: str, dest: str, key_file: str) -> None:
    """Copy the plain database at PATH into a new encrypted database at DEST (every live
    key, with its expiry). PATH is only read; DEST must not exist or be empty."""
    n = shaledb.encrypt(path, dest, key_file=key_file)
    console.print(f"{n:,} keys copied into the encrypted database {Text(dest)}")


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@_old_key_option
def decrypt(path: str, dest: str, key_file: str) -> None:
    """Copy the encrypted database at PATH into a new plain database at DEST (every live
    key, with its expiry). PATH is only read; DEST must not exist or be empty."""
    n = shaledb.decrypt(path, dest, key_file=key_file)
    console.print(f"{n:,} keys copied into the plain database {Text(dest)}")


# -- serve ---------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="TCP port (default 6380).")
@click.option("--dir", "data_dir", default=None, type=click.Path(file_okay=False),
              help="Database directory (default ./data).")
@click.option("--appendfsync", type=click.Choice(["always", "everysec", "no"]), default=None,
              help="When replies to writes are sent: after an fsync (always), or with the "
                   "WAL fsynced every second (everysec, default) or by the OS (no).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              default=None, help="TOML file of server settings (flags override it).")
@click.option("--aclfile", default=None, type=click.Path(dir_okay=False),
              help="ACL file of users: read at start when present, written by ACL SAVE.")
@click.option("--tls-port", type=click.IntRange(0, 65535), default=None,
              help="Also serve TLS on this port (needs --tls-cert-file, --tls-key-file).")
@click.option("--tls-cert-file", default=None, type=click.Path(dir_okay=False),
              help="Server certificate chain (PEM).")
@click.option("--tls-key-file", default=None, type=click.Path(dir_okay=False),
              help="Server private key (PEM).")
@click.option("--tls-ca-cert-file", default=None, type=click.Path(dir_okay=False),
              help="CA certificates that client certificates must chain to (PEM).")
@click.option("--tls-auth-clients", type=click.Choice(["yes", "no", "optional"]),
              default=None, help="Client certificates: required (yes, default), optional, "
                                 "or not asked for (no).")
@click.option("--protected-mode/--no-protected-mode", default=None,
              help="Refuse non-loopback clients while no password is set (default on).")
@click.option("--log-level", default=None,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="Least severe log level written (default info).")
@click.option("--log-format", default=None, type=click.Choice(["text", "json"]),
              help="Log lines as text (default) or one JSON object per line.")
@click.option("--metrics-host", default=None,
              help="Address of the HTTP endpoint of /metrics and /health (default 127.0.0.1).")
@click.option("--metrics-port", default=None, metavar="PORT|off",
              help="Port of /metrics and /health (default 9380; 0 picks a free one; "
                   "-1 or off disables it).")
@click.option("--slowlog-log-slower-than", type=click.IntRange(min=-1), default=None,
              metavar="MICROSECONDS",
              help="Log commands at least this slow in SLOWLOG (default 10000; 0 logs every "
                   "command, -1 none).")
@click.option("--slowlog-max-len", type=click.IntRange(0, 100_000), default=None,
              help="Most SLOWLOG entries kept (default 128).")
@click.option("--scrub-interval", type=click.FloatRange(min=0), default=None,
              metavar="SECONDS",
              help="Seconds between the starts of background scrub passes, which re-read and "
                   "check the whole database (default 0: none scheduled; SCRUB NOW runs one).")
@click.option("--scrub-rate", default=None, metavar="BYTES",
              callback=lambda ctx, param, value: _byte_count(value, "--scrub-rate"),
              help="Most bytes per second a scrub pass reads, with Redis' units (32mb, 1gb; "
                   "default 16mb; 0: no limit).")
@click.option("--backup-repo", default=None, type=click.Path(file_okay=False),
              help="Backup repository (a directory, created when missing) that BGSAVE, SAVE "
                   "and --backup-interval back up into, and the WAL is archived to (also "
                   "backup_repo in the config, or $SHALEDB_BACKUP_REPO). Not settable by "
                   "CONFIG SET.")
@click.option("--backup-interval", type=click.FloatRange(min=0), default=None,
              metavar="SECONDS",
              help="Seconds between the starts of scheduled backups (default 0: none; "
                   "BGSAVE takes one). Needs --backup-repo.")
@click.option("--backup-wal-archive/--no-backup-wal-archive", default=None,
              help="With --backup-repo: archive every WAL segment into it, for "
                   "point-in-time restore (default on).")
@click.option("--mmap-reads/--no-mmap-reads", default=None,
              help="Read tables through read-only memory maps (default on); with "
                   "--no-mmap-reads, with pread: a disk read error is then an error reply, "
                   "not a SIGBUS that ends the server.")
@click.option("--backup-repo-key-file", "--repo-key-file", "backup_repo_key_file",
              default=None, type=click.Path(dir_okay=False),
              help="With --backup-repo: the repository's own key file (mode 0600); the "
                   "backups and the archived WAL are encrypted with it (also "
                   f"backup_repo_key_file in the config, or ${REPO_KEY_FILE_ENV}).")
@click.option("--etcd", default=None, metavar="URL[,URL...]",
              help="Automatic failover: etcd client URL(s) of the group's coordination "
                   "(with --group and --node-name; docs/operations.md).")
@click.option("--group", default=None, help="With --etcd: the replication group to join "
                                            "(also the Sentinel master name).")
@click.option("--node-name", default=None, help="With --etcd: this node's name in the group.")
@click.option("--failover-ttl", type=click.IntRange(2, 3600), default=None,
              help="With --etcd: seconds of the leader lease (default 10).")
@click.option("--announce-host", "failover_announce_host", default=None,
              help="With --etcd: the address other nodes and clients reach this node at "
                   "(default: --host).")
@click.option("--announce-port", "failover_announce_port", type=click.IntRange(1, 65535),
              default=None, help="With --etcd: the port published for this node (default: "
                                 "--port).")
@click.option("--encryption-key-file", "key_file", default=None,
              type=click.Path(dir_okay=False),
              help="Key file of an encrypted database (32 raw bytes or 64 hex characters, "
                   f"mode 0600; also encryption_key_file in the config, or ${KEY_FILE_ENV}).")
@click.option("--replicaof", nargs=2, default=None, metavar="HOST PORT",
              help="Replicate the ShaleDB primary at HOST PORT (read-only replica; "
                   "REPLICAOF NO ONE promotes it). Its password: masterauth in the config "
                   "or $SHALEDB_MASTERAUTH.")
@click.option("--masteruser", default=None,
              help="The ACL user a replica authenticates to its primary as.")
@click.option("--master-tls/--no-master-tls", default=None,
              help="Connect to the primary with TLS (checked against --tls-ca-cert-file).")
@click.option("--repl-backlog-size", default=None, metavar="BYTES",
              callback=lambda ctx, param, value: _byte_count(value, "--repl-backlog-size"),
              help="Bytes of recent writes kept for replicas' partial resyncs (16mb).")
@click.option("--sync-replicas", type=click.IntRange(0, 1000), default=None,
              help="Acknowledge a write only once this many replicas have it durably "
                   "(default 0: asynchronous replication).")
@click.option("--sync-replicas-timeout", type=click.FloatRange(min=0.001), default=None,
              metavar="SECONDS",
              help="How long a write waits for --sync-replicas acknowledgements (10).")
def serve(host: str | None, port: int | None, data_dir: str | None, appendfsync: str | None,
          config_path: str | None, aclfile: str | None, tls_port: int | None,
          tls_cert_file: str | None, tls_key_file: str | None, tls_ca_cert_file: str | None,
          tls_auth_clients: str | None, protected_mode: bool | None, log_level: str | None,
          log_format: str | None, metrics_host: str | None, metrics_port: str | None,
          slowlog_log_slower_than: int | None, slowlog_max_len: int | None,
          scrub_interval: float | None, scrub_rate: int | None, backup_repo: str | None,
          backup_interval: float | None, backup_wal_archive: bool | None,
          mmap_reads: bool | None,
          backup_repo_key_file: str | None, key_file: str | None,
          etcd: str | None = None, group: str | None = None,
          node_name: str | None = None, failover_ttl: int | None = None,
          failover_announce_host: str | None = None,
          failover_announce_port: int | None = None,
          replicaof: tuple[str, str] | None = None, masteruser: str | None = None,
          master_tls: bool | None = None, repl_backlog_size: int | None = None,
          sync_replicas: int | None = None,
          sync_replicas_timeout: float | None = None) -> None:
    """Serve a database over the Redis protocol until SIGTERM or SIGINT.

    Any Redis client works (redis-cli -p 6380, redis-py). The password, if any, is read from
    the config file's requirepass or from the SHALEDB_REQUIREPASS environment variable. An
    encrypted database needs --encryption-key-file (or the config's encryption_key_file, or
    SHALEDB_ENCRYPTION_KEY_FILE).
    """
    from shaledb.server import ServerConfig
    from shaledb.server import serve as run_server
    from shaledb.server.admin.logs import configure_logging

    config = ServerConfig.load(config_path, {"host": host, "port": port, "dir": data_dir,
                                             "appendfsync": appendfsync,
                                             "protected_mode": protected_mode,
                                             "aclfile": aclfile, "tls_port": tls_port,
                                             "tls_cert_file": tls_cert_file,
                                             "tls_key_file": tls_key_file,
                                             "tls_ca_cert_file": tls_ca_cert_file,
                                             "tls_auth_clients": tls_auth_clients,
                                             "log_level": log_level,
                                             "log_format": log_format,
                                             "metrics_host": metrics_host,
                                             "metrics_port": metrics_port,
                                             "slowlog_log_slower_than":
                                                 slowlog_log_slower_than,
                                             "slowlog_max_len": slowlog_max_len,
                                             "scrub_interval": scrub_interval,
                                             "replicaof": " ".join(replicaof)
                                             if replicaof else None,
                                             "masteruser": masteruser,
                                             "master_tls": master_tls,
                                             "repl_backlog_size": repl_backlog_size,
                                             "sync_replicas": sync_replicas,
                                             "sync_replicas_timeout": sync_replicas_timeout,
                                             "scrub_rate": scrub_rate,
                                             "backup_repo": backup_repo,
                                             "backup_interval": backup_interval,
                                             "backup_wal_archive": backup_wal_archive,
                                             "mmap_reads": mmap_reads,
                                             "backup_repo_key_file": backup_repo_key_file,
                                             "etcd": etcd, "group": group,
                                             "node_name": node_name,
                                             "failover_ttl": failover_ttl,
                                             "failover_announce_host":
                                                 failover_announce_host,
                                             "failover_announce_port":
                                                 failover_announce_port,
                                             "encryption_key_file": key_file})
    configure_logging(config.log_format, config.log_level)
    try:
        run_server(config, config_path)
    except OSError as exc:  # the address is taken, or not ours to bind
        fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}")


def _byte_count(value: str | None, flag: str) -> int | None:
    """A byte count with Redis' optional unit (``32mb``), as CONFIG SET takes it."""
    if value is None:
        return None
    from shaledb.server.admin.settings import memory

    try:
        return int(memory()(value.encode()))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc} (e.g. 33554432, 32mb, 1gb)",
                                 param_hint=flag) from None


# -- cli (redis-cli) -------------------------------------------------------------------------

#: Environment variable redis-cli reads its password from (never put it on a command line,
#: where every local user can read it in ps).
REDISCLI_AUTH = "REDISCLI_AUTH"


def redis_cli_command(config: Any, redis_cli: str, *, tls: bool, user: str | None,
                      cacert: str | None, cert: str | None, key: str | None,
                      args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The redis-cli command line and environment that reach the server of ``config`` (a
    ServerConfig): its host (loopback when it listens on every address), its port or TLS
    port, and its password in REDISCLI_AUTH, never in the arguments."""
    import os

    host = config.host if config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if tls and config.tls_port is None:
        raise click.UsageError("--tls needs tls_port in the config file")
    port = config.tls_port if tls else config.port
    argv = [redis_cli, "-h", host, "-p", str(port)]
    if user is not None:
        argv += ["--user", user]
    if tls:
        argv.append("--tls")
        ca = cacert or config.tls_ca_cert_file
        if ca is not None:
            argv += ["--cacert", ca]
        if cert is not None:
            argv += ["--cert", cert]
        if key is not None:
            argv += ["--key", key]
    env = dict(os.environ)
    if config.requirepass is not None:
        env[REDISCLI_AUTH] = config.requirepass
    return argv + list(args), env


@cli.command("cli", context_settings={"ignore_unknown_options": True,
                                      "allow_interspersed_args": False})
@click.option("--host", default=None, help="Server address (default: the config's host).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Server port (default: the config's port, 6380).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              default=None, help="The server's TOML config file (host, port, TLS, password).")
@click.option("--user", default=None, help="ACL user to log in as (password from "
                                           "SHALEDB_REQUIREPASS or the config).")
@click.option("--tls", is_flag=True, help="Connect to the TLS port.")
@click.option("--cacert", default=None, help="CA to verify the server (default: the "
                                             "config's tls_ca_cert_file).")
@click.option("--cert", default=None, help="Client certificate (PEM).")
@click.option("--key", default=None, help="Client private key (PEM).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cli_command(host: str | None, port: int | None, config_path: str | None,
                user: str | None, tls: bool, cacert: str | None, cert: str | None,
                key: str | None, args: tuple[str, ...]) -> None:
    """Run redis-cli against the configured server (interactive without ARGS).

    The password (requirepass in the config, or SHALEDB_REQUIREPASS) reaches redis-cli in
    its REDISCLI_AUTH environment variable, never on its command line.
    """
    import os
    import shutil

    from shaledb.server import ServerConfig

    path = shutil.which("redis-cli")
    if path is None:
        fail("redis-cli is not installed or not on PATH; install it (Debian/Ubuntu: "
             "apt-get install redis-tools) or use any other Redis client")
    config = ServerConfig.load(config_path, {"host": host, "port": port})
    argv, env = redis_cli_command(config, path, tls=tls, user=user, cacert=cacert,
                                  cert=cert, key=key, args=args)
    os.execve(path, argv, env)


# -- backups -------------------------------------------------------------------------------


def _until_arg(value: str | None) -> Any:
    """``--until``: a sequence number (digits) or an ISO 8601 time (UTC when no zone)."""
    import datetime as dt

    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        fail(f"--until {value!r} is neither a sequence number nor an ISO 8601 time (e.g. "
             f"2026-12-01T21:30:00+00:00)")
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


@cli.command()
@click.argument("path", type=click.Path(file_okay=False))
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the backup as one JSON document.")
@_key_file_option
@_repo_key_option
def backup(path: str, repo: str, as_json: bool, key_file: str | None,
           repo_key_file: str | None) -> None:
    """Back up the database at PATH into the repository REPO (a directory, created if
    missing). Only files the repository does not hold yet are copied. An encrypted database
    is backed up encrypted (its key is needed to open it, never stored); with
    --repo-key-file the repository encrypts everything it stores under its own key. For a
    database open in a server, use its BGSAVE (shaledb serve --backup-repo), or db.backup
    in that process.
    """
    target = open_repo(repo, repo_key_file, create=True)
    with shaledb.open(path, create_if_missing=False, encryption_key_file=key_file) as db:
        info = _run_with_progress("backup", as_json, lambda progress: db.backup(
            target, progress=progress))
    if as_json:
        click.echo(json.dumps(info.summary(), indent=2))
    else:
        click.echo(f"backup {info.id}: sequence {info.sequence}, {info.files} files, "
                   f"{human_bytes(info.bytes)} ({human_bytes(info.new_bytes)} new)")


@cli.command()
@click.argument("repo", type=click.Path(file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--backup", "backup_id", default=None, help="The backup's id (default: latest).")
@click.option("--until", default=None,
              help="Restore the state as of this time (ISO 8601; UTC without a zone) or "
                   "sequence number, replaying the archived WAL past the newest backup before "
                   "it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@_key_file_option
@_repo_key_option
def restore(repo: str, dest: str, backup_id: str | None, until: str | None, as_json: bool,
            key_file: str | None, repo_key_file: str | None) -> None:
    """Restore a backup from REPO into DEST (which must not exist, or be empty). Every byte
    is checked against its SHA-256 while it is copied. A point-in-time restore (--until) of
    an encrypted database needs its key; an encrypted repository needs --repo-key-file.
    """
    when = _until_arg(until)
    source = open_repo(repo, repo_key_file, create=False)
    info = _run_with_progress("restore", as_json, lambda progress: shaledb.restore(
        source, dest, backup_id=backup_id, until=when, encryption_key_file=key_file,
        progress=progress))
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(info), indent=2))
    else:
        tail = ""
        if info.reached_until is not None:
            tail = (f"; {info.replayed} operations replayed from the archived WAL"
                    + ("" if info.reached_until else
                       " (the archive ends before --until: this is the newest state it holds)"))
        click.echo(f"restored backup {info.backup_id} into {info.path}: sequence "
                   f"{info.sequence}{tail}")


@cli.group(cls=ShaleGroup)
def backups() -> None:
    """List, verify and prune the backups in a repository."""


@backups.command("list")
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the list as one JSON document.")
@_repo_key_option
def backups_list(repo: str, as_json: bool, repo_key_file: str | None) -> None:
    """The backups in REPO, oldest first."""
    found = open_repo(repo, repo_key_file, create=False).backups()
    if as_json:
        click.echo(json.dumps([b.summary() for b in found], indent=2))
        return
    table = Table(title=f"backups in {repo}")
    for col in ("id", "created (UTC)", "sequence", "files", "size", "new"):
        table.add_column(col, justify="left" if col in ("id", "created (UTC)") else "right")
    for b in found:
        table.add_row(b.id, f"{b.created_at:%Y-%m-%d %H:%M:%S}", f"{b.sequence:,}",
                      f"{b.files:,}", human_bytes(b.bytes), human_bytes(b.new_bytes))
    console.print(table)


@backups.command("verify")
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--backup", "backup_id", default=None,
              help="Check this backup only (default: every file of the repository).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@_repo_key_option
def backups_verify(repo: str, backup_id: str | None, as_json: bool,
                   repo_key_file: str | None) -> None:
    """Check every byte of REPO (or of one backup) against its SHA-256 (in an encrypted
    repository: every chunk's authentication tag and every object's HMAC, which needs
    --repo-key-file). Exit status: 0 when every byte checks out, 2 when something is damaged
    or missing (each file named), 1 when the check could not run (an encrypted repository
    without its key)."""
    r = open_repo(repo, repo_key_file, create=False)
    report = _run_with_progress("verify", as_json, lambda progress: r.verify(
        backup_id, progress=progress))
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "files": report.files, "bytes": report.bytes,
                               "backups": report.backups,
                               "problems": [{"file": f, "problem": p}
                                            for f, p in report.problems],
                               "notices": report.notices}, indent=2))
    else:
        click.echo(f"{'OK' if report.ok else 'DAMAGED'}: {report.backups} backups, "
                   f"{report.files} files, {human_bytes(report.bytes)} checked")
        for f, p in report.problems:
            err_console.print(Text(f"damaged: {f}: {p}", style="red"), soft_wrap=True)
        for n in report.notices:
            err_console.print(Text(f"notice: {n}", style="yellow"), soft_wrap=True)
    if not report.ok:
        raise SystemExit(EXIT_DAMAGE)


@backups.command("prune")
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--keep-last", type=click.IntRange(min=1), required=True,
              help="Keep the N newest backups.")
@click.option("--keep-daily", type=click.IntRange(min=0), default=0,
              help="Also keep the newest backup of each of the D most recent days (UTC).")
@click.option("--keep-weekly", type=click.IntRange(min=0), default=0,
              help="Also keep the newest backup of each of the W most recent ISO weeks.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@_repo_key_option
def backups_prune(repo: str, keep_last: int, keep_daily: int, keep_weekly: int,
                  dry_run: bool, as_json: bool, repo_key_file: str | None) -> None:
    """Remove the backups the rules do not keep, and the files only they needed (and the
    archived WAL older than the oldest backup kept)."""
    report = open_repo(repo, repo_key_file, create=False).prune(keep_last, keep_daily, keep_weekly,
                                                  dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"kept {len(report.kept)} backups, {verb} {len(report.removed)}"
               + ("" if dry_run else f" ({report.objects_removed} files, "
                  f"{human_bytes(report.bytes_freed)}; {report.wal_removed} archived WAL "
                  f"segments)"))
    for i in report.removed:
        click.echo(f"  {verb}: {i}")


# -- cluster (automatic failover) ------------------------------------------------------------


@cli.group()
def cluster() -> None:
    """Failover groups coordinated through etcd (docs/operations.md, "Failover with etcd")."""


@cluster.command("status")
@click.option("--etcd", required=True, metavar="URL[,URL...]", help="etcd client URL(s).")
@click.option("--group", required=True, help="The replication group.")
@click.option("--json", "as_json", is_flag=True, help="Print the group as one JSON document.")
def cluster_status(etcd: str, group: str, as_json: bool) -> None:
    """Show a group: its primary and term, the sync set, and every member's address, role,
    replication offset and whom it follows (read from etcd; no node is contacted)."""
    import json as _json

    from shaledb.server.cluster.election import best_candidate, promotion_pool
    from shaledb.server.cluster.etcd import EtcdClient, EtcdError
    from shaledb.server.cluster.group import read_group

    try:
        with EtcdClient(etcd) as client:
            state = read_group(client, group)
    except (EtcdError, ShaleError) as exc:
        fail(f"cannot read group {group!r} from etcd: {exc}")
    if as_json:
        click.echo(_json.dumps(state.describe(), indent=2, sort_keys=True))
        return
    lead = state.leader
    click.echo(f"group {group}: term {state.term}, primary "
               + (f"{lead.node} at {lead.host}:{lead.port}" if lead else "NONE (no leader key)"))
    if state.sync is not None:
        click.echo(f"sync set (K={state.sync.k}, term {state.sync.term}): "
                   + (", ".join(state.sync.members) or "(empty)"))
    if lead is None:
        # The election's own rule (sync mode when a sync key exists), as etcd shows it now.
        pool, why = promotion_pool(state, state.sync is not None)
        click.echo(f"promotion: {best_candidate(pool).node} may take over" if pool
                   else f"promotion blocked: {why}")
    if not state.members:
        click.echo("no live members")
    for name, m in sorted(state.members.items()):
        role = "primary" if lead is not None and name == lead.node else m.role
        click.echo(f"  {name:<16} {m.host}:{m.port:<6} {role:<8} offset {m.offset:<12} "
                   f"term {m.term:<5} following {m.following or '-'}"
                   + (f"  (saw no leader at term {m.vacant})" if m.vacant else "")
                   + ("" if m.healthy else "  UNHEALTHY"))


def main() -> None:
    """Entry point of the ``shaledb`` console script."""
    cli(prog_name="shaledb", auto_envvar_prefix="SHALEDB")


if __name__ == "__main__":
    main()

