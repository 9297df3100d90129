"""Data-safety review of the shared turn commit, held replies and the keyspace. Most tests
pin down a defect found in review (a reply that depended on another client's uncommitted
write, replies reordered by a live switch of appendfsync, commands run after an output
buffer disconnection, a disconnection counted twice); two guard what review found sound
(flush cycles reusing every physical id across SIGKILLs, WATCH under concurrent writers).
Real servers on 127.0.0.1, raw sockets and redis-py."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest

import shaledb
from shaledb.server import ServerConfig
from shaledb.testing import FaultInjectionFS

from ._server_support import HOST, ServerThread, raw_connect, read_reply, read_until_closed


def _cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _line(s: Any) -> bytes:
    """One reply line (status, error, integer, or a bulk string's header and body)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    if data.startswith(b"$") and not data.startswith(b"$-1"):
        n = int(data[1:-2])
        body = read_reply(s, n + 2)
        data += body
    return data


def _hold_loop(st: ServerThread, seconds: float) -> None:
    """Block the server's event loop for ``seconds``: requests sent meanwhile are all served
    by the next turn, in the order they arrived."""
    assert st.loop is not None
    st.loop.call_soon_threadsafe(time.sleep, seconds)
    time.sleep(0.05)


def _connected(st: ServerThread, n: int) -> list[Any]:
    socks = [raw_connect(st.port) for _ in range(n)]
    for s in socks:
        s.sendall(_cmd(b"PING"))
        assert read_reply(s, 7) == b"+PONG\r\n"
    return socks


# -- a write command's reply must not depend on another client's uncommitted write ---------

@pytest.mark.parametrize("probe", [
    (b"SETNX", b"k", b"mine"),      # answers 0 (exists) without writing
    (b"GETEX", b"k"),               # a write command that reads only
    (b"SET", b"k", b"x", b"NX"),    # nil without writing
    (b"INCR", b"k"),                # an error computed from the other client's value
])
def test_a_write_command_that_read_an_uncommitted_write_waits_for_its_commit(
        tmp_path, probe) -> None:
    """Client A's SET is buffered in the turn's shared transaction; client B's command (a
    write command that ends up writing nothing) reads A's value in the same turn. When the
    commit then fails, A's write never existed: B must not have been told it did."""
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs)
    st = ServerThread(ServerConfig(port=0, host=HOST, dir=path), db)
    try:
        a, b = _connected(st, 2)
        fs.inject("write", ".log", count=None)
        _hold_loop(st, 0.4)
        a.sendall(_cmd(b"SET", b"k", b"uncommitted"))
        time.sleep(0.1)  # A's request is served first in the turn
        b.sendall(_cmd(*probe))
        assert _line(a).startswith(b"-MISCONF")
        got = _line(b)
        assert got.startswith(b"-MISCONF"), got
        c = st.client()
        assert c.get("k") is None  # the write A's value came from never happened
        c.close()
    finally:
        st.stop()
        with contextlib.suppress(shaledb.ShaleError):
            db.close()


def test_a_write_command_that_read_an_uncommitted_write_waits_for_the_fsync(
        server_factory) -> None:
    """appendfsync always: B's SETNX found A's key (written in the same turn, fsync not
    done): its reply waits for that fsync like A's OK."""
    st = server_factory(appendfsync="always")
    a, b = _connected(st, 2)
    release = st.call(lambda: _block_executor(st))
    try:
        _hold_loop(st, 0.3)
        a.sendall(_cmd(b"SET", b"k", b"v"))
        time.sleep(0.1)
        b.sendall(_cmd(b"SETNX", b"k", b"mine"))
        time.sleep(0.5)  # the turn is over; the fsync waits behind the blocked executor
        for s in (a, b):
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(100)  # nothing acknowledged before the fsync
            s.setblocking(True)
    finally:
        release()
    assert _line(a) == b"+OK\r\n"
    assert _line(b) == b":0\r\n"


def _block_executor(st: ServerThread) -> Any:
    """Occupy the server's I/O thread (where fsyncs run) until the returned function is
    called."""
    import threading

    gate = threading.Event()
    assert st.server is not None
    st.server._executor.submit(gate.wait, 30)
    return gate.set


# -- a live switch of appendfsync must not reorder held replies ---------------------------

@pytest.mark.parametrize("mode", ["everysec", "no"])
def test_switching_appendfsync_keeps_held_replies_in_order(server_factory, mode) -> None:
    st = server_factory(appendfsync="always")
    a, admin = _connected(st, 2)
    release = st.call(lambda: _block_executor(st))
    try:
        a.sendall(_cmd(b"SET", b"k", b"v"))  # held: its fsync waits behind the executor
        time.sleep(0.2)
        admin.sendall(_cmd(b"CONFIG", b"SET", b"appendfsync", mode.encode()))
        assert _line(admin) == b"+OK\r\n"
        a.sendall(_cmd(b"PING") + _cmd(b"SET", b"k2", b"v2"))
        time.sleep(0.2)
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(100)  # the PING's and SET's replies queue behind the held OK
        a.setblocking(True)
    finally:
        release()
    assert read_reply(a, 15) == b"+OK\r\n+PONG\r\n+OK\r\n"


# -- nothing runs after an output buffer disconnection ----------------------------------

def test_commands_after_an_overflowing_reply_do_not_run(server_factory) -> None:
    st = server_factory(client_output_buffer_limit=64 * 1024)
    c = st.client()
    c.mset({b"key%06d" % i: b"v" for i in range(10_000)})
    s = raw_connect(st.port)
    s.sendall(_cmd(b"KEYS", b"*") + _cmd(b"SET", b"after", b"1")
              + _cmd(b"INCR", b"counter"))
    read_until_closed(s)
    s.close()
    # The client was disconnected at KEYS: like Redis, the server runs nothing after it.
    assert c.get("after") is None and c.get("counter") is None
    c.close()


def test_parked_replies_past_the_output_limit_disconnect_once(server_factory) -> None:
    """Several reply batches parked for one commit, the first already past
    client_output_buffer_limit: the client is disconnected once (and counted once)."""
    st = server_factory(client_output_buffer_limit=300_000)
    c = st.client()
    c.set("big", b"x" * 200_000)
    s = raw_connect(st.port)
    # SET makes the turn's transaction dirty, so each GETEX reply (200 kB) is parked until
    # the commit; they fill two batches of OUTPUT_BATCH bytes.
    s.sendall(_cmd(b"SET", b"x", b"1") + _cmd(b"GETEX", b"big") * 4)
    read_until_closed(s, limit=1 << 24)
    s.close()
    assert c.info("stats")["client_output_buffer_limit_disconnections"] == 1
    c.close()


# -- crash: flushed keys never come back, reused physical ids never lose live keys ---------

def test_flush_cycles_reusing_every_physical_id_survive_sigkill(tmp_path) -> None:
    """More flushes of non-empty databases than there are spare physical ids, so ids are
    purged and mapped again (across restarts too), with expiring keys for the sweeper and
    a SIGKILL after each round: no flushed key comes back, no live key is lost."""
    import os
    import signal

    import redis

    from shaledb.server.keyspace.dbmap import MAP_KEY, PHYSICAL_DATABASES, decode_map

    from ._server_support import free_port, run_server_process

    data = tmp_path / "db"
    port = free_port()
    keep: dict[bytes, bytes] = {}
    rounds, flushes = 3, 110  # 330 flushes > 224 spare ids
    proc = run_server_process(data, port)
    try:
        for rnd in range(rounds):
            c = redis.Redis(host=HOST, port=port, socket_timeout=10)
            for i in range(flushes):
                db = i % 3
                c.execute_command("SELECT", db)
                c.mset({b"f%d:%d:%d" % (rnd, i, j): b"gone" for j in range(3)})
                c.set(b"e%d:%d" % (rnd, i), b"gone", px=1)  # expired: swept or flushed
                assert c.flushdb() is True
                c.execute_command("SELECT", 5)
                key = b"keep%d:%d" % (rnd, i)
                c.set(key, b"v%d" % i, px=3_600_000 if i % 2 else None)
                keep[key] = b"v%d" % i
            c.close()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            proc = run_server_process(data, port)
            c = redis.Redis(host=HOST, port=port, socket_timeout=10)
            for db in range(3):
                c.execute_command("SELECT", db)
                assert c.dbsize() == 0 and c.keys() == []
            c.execute_command("SELECT", 5)
            keys = list(keep)
            assert c.dbsize() == len(keep)
            assert c.mget(keys) == [keep[k] for k in keys]
            c.close()
        # The raw directory: the mapped ids hold exactly the live keys.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        with shaledb.open(data) as db:
            mapping = decode_map(db.get(MAP_KEY))
            phys5 = mapping[5]
            live = {k[1:] for k, _ in db.range(bytes((phys5,)), bytes((phys5 + 1,)))}
            assert live == set(keep)
            for d in range(3):
                p = mapping[d]
                assert list(db.range(bytes((p,)), bytes((p + 1,)))) == []
            assert all(p < PHYSICAL_DATABASES for p in mapping)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- WATCH under concurrency: no lost update --------------------------------------------

def test_optimistic_increments_from_many_clients_lose_no_update(server) -> None:
    """Clients increment one counter with WATCH/GET/MULTI/SET/EXEC while others write it
    blindly (INCR) in the same turns: every EXEC that succeeded is counted exactly once."""
    import threading

    import redis

    done = {"exec": 0, "incr": 0}
    lock = threading.Lock()

    def optimistic() -> None:
        c = server.client()
        for _ in range(60):
            while True:
                with c.pipeline() as p:
                    try:
                        p.watch("n")
                        value = int(p.get("n") or 0)
                        p.multi()
                        p.set("n", value + 1)
                        p.execute()
                        break
                    except redis.WatchError:
                        continue
            with lock:
                done["exec"] += 1
        c.close()

    def blind() -> None:
        c = server.client()
        for _ in range(200):
            c.incr("n")
            with lock:
                done["incr"] += 1
        c.close()

    threads = [threading.Thread(target=optimistic) for _ in range(4)]
    threads += [threading.Thread(target=blind) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    c = server.client()
    assert int(c.get("n")) == done["exec"] + done["incr"] == 4 * 60 + 2 * 200
    c.close()


def test_reads_do_not_wait_for_an_fsync_unless_they_committed_writes(server_factory) -> None:
    """appendfsync always: a read in a later turn is answered while an fsync it does not
    need is still pending; a read that itself committed another client's write of its
    turn (and may return it) is answered only after that write's fsync."""
    st = server_factory(appendfsync="always")
    a, b = _connected(st, 2)
    b.sendall(_cmd(b"SET", b"durable", b"1"))
    assert _line(b) == b"+OK\r\n"
    release = st.call(lambda: _block_executor(st))
    try:
        a.sendall(_cmd(b"SET", b"k", b"v"))  # held: its fsync waits behind the executor
        time.sleep(0.2)
        b.sendall(_cmd(b"GET", b"durable"))
        assert _line(b) == b"$1\r\n1\r\n"  # answered although A's fsync has not run
        _hold_loop(st, 0.3)
        a.sendall(_cmd(b"SET", b"k2", b"v2"))
        time.sleep(0.1)  # A's request is served first in the turn
        b.sendall(_cmd(b"GET", b"k2"))
        time.sleep(0.5)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(100)  # B's GET returned A's non-durable write: it waits
        b.setblocking(True)
    finally:
        release()
    assert _line(a) == b"+OK\r\n"
    assert _line(a) == b"+OK\r\n"
    assert _line(b) == b"$2\r\nv2\r\n"


def test_a_bug_in_a_command_takes_back_its_writes_and_keeps_the_connection(server) -> None:
    """A handler that raises something unexpected after buffering a write: its write is
    taken back (it must not be committed with the other clients' writes of the turn), the
    client gets an error, the connection and the server go on, also inside EXEC."""
    import dataclasses

    def broken(ctx: Any, argv: list[bytes]) -> Any:
        ctx.txn.set(ctx.db, b"half", b"written")
        raise RuntimeError("a bug")

    assert server.server is not None
    table = server.server.dispatcher.table
    server.call(lambda: table.__setitem__(b"touch", dataclasses.replace(
        table[b"touch"], handler=broken)))
    s = raw_connect(server.port)
    s.sendall(_cmd(b"SET", b"before", b"1") + _cmd(b"TOUCH", b"x") + _cmd(b"SET", b"after", b"2")
              + _cmd(b"MULTI") + _cmd(b"SET", b"in-exec", b"3") + _cmd(b"TOUCH", b"y")
              + _cmd(b"EXEC") + _cmd(b"GET", b"half"))
    assert _line(s) == b"+OK\r\n"
    assert _line(s).startswith(b"-ERR internal error in 'touch' (RuntimeError)")
    assert _line(s) == b"+OK\r\n"
    assert _line(s) == b"+OK\r\n"  # MULTI
    assert _line(s) == b"+QUEUED\r\n"
    assert _line(s) == b"+QUEUED\r\n"
    assert _line(s) == b"*2\r\n"
    assert _line(s) == b"+OK\r\n"
    assert _line(s).startswith(b"-ERR internal error in 'touch'")
    assert _line(s) == b"$-1\r\n"  # the broken command's write never happened
    c = server.client()
    assert c.mget("before", "after", "in-exec", "half") == [b"1", b"2", b"3", None]
    assert c.ping()
    c.close()
    s.close()
