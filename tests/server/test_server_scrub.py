"""The background scrub (``scrub-interval``, ``scrub-rate``, SCRUB NOW/STATUS/STOP) against a
real server over a socket: scheduled passes report clean in INFO, /metrics and /health; a byte
flipped in a table of the served database is found and reported (INFO, /metrics, a 503
``degraded`` /health naming the file, one structured log line per problem) while the server
keeps serving, and a later clean pass clears it; notices do not degrade health; a failed pass
and a dead scrub thread do; the settings change live (also the rate of a running pass); the
rate limit holds; SHUTDOWN in the middle of a slow pass returns at once; SCRUB is @admin."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import shaledb
from _helpers import SstLayout, files, flip
from conftest import pure_only
from shaledb.server.admin.logs import JsonFormatter

from ._server_support import HOST, ServerThread, free_port, run_server_process, wait_until

pytestmark = pytest.mark.timeout(120)


def _wait(cond: Callable[[], Any], timeout: float = 15.0) -> None:
    wait_until(cond, timeout, "condition", 0.02)


def _scrub(r: redis.Redis) -> dict[str, Any]:
    return r.info("scrub")


def _pass_done(r: redis.Redis, passes: int, key: str = "scrub_passes") -> dict[str, Any]:
    """Wait until ``key`` reaches ``passes`` and no pass runs; the scrub section then."""
    _wait(lambda: _scrub(r)[key] >= passes and not _scrub(r)["scrub_in_progress"])
    return _scrub(r)


def _fill(r: redis.Redis, n: int = 3000, size: int = 200) -> list[bytes]:
    """``n`` keys of incompressible values, flushed to a table by SAVE."""
    keys = [b"key:%06d" % i for i in range(n)]
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.set(k, os.urandom(size))
    pipe.execute()
    assert r.save()
    return keys


def _http(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _health(st: ServerThread) -> tuple[int, dict[str, Any]]:
    assert st.server is not None and st.server.metrics_port
    status, body = _http(st.server.metrics_port, "/health")
    return status, json.loads(body)


def _metrics(st: ServerThread) -> dict[str, float]:
    """The scrub samples of /metrics, by sample line name (labels included)."""
    assert st.server is not None and st.server.metrics_port
    status, body = _http(st.server.metrics_port, "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("shaledb_scrub_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_scheduled_passes_report_clean(server_factory) -> None:
    st = server_factory(metrics_port=0, scrub_interval=0.5)
    r = st.client()
    _fill(r, n=500)
    first = _pass_done(r, 1)
    info = _pass_done(r, first["scrub_passes"] + 1)  # and the schedule repeats
    assert info["scrub_enabled"] == 1 and info["scrub_interval"] == 0.5
    assert info["scrub_last_status"] == "ok" and info["scrub_last_trigger"] == "schedule"
    assert info["scrub_damage_count"] == 0 and info["scrub_notice_count"] == 0
    assert info["scrub_last_bytes"] > 100_000  # the table of 500 x 200 random bytes
    assert info["scrub_bytes_read"] > info["scrub_last_bytes"] and info["scrub_passes"] >= 2
    assert abs(info["scrub_last_start_time"] - time.time()) < 10
    assert info["scrub_next_time"] >= info["scrub_last_start_time"]
    assert info["scrub_last_problem"] == "" and info["scrub_passes_failed"] == 0
    m = _metrics(st)
    assert m["shaledb_scrub_enabled"] == 1
    assert m['shaledb_scrub_passes_total{result="ok"}'] >= 2
    assert m['shaledb_scrub_passes_total{result="damaged"}'] == 0
    assert m["shaledb_scrub_read_bytes_total"] >= info["scrub_bytes_read"]
    assert m["shaledb_scrub_last_damage"] == 0 and m["shaledb_scrub_last_failed"] == 0
    assert m["shaledb_scrub_last_completion_timestamp_seconds"] >= info[
        "scrub_last_start_time"]
    status, health = _health(st)
    assert status == 200 and health["status"] == "ok"


def test_a_flipped_byte_is_found_and_reported_while_serving(server_factory, caplog) -> None:
    caplog.set_level(logging.INFO, logger="shaledb.server.scrub")
    st = server_factory(metrics_port=0)
    r = st.client()
    keys = _fill(r)
    assert st.server is not None
    (sst,) = files(st.server.db.path, ".sst")
    name = os.path.basename(sst)
    layout = SstLayout(sst)
    assert len(layout.data_blocks) > 4
    last_key, offset, size = layout.data_blocks[2]
    flip(sst, offset + size // 2)
    assert r.execute_command("SCRUB", "NOW") == b"Scrub started"
    info = _pass_done(r, 1)
    assert info["scrub_last_status"] == "damaged" and info["scrub_last_trigger"] == "command"
    assert info["scrub_damage_count"] == 1 and info["scrub_damage_found"] == 1
    assert info["scrub_last_problem"] == f"{name} checksum at offset {offset}"
    assert info["scrub_damaged_files"] == name
    status = r.execute_command("SCRUB", "STATUS")  # a map in RESP3, pairs in RESP2
    fields = status if isinstance(status, dict) else dict(
        zip(status[::2], status[1::2], strict=True))
    assert fields[b"last_status"] == b"damaged" and fields[b"damage_count"] == 1
    (line,) = fields[b"problems"]
    assert line.startswith(b"DAMAGE") and name.encode() in line and b"checksum" in line
    m = _metrics(st)
    assert m["shaledb_scrub_last_damage"] == 1
    assert m["shaledb_scrub_damage_found_total"] == 1
    assert m['shaledb_scrub_passes_total{result="damaged"}'] == 1
    code, health = _health(st)
    assert code == 503 and health["status"] == "degraded"
    assert name in health["reason"] and "checksum" in health["reason"]
    assert health["scrub"]["damaged_files"] == [name]
    # One log line per problem, with the problem's fields for JSON logs.
    (rec,) = [x for x in caplog.records if getattr(x, "event", None) == "scrub_problem"]
    assert rec.levelno == logging.ERROR and name in rec.getMessage()
    as_json = json.loads(JsonFormatter().format(rec))
    assert as_json["file"] == name and as_json["kind"] == "checksum"
    assert as_json["severity"] == "damage" and as_json["offset"] == offset
    # The server goes on serving: keys outside the damaged block, and writes.
    outside = [k for k in keys if not k <= last_key[1:]][:50]
    assert outside and all(r.get(k) is not None for k in outside)
    assert r.set("after", "damage") and r.get("after") == b"damage"
    # The byte put back (a restore, in real life): the next pass is clean, health recovers.
    flip(sst, offset + size // 2)
    r.execute_command("SCRUB", "NOW")
    info = _pass_done(r, 2)
    assert info["scrub_last_status"] == "ok" and info["scrub_damage_count"] == 0
    assert info["scrub_damage_found"] == 1  # the counter keeps what was found
    assert _health(st)[0] == 200


def test_a_stopped_pass_still_reports_the_damage_it_found(server_factory) -> None:
    st = server_factory(metrics_port=0, scrub_rate=40_000)
    r = st.client()
    _fill(r)
    assert st.server is not None
    (sst,) = files(st.server.db.path, ".sst")
    _, offset, size = SstLayout(sst).data_blocks[1]
    flip(sst, offset + size // 2)
    r.execute_command("SCRUB", "NOW")  # 600 KB at 40 KB/s: 15 s; block 1 within ~2 s
    time.sleep(3.5)
    assert _scrub(r)["scrub_in_progress"] == 1
    r.execute_command("SCRUB", "STOP")
    info = _pass_done(r, 1, key="scrub_passes_stopped")
    assert info["scrub_passes"] == 0 and info["scrub_last_partial"] == 1
    assert info["scrub_last_status"] == "damaged" and info["scrub_damage_count"] == 1
    assert _health(st)[0] == 503


def test_notices_show_but_do_not_degrade_health(server_factory) -> None:
    st = server_factory(metrics_port=0)
    r = st.client()
    _fill(r, n=200)
    assert st.server is not None
    lost = os.path.join(st.server.db.path, "lost")
    os.makedirs(lost, mode=0o700, exist_ok=True)
    with open(os.path.join(lost, "000099.log.cut"), "wb") as fh:
        fh.write(b"bytes recovery cut")
    r.execute_command("SCRUB", "NOW")
    info = _pass_done(r, 1)
    assert info["scrub_last_status"] == "ok" and info["scrub_notice_count"] == 1
    assert info["scrub_last_problem"] == "lost/000099.log.cut lost_file"
    assert _metrics(st)["shaledb_scrub_last_notices"] == 1
    assert _health(st)[0] == 200


@pure_only
def test_a_failed_pass_and_a_dead_thread_degrade_health(server_factory, monkeypatch) -> None:
    st = server_factory(metrics_port=0)
    r = st.client()
    assert st.server is not None
    db = st.server.db

    def broken(**kwargs: Any) -> Any:
        raise shaledb.StorageError("EIO reading MANIFEST-000005 (test)")

    monkeypatch.setattr(db, "verify", broken)
    r.execute_command("SCRUB", "NOW")
    info = _pass_done(r, 1)
    assert info["scrub_last_status"] == "error" and info["scrub_passes_failed"] == 1
    assert "EIO reading MANIFEST-000005" in info["scrub_last_error"]
    assert _metrics(st)["shaledb_scrub_last_failed"] == 1
    code, health = _health(st)
    assert code == 503 and health["status"] == "degraded" and "failed" in health["reason"]
    # A bug that kills the thread is not silent either.
    scrubber = st.server.scrubber

    def bug(trigger: str) -> None:
        raise RuntimeError("a bug in the scrubber")

    monkeypatch.setattr(scrubber, "_pass", bug)
    r.execute_command("SCRUB", "NOW")
    _wait(lambda: not scrubber.alive)
    code, health = _health(st)
    assert code == 503 and "scrub thread stopped" in health["reason"]
    assert "a bug in the scrubber" in _scrub(r)["scrub_thread_error"]
    with pytest.raises(redis.ResponseError, match="scrub thread is not running"):
        r.execute_command("SCRUB", "NOW")


def test_settings_change_live_also_for_a_running_pass(server_factory) -> None:
    st = server_factory(metrics_port=0)
    r = st.client(decode_responses=True)
    _fill(r, n=1000)
    assert r.config_get("scrub-*") == {"scrub-interval": "0", "scrub-rate": "16777216"}
    info = _scrub(r)
    assert info["scrub_enabled"] == 0 and info["scrub_next_time"] == 0
    time.sleep(0.3)
    assert _scrub(r)["scrub_passes"] == 0  # off by default: nothing runs on its own
    r.config_set("scrub-interval", "0.3")
    assert _scrub(r)["scrub_enabled"] == 1 and _scrub(r)["scrub_next_time"] > 0
    passes = _pass_done(r, 1)["scrub_passes"]
    r.config_set("scrub-interval", "0")
    time.sleep(0.2)  # a pass that started just before may end
    passes = _scrub(r)["scrub_passes"]
    time.sleep(0.8)
    assert _scrub(r)["scrub_passes"] == passes  # off again
    for bad in ("-1", "abc", "inf"):
        with pytest.raises(redis.ResponseError, match="scrub-interval"):
            r.config_set("scrub-interval", bad)
    with pytest.raises(redis.ResponseError, match="scrub-rate"):
        r.config_set("scrub-rate", "-5")
    # A pass at 4 KiB/s would take minutes; lifting the limit finishes it at once.
    r.config_set("scrub-rate", "4k")
    assert r.config_get("scrub-rate") == {"scrub-rate": "4000"}
    r.execute_command("SCRUB", "NOW")
    _wait(lambda: _scrub(r)["scrub_in_progress"] == 1)
    time.sleep(0.3)
    assert _scrub(r)["scrub_in_progress"] == 1
    started = time.monotonic()
    r.config_set("scrub-rate", "0")
    _pass_done(r, passes + 1)
    assert time.monotonic() - started < 3
    assert _scrub(r)["scrub_last_status"] == "ok"


def test_rate_limit_is_respected_and_passes_never_overlap(server_factory) -> None:
    st = server_factory(metrics_port=0, scrub_rate=0)
    r = st.client()
    keys = _fill(r)
    r.execute_command("SCRUB", "NOW")
    total = _pass_done(r, 1)["scrub_last_bytes"]
    assert total > 600_000
    rate = int(total / 1.5)  # about 1.5 s
    r.config_set("scrub-rate", rate)
    started = time.monotonic()
    assert r.execute_command("SCRUB", "NOW") == b"Scrub started"
    _wait(lambda: _scrub(r)["scrub_in_progress"] == 1)
    with pytest.raises(redis.ResponseError, match="Scrub already in progress"):
        r.execute_command("SCRUB", "NOW")
    # The loop serves clients meanwhile.
    t0 = time.monotonic()
    assert r.get(keys[7]) is not None and r.ping()
    assert time.monotonic() - t0 < 0.5
    info = _pass_done(r, 2)
    elapsed = time.monotonic() - started
    assert info["scrub_last_bytes"] == total
    assert info["scrub_last_duration_sec"] >= 0.98 * total / rate
    assert elapsed >= 0.98 * total / rate
    assert info["scrub_last_duration_sec"] <= total / rate + 2.0
    assert info["scrub_passes"] == 2 and info["scrub_passes_stopped"] == 0


def test_scrub_stop_and_command_errors(server_factory) -> None:
    st = server_factory(scrub_rate=4096)
    r = st.client()
    _fill(r, n=300)
    with pytest.raises(redis.ResponseError, match="No scrub in progress"):
        r.execute_command("SCRUB", "STOP")
    r.execute_command("SCRUB", "NOW")
    _wait(lambda: _scrub(r)["scrub_in_progress"] == 1)
    started = time.monotonic()
    assert r.execute_command("SCRUB", "STOP") == b"OK"
    info = _pass_done(r, 1, key="scrub_passes_stopped")
    assert time.monotonic() - started < 1.0
    # A stopped pass is not a completed one: the last result stays "none".
    assert info["scrub_passes"] == 0 and info["scrub_last_status"] == "none"
    assert info["scrub_bytes_read"] < 300 * 200
    with pytest.raises(redis.ResponseError, match="unknown subcommand"):
        r.execute_command("SCRUB", "FAST")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("SCRUB", "NOW", "please")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("SCRUB")
    assert b"STATUS" in r.execute_command("SCRUB", "HELP")


def test_scrub_needs_admin_rights(server_factory) -> None:
    st = server_factory()
    admin = st.client(decode_responses=True)
    assert "scrub" in admin.acl_cat("admin") and "scrub" in admin.acl_cat("dangerous")
    admin.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-@admin")
    app = st.client(username="app", password="pw")
    for sub in ("NOW", "STATUS", "STOP"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command("SCRUB", sub)
    assert app.execute_command("SCRUB", "HELP")  # help is not @admin, as CONFIG HELP
    assert _scrub(admin)["scrub_passes"] == 0 and not _scrub(admin)["scrub_in_progress"]
    admin.execute_command("ACL", "SETUSER", "ops", "on", ">pw", "+scrub|status")
    ops = st.client(username="ops", password="pw")
    assert ops.execute_command("SCRUB", "STATUS")
    with pytest.raises(redis.exceptions.NoPermissionError):
        ops.execute_command("SCRUB", "NOW")


def test_shutdown_during_a_slow_pass_returns_promptly(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "db"
    proc = run_server_process(data, port, "--scrub-rate", "4k", "--scrub-interval", "3600",
                              "--log-level", "info", "--log-format", "json")
    try:
        r = redis.Redis(host=HOST, port=port, socket_timeout=10,
                        retry=Retry(NoBackoff(), 0))  # no reconnecting after SHUTDOWN
        _fill(r, n=1000)
        assert r.config_get("scrub-*") == {"scrub-interval": "3600",
                                           "scrub-rate": "4000"}
        r.execute_command("SCRUB", "NOW")  # at 4000 bytes/s: about a minute
        _wait(lambda: _scrub(r)["scrub_in_progress"] == 1)
        time.sleep(0.5)
        assert _scrub(r)["scrub_in_progress"] == 1
        started = time.monotonic()
        r.shutdown()
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5.0  # the pass alone would take a minute
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        _, err = proc.communicate()
    lines = [json.loads(x) for x in err.decode().splitlines() if x.strip()]
    assert any(x["logger"] == "shaledb.server.scrub" and "stopped" in x["msg"]
               and "shutdown" in x["msg"] for x in lines), lines
    assert shaledb.verify(str(data)).ok  # closed cleanly, nothing damaged


def test_scrub_settings_in_the_toml_file_flags_and_validation(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from shaledb.cli import cli
    from shaledb.server import ServerConfig

    defaults = ServerConfig()
    assert defaults.scrub_interval == 0 and defaults.scrub_rate == 16 << 20
    path = tmp_path / "shaledb.toml"
    path.write_text('[server]\nscrub-interval = 86400\nscrub_rate = 8388608\n')
    cfg = ServerConfig.load(str(path))
    assert cfg.scrub_interval == 86400 and cfg.scrub_rate == 8 << 20
    assert ServerConfig.load(str(path), {"scrub_rate": 1000}).scrub_rate == 1000
    for bad in ({"scrub_interval": -1}, {"scrub_interval": True}, {"scrub_interval": "1h"},
                {"scrub_interval": float("inf")}, {"scrub_rate": -1}, {"scrub_rate": 1.5},
                {"scrub_rate": "32mb"}):
        with pytest.raises(shaledb.InvalidArgument, match="scrub"):
            ServerConfig(**bad)  # type: ignore[arg-type]
    for flags, message in ((["--scrub-rate", "banana"], "memory value"),
                           (["--scrub-interval", "-3"], "scrub-interval")):
        done = CliRunner().invoke(cli, ["serve", "--dir", str(tmp_path / "db"), *flags])
        assert done.exit_code == 2 and message in done.output, done.output
