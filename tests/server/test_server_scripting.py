"""Lua scripting (EVAL, EVALSHA, SCRIPT, FUNCTION/FCALL) over a socket with redis-py: Redis'
conversions, the libraries, the sandbox refusing escapes, atomicity under concurrent
clients, redis-py's Script and Lock, ACL on every redis.call, BUSY and SCRIPT KILL, and the
bounds (script size, Lua memory, script cache, reply size)."""

from __future__ import annotations

import hashlib
import threading

import pytest
import redis

from ._server_support import RawClient, wait_until


def test_eval_conversions_both_ways(r: redis.Redis) -> None:
    assert r.eval("return 'hello'", 0) == b"hello"
    assert r.eval("return 3.99", 0) == 3  # floats truncated to integers
    assert r.eval("return -3.99", 0) == -3
    assert r.eval("return true", 0) == 1
    assert r.eval("return false", 0) is None
    assert r.eval("return nil", 0) is None
    assert r.eval("return {1, 2, nil, 3}", 0) == [1, 2]  # up to the first nil
    assert r.eval("return {1, {2, {'x'}}}", 0) == [1, [2, [b"x"]]]
    assert r.eval("return {ok='FINE'}", 0) == b"FINE"
    assert r.eval("return redis.status_reply('OK')", 0) == b"OK"
    with pytest.raises(redis.ResponseError, match="^My Error$"):
        r.eval("return {err='My Error'}", 0)
    with pytest.raises(redis.ResponseError, match="^My Error$"):
        r.eval("return redis.error_reply('My Error')", 0)
    assert r.eval("return {KEYS[1], ARGV[1], #KEYS, #ARGV}", 2, "a", "b", "c", "d") == \
        [b"a", b"c", 2, 2]
    r.set("s", "v")
    r.rpush("l", "a", "b")
    assert r.eval("return {redis.call('get', KEYS[1]), redis.call('get', 'nokey') == false,"
                  " redis.call('incr', 'n'), redis.call('lrange', 'l', 0, -1),"
                  " redis.call('set', 'x', 1)['ok'], redis.call('type', 's')['ok']}",
                  1, "s") == [b"v", 1, 1, [b"a", b"b"], b"OK", b"string"]
    assert r.eval("return redis.pcall('incr', 's')['err']", 0) == \
        b"ERR value is not an integer or out of range"
    assert r.eval("return redis.call('hgetall', KEYS[1])", 1, "nohash") == []


def test_errors_are_worded_as_redis(r: redis.Redis) -> None:
    sha = "9851144f39f03a0d597a980c5aa79c80cb696891"
    with pytest.raises(redis.ResponseError) as e:
        r.eval("error('x')", 0)
    assert str(e.value) == f"user_script:1: x script: {sha}, on @user_script:1."
    with pytest.raises(redis.ResponseError, match="Unknown Redis command called from script "
                                                  "script: .*, on @user_script:1"):
        r.eval("return redis.call('nosuch')", 0)
    with pytest.raises(redis.ResponseError, match="Wrong number of args calling Redis"):
        r.eval("return redis.call('set', 'a')", 0)
    with pytest.raises(redis.ResponseError, match="This Redis command is not allowed from"):
        r.eval("return redis.call('eval', 'return 1', 0)", 0)
    with pytest.raises(redis.ResponseError, match="This Redis command is not allowed from"):
        r.eval("return redis.call('blpop', 'nolist', 0)", 0)
    with pytest.raises(redis.ResponseError, match="must be strings or integers"):
        r.eval("return redis.call('set', 'x', {})", 0)
    with pytest.raises(redis.ResponseError, match="Error compiling script"):
        r.eval("return xxx(", 0)
    with pytest.raises(redis.ResponseError, match="Number of keys can't be greater"):
        r.eval("return 1", 3, "a")
    with pytest.raises(redis.ResponseError, match="Number of keys can't be negative"):
        r.eval("return 1", -1)


def test_evalsha_noscript_and_script_commands(r: redis.Redis) -> None:
    with pytest.raises(redis.exceptions.NoScriptError):
        r.evalsha("ffd632c7d33e571e9f24556ebed26c3479a87130", 0)
    sha = r.script_load("return ARGV[1]")
    assert sha == "098e0f0d1448c0a81dafe820f66d460eb09263da"
    assert r.evalsha(sha, 0, "x") == b"x"
    assert r.evalsha(sha.upper(), 0, "y") == b"y"
    assert r.script_exists(sha, "0" * 40) == [True, False]
    assert r.script_flush() is True
    assert r.script_exists(sha) == [False]
    with pytest.raises(redis.exceptions.NoScriptError):
        r.evalsha(sha, 0)
    # EVAL caches what it ran: EVALSHA finds it.
    r.eval("return 7", 0)
    assert r.evalsha(hashlib.sha1(b"return 7").hexdigest(), 0) == 7


def test_redis_py_script_objects_reload_after_flush(r: redis.Redis) -> None:
    incr_by = r.register_script("return redis.call('incrby', KEYS[1], ARGV[1])")
    assert incr_by(keys=["c"], args=[5]) == 5
    r.script_flush()
    assert incr_by(keys=["c"], args=[2]) == 7  # NOSCRIPT -> redis-py loads it again


def test_eval_ro_refuses_writes(r: redis.Redis) -> None:
    r.set("k", "v")
    assert r.eval_ro("return redis.call('get', KEYS[1])", 1, "k") == b"v"
    with pytest.raises(redis.ResponseError, match="Write commands are not allowed from "
                                                  "read-only scripts"):
        r.eval_ro("return redis.call('del', KEYS[1])", 1, "k")
    sha = r.script_load("#!lua flags=no-writes\nreturn redis.call('set', 'k', 'w')")
    with pytest.raises(redis.ResponseError, match="Write commands are not allowed"):
        r.evalsha(sha, 0)
    assert r.get("k") == b"v"


def test_libraries(r: redis.Redis) -> None:
    assert r.eval("return cjson.encode({1, 2, {a=1}})", 0) == b'[1,2,{"a":1}]'
    assert r.eval("return cjson.encode(cjson.decode(ARGV[1]))", 0,
                  '{"a":null,"b":[1,2.5]}') in (b'{"a":null,"b":[1,2.5]}',
                                                b'{"b":[1,2.5],"a":null}')
    assert r.eval("return cjson.decode('[1,2,3]')[3]", 0) == 3
    assert r.eval("return cmsgpack.unpack(cmsgpack.pack({1, 2, 'x'}))", 0) == [1, 2, b"x"]
    assert r.eval("return {cmsgpack.unpack(cmsgpack.pack(1, 'a', -5))}", 0) == [1, b"a", -5]
    assert r.eval("return bit.band(0xff, 0x0f)", 0) == 15
    assert r.eval("return bit.tohex(65535)", 0) == b"0000ffff"
    assert r.eval("return bit.bxor(5, 3)", 0) == 6
    assert r.eval("return tostring(bit.band(0xffffffff, -1))", 0) == b"-1"
    assert r.eval("return struct.pack('>I2', 258)", 0) == b"\x01\x02"
    assert r.eval("return {struct.unpack('<i4c2', struct.pack('<i4c2', -7, 'ab'))}", 0) == \
        [-7, b"ab", 7]
    assert r.eval("return redis.sha1hex('')", 0) == b"da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert r.eval("return string.format('%d-%s', 10, 'x')", 0) == b"10-x"
    assert r.eval("return math.floor(7.9)", 0) == 7
    assert r.eval("return table.concat({'a', 'b'}, ',')", 0) == b"a,b"
    assert r.eval("redis.log(redis.LOG_WARNING, 'from a script') return 1", 0) == 1


@pytest.mark.parametrize("escape, error", [
    ("return os.execute('true')", "nonexistent global variable 'os'"),
    ("return io.open('/etc/passwd')", "nonexistent global variable 'io'"),
    ("return require('os')", "nonexistent global variable 'require'"),
    ("return loadfile('/etc/passwd')", "nonexistent global variable 'loadfile'"),
    ("return dofile('/etc/passwd')", "nonexistent global variable 'dofile'"),
    ("return debug.getinfo(1)", "nonexistent global variable 'debug'"),
    ("return getfenv(0)", "nonexistent global variable 'getfenv'"),
    ("return package.loaded", "nonexistent global variable 'package'"),
    ("return python.eval('1')", "nonexistent global variable 'python'"),
    ("return coroutine.create(print)", "nonexistent global variable 'coroutine'"),
    # Lua 5.1 does not verify bytecode: loading a crafted chunk corrupts the VM.
    ("return loadstring(string.dump(function() end))()", "attempt to call a nil value"),
    ("x = 1", "Attempt to modify a readonly table"),
    ("_G.x = 1", "Attempt to modify a readonly table"),
    ("rawset(_G, 'x', 1)", "Attempt to modify a readonly table"),
    ("string.upper = nil", "Attempt to modify a readonly table"),
    ("rawset(string, 'upper', nil)", "Attempt to modify a readonly table"),
    ("redis.call = function() end", "Attempt to modify a readonly table"),
    ("setmetatable(_G, {})", "Attempt to modify a readonly table"),
    ("getmetatable(_G).__index = {}", "Attempt to modify a readonly table"),
    ("getmetatable('').__index.upper = nil", "attempt to index a boolean value"),
    ("return redis.call.__class__", "not accessible from a script|attempt to index"),
])
def test_sandbox_escapes_are_refused(r: redis.Redis, escape: str, error: str) -> None:
    with pytest.raises(redis.ResponseError, match=error):
        r.eval(escape, 0)
    # Nothing leaked: the libraries and globals are intact for the next script.
    assert r.eval("return string.upper('a')", 0) == b"A"
    assert r.eval("return rawget(_G, 'x') == nil", 0) == 1


def test_loadstring_runs_in_the_scripts_own_globals(r: redis.Redis) -> None:
    assert r.eval("return loadstring('return KEYS[1]')()", 1, "k") == b"k"
    with pytest.raises(redis.ResponseError, match="Attempt to modify a readonly table"):
        r.eval("loadstring('y = 1')()", 0)
    assert r.eval("return loadstring('\\27Lua')", 0) is None  # no bytecode


def test_scripts_are_atomic_under_concurrent_clients(server) -> None:
    """The django-redis failure of issue 13: concurrent increments through a script lose
    nothing (a GET+SET fallback lost 484 of 800)."""
    script = ("local v = tonumber(redis.call('get', KEYS[1]) or '0') "
              "redis.call('set', KEYS[1], v + 1) return v + 1")
    threads, per_thread = 8, 100

    def worker() -> None:
        c = server.client()
        s = c.register_script(script)
        for _ in range(per_thread):
            s(keys=["counter"])
        c.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert int(server.client().get("counter")) == threads * per_thread


def test_script_writes_are_one_batch(server, r: redis.Redis) -> None:
    """A script that fails half way keeps the writes it made (as Redis: no rollback), and
    all of them reach the keyspace together."""
    with pytest.raises(redis.ResponseError, match="boom"):
        r.eval("redis.call('set', 'a', 1) redis.call('set', 'b', 2) error('boom')", 0)
    assert r.mget("a", "b") == [b"1", b"2"]
    before = server.server.turn.commits
    r.eval("for i = 1, 50 do redis.call('set', 'k' .. i, i) end", 0)
    assert server.server.turn.commits - before == 1
    assert r.get("k50") == b"50"


def test_redis_py_lock_acquire_extend_release(server) -> None:
    c = server.client()
    lock = c.lock("resource", timeout=10)
    assert lock.acquire(blocking=False)
    other = server.client().lock("resource", timeout=10)
    assert not other.acquire(blocking=False)
    assert lock.extend(5)
    assert 10 < c.pttl("resource") / 1000 <= 15
    lock.release()
    assert c.get("resource") is None
    assert other.acquire(blocking=False)  # released for real: the lock held forever
    with pytest.raises(redis.exceptions.LockNotOwnedError):
        lock.do_release(b"a stale token")  # the release script refuses a token not held
    assert not lock.owned() and other.owned()
    other.release()


def test_functions_load_and_fcall(r: redis.Redis) -> None:
    code = ("#!lua name=mylib\n"
            "redis.register_function('myset', function(keys, args) "
            "return redis.call('set', keys[1], args[1]) end)\n"
            "redis.register_function{function_name='myget', callback=function(keys) "
            "return redis.call('get', keys[1]) end, flags={'no-writes'}}")
    assert r.function_load(code) == b"mylib"
    with pytest.raises(redis.ResponseError, match="already exists"):
        r.function_load(code)
    assert r.function_load(code, replace=True) == b"mylib"
    assert r.fcall("myset", 1, "fk", "fv") == b"OK"
    assert r.fcall_ro("myget", 1, "fk") == b"fv"
    with pytest.raises(redis.ResponseError, match="write flag using \\*_ro"):
        r.fcall_ro("myset", 1, "fk", "x")
    listed = r.function_list()
    assert listed[0][1] == b"mylib"
    r.function_delete("mylib")
    with pytest.raises(redis.ResponseError, match="Function not found"):
        r.fcall("myget", 1, "fk")


def test_acl_is_checked_on_every_redis_call(server, r: redis.Redis) -> None:
    r.acl_setuser("scripter", enabled=True, nopass=True,
                  commands=["+eval", "+evalsha", "+get", "+script"], keys=["allowed*"])
    c = server.client(username="scripter", password="x")
    r.set("allowed1", "yes")
    assert c.eval("return redis.call('get', 'allowed1')", 0) == b"yes"
    with pytest.raises(redis.exceptions.NoPermissionError,
                       match="can't run this command or subcommand"):
        c.eval("return redis.call('set', 'allowed1', 'no')", 0)
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.eval("return redis.call('get', 'secret')", 0)
    assert c.eval("return redis.pcall('get', 'secret')['err']", 0).startswith(b"NOPERM")
    assert c.eval("return redis.acl_check_cmd('set', 'allowed1', 'x')", 0) is None
    assert c.eval("return redis.acl_check_cmd('get', 'allowed1')", 0) == 1
    assert r.get("allowed1") == b"yes"
    entry = r.acl_log()[0]
    assert entry["context"] == "lua"


def test_busy_script_and_script_kill(server_factory) -> None:
    st = server_factory(busy_reply_threshold=200)
    c = st.client()
    c.set("x", "before")
    result: list[object] = []

    def run() -> None:
        try:
            result.append(st.client(socket_timeout=30).eval(
                "local i = 0 while true do i = i + 1 end", 0))
        except redis.ResponseError as exc:
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: _busy(c), timeout=10, what="BUSY")
    with pytest.raises(redis.ResponseError, match="BUSY Redis is busy running a script"):
        c.get("x")
    with pytest.raises(redis.ResponseError, match="BUSY"):
        c.ping()  # as in Redis: only SCRIPT KILL, SHUTDOWN NOSAVE and a few run
    assert c.execute_command("MULTI") == b"OK"  # allow-busy and keyless
    assert c.execute_command("DISCARD") == b"OK"
    assert c.script_kill() is True
    t.join(10)
    assert not t.is_alive()
    assert "Script killed by user with SCRIPT KILL" in str(result[0])
    assert c.get("x") == b"before"  # served again
    with pytest.raises(redis.ResponseError, match="NOTBUSY"):
        c.script_kill()


def _busy(c: redis.Redis) -> bool:
    try:
        c.get("probe")
    except redis.ResponseError as exc:
        return "BUSY" in str(exc)
    return False


def test_exec_refused_while_busy_discards_the_transaction(server_factory) -> None:
    # Redis' TCL unit/multi "EXEC and script timeout": EXEC refused with BUSY answered
    # plain BUSY and left the client in MULTI; Redis answers EXECABORT (naming BUSY), runs
    # none of the queued commands and ends the transaction. (The TCL test then never
    # reached its SCRIPT KILL and every later unit of the run got BUSY.)
    st = server_factory(busy_reply_threshold=100)
    c = st.client()
    c.set("xx", 1)
    tx = RawClient(st.port)
    assert tx("MULTI") == b"OK"
    assert tx("INCR", "xx") == b"QUEUED"
    t = threading.Thread(target=lambda: _eval_until_killed(st))
    t.start()
    wait_until(lambda: _busy(c), timeout=10, what="BUSY")
    reply = str(tx("EXEC"))
    assert reply.startswith("EXECABORT Transaction discarded because of: BUSY"), reply
    assert c.script_kill() is True
    t.join(10)
    assert c.get("xx") == b"1"  # none of it ran
    assert tx("PING", "asdf") == b"asdf"  # out of MULTI
    tx.close()


def _eval_until_killed(st) -> None:
    try:
        st.client(socket_timeout=30).eval("while true do end", 0)
    except redis.ResponseError:
        pass


def test_script_that_wrote_is_unkillable_and_commits_when_done(server_factory) -> None:
    st = server_factory(busy_reply_threshold=100)
    c = st.client()
    done: list[object] = []

    def run() -> None:
        done.append(st.client(socket_timeout=30).eval(
            "redis.call('set', 'w', 'written') local t = redis.call('time') "
            "local i = 0 while i < 30000000 do i = i + 1 end return 'finished'", 0))

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: _busy(c), timeout=10, what="BUSY")
    with pytest.raises(redis.ResponseError, match="UNKILLABLE"):
        c.script_kill()
    t.join(60)
    assert done == [b"finished"]
    assert c.get("w") == b"written"


def test_pcall_cannot_swallow_script_kill(server_factory) -> None:
    st = server_factory(busy_reply_threshold=100)
    c = st.client()
    result: list[object] = []

    def run() -> None:
        try:
            result.append(st.client(socket_timeout=30).eval(
                "while true do pcall(function() while true do end end) end", 0))
        except redis.ResponseError as exc:
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: _busy(c), timeout=10, what="BUSY")
    c.script_kill()
    t.join(10)
    assert "killed by user" in str(result[0])


def test_script_bounds(server_factory) -> None:
    st = server_factory(lua_max_script_bytes=1000, lua_script_cache_bytes=3000,
                        lua_max_memory=8 << 20)
    c = st.client()
    with pytest.raises(redis.ResponseError, match="over lua-max-script-bytes"):
        c.eval("return 1 --" + "x" * 1000, 0)
    # The cache keeps at most 3000 bytes of EVAL'd bodies: the oldest go first.
    bodies = [f"return {i} --" + "y" * 500 for i in range(10)]
    for body in bodies:
        c.eval(body, 0)
    assert st.server.scripts.cache_bytes <= 3000
    assert st.server.scripts.evicted >= 4
    oldest, newest = (hashlib.sha1(b.encode()).hexdigest() for b in (bodies[0], bodies[-1]))
    assert c.script_exists(oldest, newest) == [False, True]
    # SCRIPT LOAD's scripts are kept (a client loaded them to call by SHA).
    pinned = c.script_load("return 'pinned' --" + "z" * 500)
    for body in bodies:
        c.eval(body, 0)
    assert c.evalsha(pinned, 0) == b"pinned"
    # Lua memory: a table growing past lua-max-memory fails the script, not the server.
    with pytest.raises(redis.ResponseError, match="not enough memory"):
        c.eval("local t = {} for i = 1, 1e8 do t[i] = i end return 1", 0)
    assert c.eval("return 1", 0) == 1


def test_script_reply_is_charged_to_the_output_limit(server_factory) -> None:
    st = server_factory(client_output_buffer_limit=1 << 20)
    c = st.client()
    with pytest.raises(redis.ConnectionError):
        c.eval("local t = {} for i = 1, 200000 do t[i] = string.rep('x', 100) end "
               "return t", 0)
    assert st.client().ping()


def test_select_inside_a_script_does_not_leak(r: redis.Redis) -> None:
    r.set("k", "db0")
    assert r.eval("redis.call('select', 9) redis.call('set', 'k', 'db9') return 1", 0) == 1
    assert r.get("k") == b"db0"


def test_eval_inside_multi(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.eval("return redis.call('incr', 'm')", 0).eval("return redis.call('incr', 'm')", 0)
    assert pipe.execute() == [1, 2]


def test_raw_resp3_conversions(server) -> None:
    c = RawClient(server.port)
    c("HELLO", "3")
    assert c("EVAL", "redis.setresp(3) return redis.call('hgetall', 'nohash')", "0") in \
        ([], {})
    c.close()


def test_many_redis_calls_past_the_threshold(server_factory) -> None:
    """A script that calls redis 100,000 times past busy-reply-threshold (the Lua thread and
    the loop thread both busy with Python) ends, and its connection is usable after."""
    st = server_factory(busy_reply_threshold=10)
    c = st.client(socket_timeout=60)
    for _ in range(3):
        assert c.eval("for i = 1, 100000 do redis.call('ping') end return 'ok'", 0) == b"ok"
        assert c.ping()
    assert c.info("memory")["used_memory_lua"] > 0


def test_scripts_read_streams_but_never_block_on_them(server_factory) -> None:
    # Redis' TCL unit/scripting: XREAD and XREADGROUP run from a script (answering at once),
    # only their BLOCK option is refused; every blocking command was refused here.
    r = server_factory().client()
    r.xgroup_create("s", "g", "$", mkstream=True)
    assert r.eval("return redis.pcall('xread','STREAMS','s','$')", 1, "s") is None
    assert r.eval("return redis.pcall('xreadgroup','group','g','c','STREAMS','s','>')",
                  1, "s") is None
    for script, name in (("redis.call('xread','BLOCK',0,'STREAMS','s','$')", "xread"),
                         ("redis.call('xreadgroup','group','g','c','BLOCK',0,'STREAMS','s',"
                          "'>')", "xreadgroup")):
        with pytest.raises(redis.ResponseError,
                           match=f"{name} command is not allowed with BLOCK option from "
                                 "scripts"):
            r.eval(script, 1, "s")
    with pytest.raises(redis.ResponseError, match="not allowed from script"):
        r.eval("return redis.call('blpop','l',0)", 1, "l")


def test_cjson_encode_output_is_bounded(server_factory) -> None:
    # Review: cjson.encode ran outside the Lua memory limit, byte by byte in Python: one 4 MB
    # string referenced 50 times took 12.7 s and 190 MB before Lua refused the result, and
    # SCRIPT KILL could not stop it. The encoder now refuses past JSON_MAX_OUTPUT, at once.
    from shaledb.server.exec.lualib import JSON_MAX_OUTPUT

    r = server_factory().client()
    script = ("local s = string.rep('x', 4000000) local t = {} "
              "for i = 1, 50 do t[i] = s end return #cjson.encode(t)")
    assert JSON_MAX_OUTPUT < 50 * 4_000_000
    with pytest.raises(redis.ResponseError, match="encoded text would exceed"):
        r.eval(script, 0)
    assert r.eval("return cjson.encode({a='x/\"y', b={1,2}})", 0) in (
        b'{"a":"x\\/\\"y","b":[1,2]}', b'{"b":[1,2],"a":"x\\/\\"y"}')
    assert r.ping() is True
