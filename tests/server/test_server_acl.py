"""ACL users against a real server with redis-py: rules, enforcement on commands and keys
(a denied command changes nothing), the ACL log, the ACL file, the failed-AUTH limit."""

from __future__ import annotations

import hashlib
import logging
import os
import stat

import pytest
import redis

from shaledb.errors import InvalidArgument
from shaledb.server import ServerConfig
from shaledb.server.admin.acl import LOG_FIELD_MAX, AuthRateLimiter
from shaledb.server.net import connection as connection_module

from ._server_support import RawClient, free_port, run_server_process


def _sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@pytest.fixture
def admin(server):
    c = server.client(decode_responses=True)
    yield c
    c.close()


def _as(st, user: str, password: str, **kw) -> redis.Redis:
    return st.client(username=user, password=password, decode_responses=True, **kw)


def test_default_user_and_introspection(admin) -> None:
    assert admin.acl_whoami() == "default"
    assert admin.acl_users() == ["default"]
    assert admin.acl_list() == ["user default on nopass ~* &* +@all"]
    info = admin.acl_getuser("default")
    assert info["flags"] == ["on", "nopass"] and info["passwords"] == []
    assert info["categories"] == ["+@all"] and info["keys"] == ["~*"]
    assert admin.acl_getuser("nobody") is None
    cats = admin.acl_cat()
    assert {"read", "write", "string", "keyspace", "dangerous", "admin"} <= set(cats)
    assert "get" in admin.acl_cat("string") and "set" not in admin.acl_cat("read")
    assert "acl|whoami" in admin.acl_cat("slow") and "acl|setuser" in admin.acl_cat("admin")
    with pytest.raises(redis.ResponseError, match="Unknown category 'nosuch'"):
        admin.acl_cat("nosuch")
    with pytest.raises(redis.ResponseError, match="unknown subcommand 'NOSUCH'"):
        admin.execute_command("ACL", "NOSUCH")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'acl|whoami'"):
        admin.execute_command("ACL", "WHOAMI", "extra")


def test_command_categories_and_key_patterns_are_enforced(server, admin) -> None:
    admin.set("secret", "s")
    admin.acl_setuser("alice", enabled=True, passwords=["+pw"], keys=["app:*"],
                      categories=["+@read", "+@write", "-@dangerous"], commands=["+ping"])
    alice = _as(server, "alice", "pw")
    assert alice.set("app:1", "v") is True and alice.get("app:1") == "v"
    assert alice.ping() is True
    with pytest.raises(redis.exceptions.NoPermissionError, match="^this user has no "
                       "permissions to access one of the keys used as arguments$"):
        alice.set("secret", "overwritten")
    with pytest.raises(redis.exceptions.NoPermissionError):
        alice.get("secret")
    with pytest.raises(redis.exceptions.NoPermissionError):  # one bad key refuses all
        alice.mset({"app:2": "x", "secret": "y"})
    with pytest.raises(redis.exceptions.NoPermissionError,
                       match="^this user has no permissions to run the 'flushall' command$"):
        alice.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError,
                       match="no permissions to run the 'acl|whoami' command"):
        alice.acl_whoami()
    with pytest.raises(redis.exceptions.NoPermissionError):  # reads outside key positions
        alice.execute_command("KRANGE", "-", "+")
    # Nothing a denied command tried happened.
    assert admin.get("secret") == "s" and admin.get("app:2") is None and admin.dbsize() == 2
    admin.acl_setuser("alice", enabled=True, commands=["+acl|whoami"])  # rules add up
    assert alice.acl_whoami() == "alice"
    with pytest.raises(redis.exceptions.NoPermissionError):
        alice.acl_list()  # only the subcommand was granted
    admin.acl_setuser("alice", enabled=True, keys=["secret"])
    assert alice.get("secret") == "s"  # changes apply to logged-in connections at once
    alice.close()


def test_allkeys_user_may_krange_and_nocommands_user_may_only_log_in(server, admin) -> None:
    admin.set("k", "v")
    admin.execute_command("ACL", "SETUSER", "bob", "on", ">pw", "allkeys", "+krange")
    bob = _as(server, "bob", "pw")
    assert bob.execute_command("KRANGE", "-", "+") == ["k", "v"]
    admin.execute_command("ACL", "SETUSER", "bob", "nocommands")
    with pytest.raises(redis.exceptions.NoPermissionError):
        bob.execute_command("KRANGE", "-", "+")
    assert bob.execute_command("AUTH", "bob", "pw") is True  # AUTH is open to everyone
    bob.close()


def test_password_rules(server, admin) -> None:
    c = RawClient(server.port)
    admin.execute_command("ACL", "SETUSER", "u", "on", ">one", ">two")
    assert c("AUTH", "u", "one") == b"OK" and c("AUTH", "u", "two") == b"OK"
    admin.execute_command("ACL", "SETUSER", "u", "<one")
    assert str(c("AUTH", "u", "one")).startswith("WRONGPASS")
    with pytest.raises(redis.ResponseError, match="does not exist") as err:
        admin.execute_command("ACL", "SETUSER", "u", "<never-set")
    assert "never-set" not in str(err.value)  # password rules are never echoed
    admin.execute_command("ACL", "SETUSER", "u", "resetpass", "#" + _sha("hashed"))
    assert admin.acl_getuser("u")["passwords"] == [_sha("hashed")]
    assert str(c("AUTH", "u", "two")).startswith("WRONGPASS")
    assert c("AUTH", "u", "hashed") == b"OK"
    admin.execute_command("ACL", "SETUSER", "u", "!" + _sha("hashed"), "nopass")
    assert c("AUTH", "u", "anything") == b"OK"
    admin.execute_command("ACL", "SETUSER", "u", "off")
    assert str(c("AUTH", "u", "anything")).startswith("WRONGPASS")  # disabled
    assert str(c("AUTH", "ghost", "x")).startswith("WRONGPASS")
    with pytest.raises(redis.ResponseError, match="exactly 64 characters"):
        admin.execute_command("ACL", "SETUSER", "u", "#abc")
    hello = c("HELLO", "3", "AUTH", "default", "whatever")
    assert hello[b"proto"] == 3
    admin.execute_command("ACL", "SETUSER", "u", "on", "resetpass", ">h", "+acl|whoami")
    assert str(c("HELLO", "3", "AUTH", "u", "nope")).startswith("WRONGPASS")
    assert c("HELLO", "3", "AUTH", "u", "h")[b"proto"] == 3
    assert c("ACL", "WHOAMI") == b"u"
    c.close()


def test_invalid_setuser_changes_nothing(admin) -> None:
    admin.execute_command("ACL", "SETUSER", "carol", "on", "nopass", "+get")
    before = admin.acl_list()
    for bad in (["+set", "bogus"], ["+nosuchcmd"], ["-@nosuchcat"], ["allkeys", "~more"],
                ["~has space"]):
        with pytest.raises(redis.ResponseError, match="Error in ACL SETUSER modifier"):
            admin.execute_command("ACL", "SETUSER", "carol", *bad)
    with pytest.raises(redis.ResponseError) as err:
        admin.execute_command("ACL", "SETUSER", "dave", ">topsecret", "bogus")
    assert "topsecret" not in str(err.value)
    assert admin.acl_list() == before  # neither carol changed nor dave created
    with pytest.raises(redis.ResponseError,
                       match="Usernames can't contain spaces or null characters"):
        admin.execute_command("ACL", "SETUSER", "a b", "on")


def test_reset_and_list_format(admin) -> None:
    admin.execute_command("ACL", "SETUSER", "e", "on", ">pw", "~a:*", "~b:*", "&chan",
                          "+@all", "-@dangerous", "+flushdb")
    line = admin.acl_list()[1]
    assert line == (f"user e on #{_sha('pw')} ~a:* ~b:* resetchannels &chan +@all -@dangerous "
                    "+flushdb")
    assert "pw " not in line
    admin.execute_command("ACL", "SETUSER", "e", "reset")
    assert admin.acl_list()[1] == "user e off resetchannels -@all"  # as Redis 7


def test_deluser_disconnects_and_default_cannot_go(server, admin) -> None:
    admin.execute_command("ACL", "SETUSER", "f", "on", ">pw", "+@all", "allkeys")
    f = RawClient(server.port)
    assert f("AUTH", "f", "pw") == b"OK"
    with pytest.raises(redis.ResponseError, match="'default' user cannot be removed"):
        admin.acl_deluser("default")
    assert admin.acl_deluser("f", "nobody") == 1
    with pytest.raises(ConnectionError):
        f("PING")
    assert admin.acl_users() == ["default"]


def test_multi_checks_at_queue_time_and_again_at_exec(server, admin) -> None:
    admin.execute_command("ACL", "SETUSER", "g", "on", ">pw", "~g:*", "+@all")
    c = RawClient(server.port)
    assert c("AUTH", "g", "pw") == b"OK"
    assert c("MULTI") == b"OK"
    assert c("SET", "g:1", "x") == b"QUEUED"
    assert str(c("SET", "other", "x")).startswith("NOPERM")
    assert str(c("EXEC")).startswith("EXECABORT")
    assert c("MULTI") == b"OK" and c("SET", "g:1", "x") == b"QUEUED"
    assert c("GET", "g:1") == b"QUEUED"
    admin.execute_command("ACL", "SETUSER", "g", "-get")  # revoked before EXEC
    replies = c("EXEC")
    assert replies[0] == b"OK" and str(replies[1]).startswith("NOPERM")
    assert admin.get("g:1") == "x" and admin.get("other") is None
    entries = admin.acl_log()
    assert entries[0]["context"] == "multi" and entries[0]["object"] == "get"
    c.close()


def test_acl_log_records_denials_and_is_bounded(server_factory) -> None:
    st = server_factory(acllog_max_len=3)
    admin = st.client(decode_responses=True)
    admin.execute_command("ACL", "SETUSER", "h", "on", ">pw", "~h:*", "+get")
    h = RawClient(st.port)
    assert str(h("AUTH", "h", "wrong")).startswith("WRONGPASS")
    assert str(h("AUTH", "h", "wrong")).startswith("WRONGPASS")
    assert h("AUTH", "h", "pw") == b"OK"
    assert str(h("SET", "h:1", "v")).startswith("NOPERM")
    assert str(h("GET", "x")).startswith("NOPERM")
    log = admin.acl_log()
    assert [(e["reason"], e["object"], e["count"]) for e in log] == [
        ("key", "x", 1), ("command", "set", 1), ("auth", "AUTH", 2)]
    assert all(e["username"] == "h" and e["context"] == "toplevel" for e in log)
    assert log[0]["client-info"]["addr"].startswith("127.0.0.1:")
    assert admin.acl_log(count=1)[0]["object"] == "x"
    assert "wrong" not in str(log) and "pw" not in str(log)
    assert str(h("GET", "y")).startswith("NOPERM")  # a 4th kind: the oldest is dropped
    assert [e["object"] for e in admin.acl_log()] == ["y", "x", "set"]
    long_name = "n" * 10_000
    assert str(h("AUTH", long_name, "x")).startswith("WRONGPASS")
    assert len(admin.acl_log()[0]["username"]) == LOG_FIELD_MAX
    assert admin.acl_log_reset() is True and admin.acl_log() == []
    with pytest.raises(redis.ResponseError, match="must be positive"):
        admin.execute_command("ACL", "LOG", "-1")
    h.close()
    admin.close()


def test_requirepass_is_the_default_users_password(server_factory, monkeypatch) -> None:
    st = server_factory(requirepass="pw")
    admin = _as(st, "default", "pw")
    assert admin.acl_getuser("default")["passwords"] == [_sha("pw")]
    admin.execute_command("ACL", "SETUSER", "default", ">new")
    assert _as(st, "default", "new").ping() is True
    monkeypatch.setattr(connection_module, "peer_address", lambda t: ("198.51.100.4", 1))
    remote = RawClient(st.port)
    assert remote("AUTH", "new") == b"OK"  # a password is set: remote clients may log in
    remote.close()
    admin.execute_command("ACL", "SETUSER", "default", "nopass")
    refused = RawClient(st.port)  # no password any more: protected mode refuses again
    assert str(refused.read()).startswith("DENIED")
    refused.close()
    admin.close()


def test_failed_auth_is_rate_limited_per_ip(server_factory, monkeypatch) -> None:
    st = server_factory(requirepass="pw", auth_fail_burst=2, auth_fail_rate=0.01)
    c = RawClient(st.port)
    assert str(c("AUTH", "bad")).startswith("WRONGPASS")
    assert str(c("AUTH", "bad")).startswith("WRONGPASS")
    limited = c("AUTH", "pw")  # even the right password: the limit is checked first
    assert str(limited).startswith("ERR too many failed authentication attempts")
    assert str(c("GET", "k")).startswith("NOAUTH")
    other_local = RawClient(st.port)  # the limit is per IP: same IP, same bucket
    assert str(other_local("AUTH", "pw")).startswith("ERR too many failed")
    monkeypatch.setattr(connection_module, "peer_address", lambda t: ("192.0.2.50", 1))
    remote = RawClient(st.port)
    assert remote("AUTH", "pw") == b"OK"
    assert st.call(lambda: st.server.stats["auth_rate_limited"]) == 2
    # Pipelined guesses take their tokens one by one: the third is refused unchecked.
    monkeypatch.setattr(connection_module, "peer_address", lambda t: ("192.0.2.51", 1))
    guesser = RawClient(st.port)
    for _ in range(3):
        guesser.send("AUTH", "guess")
    got = [str(guesser.read()) for _ in range(3)]
    assert [g.split()[0] for g in got[:2]] == ["WRONGPASS", "WRONGPASS"]
    assert got[2].startswith("ERR too many failed authentication attempts")
    for x in (c, other_local, remote, guesser):
        x.close()


def test_rate_limiter_refills_refunds_and_is_bounded() -> None:
    now = [0.0]
    lim = AuthRateLimiter(burst=3, rate=2.0, max_hosts=2, clock=lambda: now[0])
    assert [lim.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.take("a") == pytest.approx(0.5)  # empty: 1 token needs 0.5 s at 2/s
    now[0] = 0.5
    assert lim.take("a") == 0.0
    lim.refund("a")  # a success gives its attempt back
    assert lim.take("a") == 0.0
    assert lim.take("a") > 0
    lim.take("b")
    lim.take("c")  # a third host: the least recently used ("a") is forgotten
    assert len(lim) == 2
    assert lim.take("a") == 0.0  # forgotten means a full bucket again


def test_acl_save_and_load(server_factory, tmp_path) -> None:
    path = tmp_path / "users.acl"
    st = server_factory(aclfile=str(path))
    admin = st.client(decode_responses=True)
    admin.execute_command("ACL", "SETUSER", "i", "on", ">clear-text-pw", "~i:*", "+@read")
    assert admin.acl_save() is True
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert "clear-text-pw" not in text and f"#{_sha('clear-text-pw')}" in text
    assert os.listdir(tmp_path).count("users.acl") == 1
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    admin.execute_command("ACL", "SETUSER", "j", "on", "nopass")
    assert admin.acl_load() is True
    assert admin.acl_users() == ["default", "i"]  # j was never saved
    good = path.read_text()
    path.write_text(good + "user k on +nosuch\n")
    with pytest.raises(redis.ResponseError, match=r"users.acl:3: .*Unknown command"):
        admin.acl_load()
    assert admin.acl_users() == ["default", "i"]  # a bad file changes nothing
    path.write_text(good)
    admin.close()
    st.stop()
    st2 = server_factory(aclfile=str(path), dir=st.config.dir)
    i = _as(st2, "i", "clear-text-pw")
    assert i.get("i:x") is None  # reads allowed after the restart, with the saved password
    with pytest.raises(redis.exceptions.NoPermissionError):
        i.set("i:x", "v")
    i.close()


def test_acl_save_without_aclfile_is_an_error(admin) -> None:
    with pytest.raises(redis.ResponseError, match="not configured to use an ACL file"):
        admin.acl_save()
    with pytest.raises(redis.ResponseError, match="not configured to use an ACL file"):
        admin.acl_load()


def test_invalid_aclfile_stops_the_start(server_factory, tmp_path) -> None:
    path = tmp_path / "bad.acl"
    path.write_text("usr x on\n")
    with pytest.raises(InvalidArgument, match="bad.acl:1: line should start with user"):
        server_factory(aclfile=str(path))


def test_acl_settings_are_validated() -> None:
    for bad in ({"acllog_max_len": 0}, {"acllog_max_len": 100_001}, {"auth_fail_burst": 0},
                {"auth_fail_rate": 0}, {"auth_fail_max_hosts": 0}, {"aclfile": ""}):
        with pytest.raises(InvalidArgument):
            ServerConfig(**bad)  # type: ignore[arg-type]


def test_genpass(admin) -> None:
    assert len(admin.acl_genpass()) == 64
    assert len(admin.acl_genpass(bits=10)) == 3
    assert len(admin.acl_genpass(bits=4096)) == 1024
    for bits in (0, 4097):
        with pytest.raises(redis.ResponseError, match="number of bits"):
            admin.execute_command("ACL", "GENPASS", bits)


def test_passwords_never_reach_the_logs(server_factory, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="shaledb")
    st = server_factory(aclfile=str(tmp_path / "u.acl"))
    c = RawClient(st.port)
    replies = [c("ACL", "SETUSER", "l", "on", ">pass-in-clear"),
               c("AUTH", "l", "wrong-pass-in-clear"),             # an error reply
               c("ACL", "SETUSER", "l", "<pass-in-clear", "bogus"),  # an error reply
               c("ACL", "GETUSER", "l"), c("ACL", "LIST"), c("ACL", "LOG"),
               c("CONFIG", "GET", "requirepass"), c("ACL", "SAVE")]
    c.close()
    st.stop()
    assert "in-clear" not in caplog.text
    assert "in-clear" not in repr(replies)  # nor in replies or errors
    assert "in-clear" not in (tmp_path / "u.acl").read_text()


def test_serve_aclfile_flag(tmp_path) -> None:
    acl = tmp_path / "users.acl"
    acl.write_text(f"user m on #{_sha('pw')} ~* +@all\n")
    port = free_port()
    proc = run_server_process(tmp_path / "db", port, "--aclfile", str(acl))
    try:
        c = redis.Redis(host="127.0.0.1", port=port, username="m", password="pw",
                        socket_timeout=10)
        assert c.acl_whoami() == "m"
        c.close()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


# -- Redis 7 selectors and read/write key permissions ------------------------------------------

def _getuser(st, name: str) -> dict:
    """ACL GETUSER as the server sends it (redis-py reshapes selectors and keys)."""
    def pairs(flat: list) -> dict:
        return {k.decode(): v for k, v in zip(flat[::2], flat[1::2], strict=True)}

    raw = RawClient(st.port)
    try:
        info = pairs(raw("ACL", "GETUSER", name))
    finally:
        raw.close()
    info["selectors"] = [{k: v.decode() for k, v in pairs(sel).items()}
                         for sel in info["selectors"]]
    return info


def test_selectors_grant_one_set_at_a_time(server, admin) -> None:
    admin.execute_command("ACL", "SETUSER", "sel", "on", ">pw", "-@all", "resetkeys",
                          "(+@write ~w:*)", "(+@read", "~r:*)")
    s = _as(server, "sel", "pw")
    assert s.set("w:1", "v") is True
    assert s.get("r:1") is None
    with pytest.raises(redis.exceptions.NoPermissionError, match="keys used as arguments"):
        s.get("w:1")  # the write selector has w:*, but not GET
    with pytest.raises(redis.exceptions.NoPermissionError, match="keys used as arguments"):
        s.set("r:1", "v")  # the read selector has r:*, but not SET
    with pytest.raises(redis.exceptions.NoPermissionError, match="'ping' command"):
        s.ping()
    # Not additive: COPY r:1 w:2 needs GET-side and SET-side in one selector.
    admin.set("r:1", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        s.copy("r:1", "w:2")
    assert admin.exists("w:2") == 0
    info = _getuser(server, "sel")
    assert [sl["keys"] for sl in info["selectors"]] == ["~w:*", "~r:*"]
    admin.execute_command("ACL", "SETUSER", "sel", "clearselectors")
    assert _getuser(server, "sel")["selectors"] == []
    with pytest.raises(redis.exceptions.NoPermissionError):
        s.set("w:1", "v")
    s.close()


def test_selector_syntax_errors_change_nothing(admin) -> None:
    with pytest.raises(redis.ResponseError, match=r"modifier '\(this-is-invalid\)'.*Syntax"):
        admin.execute_command("ACL", "SETUSER", "bad", "on", "(this-is-invalid)")
    with pytest.raises(redis.ResponseError, match="Unmatched parenthesis"):
        admin.execute_command("ACL", "SETUSER", "bad", "(~a", "+get")
    with pytest.raises(redis.ResponseError, match="Syntax error"):
        admin.execute_command("ACL", "SETUSER", "bad", ")")
    with pytest.raises(redis.ResponseError, match=r"'\(\.\.\.\)'.*Syntax"):
        admin.execute_command("ACL", "SETUSER", "bad", "(>clear-text-pw)")  # never echoed
    with pytest.raises(redis.ResponseError, match="Syntax error"):
        admin.execute_command("ACL", "SETUSER", "bad", "%X~a")
    with pytest.raises(redis.ResponseError, match="Syntax error"):
        admin.execute_command("ACL", "SETUSER", "bad", "%RR~a")
    assert admin.acl_getuser("bad") is None


def test_read_and_write_key_permissions(server, admin) -> None:
    admin.execute_command("ACL", "SETUSER", "rw", "on", ">pw", "+@all", "%R~r*", "%W~w*",
                          "%RW~b*")
    u = _as(server, "rw", "pw")
    admin.set("r1", "v")
    assert u.get("r1") == "v"
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.set("r1", "x")  # read-only pattern
    assert u.lpush("wlist", 1) == 1  # LPUSH only inserts: write is enough
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.lrange("wlist", 0, -1)  # but reading needs read
    assert u.set("w1", "v") is True  # SET without GET only writes
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.set("w1", "v", get=True)  # SET ... GET reads the old value
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.execute_command("BITFIELD", "w1", "GET", "u4", "0")
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.execute_command("BITFIELD", "r1", "SET", "u4", "0", "1")
    assert u.execute_command("BITFIELD", "r1", "GET", "u4", "0") == [7]
    assert u.copy("r1", "w2") is True
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.copy("w2", "r2")
    assert u.exists("r1", "w1") == 2  # existence needs either permission
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.exists("other")
    assert u.set("b1", "v", get=True) is None and u.get("b1") == "v"
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.eval("return 1", 1, "r1")  # a script may do anything to its keys
    assert u.eval_ro("return 1", 1, "r1") == 1
    assert _getuser(server, "rw")["keys"] == b"%R~r* %W~w* ~b*"
    admin.execute_command("ACL", "SETUSER", "rw2", "%R~foo", "%W~foo", "%RW~bar")
    assert _getuser(server, "rw2")["keys"] == b"~foo ~bar"
    u.close()


def test_sort_by_and_get_need_read_access_to_every_key(server, admin) -> None:
    admin.rpush("mylist", 2, 1)
    admin.set("v1", "1")
    admin.execute_command("ACL", "SETUSER", "so", "on", ">pw", "(+sort ~mylist %W~*)")
    u = _as(server, "so", "pw")
    with pytest.raises(redis.ResponseError, match="BY option of SORT denied"):
        u.sort("mylist", by="v*")
    with pytest.raises(redis.ResponseError, match="GET option of SORT denied"):
        u.sort("mylist", get="v*")
    admin.execute_command("ACL", "SETUSER", "so", "clearselectors", "(+sort ~mylist %R~*)")
    assert u.sort("mylist", by="v*") == ["2", "1"]  # v2 is missing: weight 0
    u.close()


def test_acl_dryrun(admin) -> None:
    admin.execute_command("ACL", "SETUSER", "dry", "+@all", "%R~read*", "%W~write*",
                          "%RW~rw*", "resetchannels", "&chan")
    dry = ["ACL", "DRYRUN", "dry"]
    assert admin.execute_command(*dry, "GET", "read") == "OK"
    assert admin.execute_command(*dry, "GET", "write") == (
        "This user has no permissions to access the 'write' key")
    assert admin.execute_command(*dry, "SORT", "read", "STORE", "read") == (
        "This user has no permissions to access the 'read' key")
    assert admin.execute_command(*dry, "EVAL", "", "0", "read") == "OK"
    assert admin.execute_command(*dry, "GEORADIUS", "read1", "0", "0", "1", "m",
                                 "STOREDIST", "read2") == (
        "This user has no permissions to access the 'read2' key")
    assert admin.execute_command(*dry, "SINTERCARD", "2", "write", "read") == (
        "This user has no permissions to access the 'write' key")
    assert admin.execute_command(*dry, "SPUBLISH", "other", "x") == (
        "This user has no permissions to access the 'other' channel")
    with pytest.raises(redis.ResponseError, match="^User 'nobody' not found$"):
        admin.execute_command("ACL", "DRYRUN", "nobody", "GET", "read")
    with pytest.raises(redis.ResponseError, match="^Command 'nosuch' not found$"):
        admin.execute_command(*dry, "nosuch")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'set'"):
        admin.execute_command(*dry, "SET", "rw")
    admin.execute_command("ACL", "SETUSER", "dry", "-@all")
    assert admin.execute_command(*dry, "SET", "rw", "v") == (
        "This user has no permissions to run the 'set' command")
    assert admin.acl_log() == []  # a dry run is not a denial


def test_acl_log_names_the_furthest_denied_key_across_selectors(server, admin) -> None:
    admin.execute_command("ACL", "SETUSER", "lg", "on", ">pw", "+mget", "~key",
                          "(+mget ~key ~otherkey)")
    u = _as(server, "lg", "pw")
    admin.acl_log_reset()
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.mget("key", "otherkey", "someotherkey")
    entry = admin.acl_log()[0]
    assert entry["reason"] == "key" and entry["object"] == "someotherkey"
    u.close()


def test_selectors_survive_acl_save_and_load(server_factory, tmp_path) -> None:
    path = tmp_path / "users.acl"
    st = server_factory(aclfile=str(path))
    admin = st.client(decode_responses=True)
    admin.execute_command("ACL", "SETUSER", "bob", "on", ">pw", "-@all", "%R~r*",
                          "(-@all +set %W~w*)", "(-@all +get %R~r*)")
    before = admin.acl_list()
    assert admin.acl_save() is True
    assert "(%W~w* resetchannels -@all +set)" in path.read_text()
    admin.execute_command("ACL", "SETUSER", "bob", "clearselectors")
    assert admin.acl_load() is True
    assert admin.acl_list() == before
    sels = _getuser(st, "bob")["selectors"]
    assert [(s["commands"], s["keys"]) for s in sels] == [
        ("-@all +set", "%W~w*"), ("-@all +get", "%R~r*")]
    admin.close()


def test_subcommand_and_first_arg_rules(server, admin) -> None:
    with pytest.raises(redis.ResponseError, match="first-arg of a subcommand is not supported"):
        admin.execute_command("ACL", "SETUSER", "fa", "+config|get|maxmemory")
    admin.execute_command("ACL", "SETUSER", "fa", "on", ">pw", "-@all", "+select|0")
    assert "+select|0" in admin.acl_getuser("fa")["commands"]
    u = _as(server, "fa", "pw")
    assert u.execute_command("SELECT", "0") is True
    with pytest.raises(redis.exceptions.NoPermissionError, match="'select' command"):
        u.execute_command("SELECT", "1")
    admin.execute_command("ACL", "SETUSER", "fa", "-select")  # drops the first-arg grant
    with pytest.raises(redis.exceptions.NoPermissionError):
        u.execute_command("SELECT", "0")
    admin.execute_command("ACL", "SETUSER", "fa", "+config|get", "+config")
    assert _getuser(server, "fa")["commands"] == b"-@all -select +config"
    u.close()


def test_acl_help_and_argument_errors(admin) -> None:
    assert "DRYRUN <username> <command> [<arg> ...]" in admin.execute_command("ACL", "HELP")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'acl|help'"):
        admin.execute_command("ACL", "HELP", "x")
    with pytest.raises(redis.ResponseError, match="unknown subcommand or wrong number"):
        admin.execute_command("ACL", "CAT", "a", "b")


def test_rules_may_name_debug_and_readonly_which_always_refuse(server, admin) -> None:
    admin.execute_command("ACL", "SETUSER", "dbg", "reset", "+@all", "-debug", "+debug|digest",
                          "+readonly")
    assert b"-debug +debug|digest" in _getuser(server, "dbg")["commands"]
    assert admin.execute_command("ACL", "DRYRUN", "dbg", "EVAL_RO", "", "0") == "OK"
    admin.execute_command("ACL", "SETUSER", "ro", "on", "nopass", "+readonly")
    assert admin.execute_command("ACL", "DRYRUN", "ro", "EVAL_RO", "", "0") == (
        "This user has no permissions to run the 'eval_ro' command")
    with pytest.raises(redis.ResponseError, match="DEBUG is not supported"):
        admin.execute_command("DEBUG", "DIGEST")
    with pytest.raises(redis.ResponseError, match="cluster support disabled"):
        admin.execute_command("READONLY")
    with pytest.raises(redis.ResponseError, match="Unknown command or category"):
        admin.execute_command("ACL", "SETUSER", "dbg", "+get|key1|key2")


def test_denial_queued_in_multi_is_logged_with_multi_context(server, admin) -> None:
    admin.execute_command("ACL", "SETUSER", "tx", "on", ">pw", "+multi", "+exec", "~*")
    u = _as(server, "tx", "pw")
    admin.acl_log_reset()
    pipe = u.pipeline(transaction=True)
    pipe.execute_command("INCR", "foo")
    with pytest.raises(redis.exceptions.NoPermissionError):
        pipe.execute()
    entry = admin.acl_log()[0]
    assert (entry["context"], entry["object"], entry["reason"]) == ("multi", "incr", "command")
    u.close()


def test_acl_load_without_aclfile_uses_redis_words(admin) -> None:
    with pytest.raises(redis.ResponseError,
                       match="^This Redis instance is not configured to use an ACL file"):
        admin.acl_load()


def test_memory_subcommand_rules_and_stats(server, admin) -> None:
    admin.execute_command("ACL", "SETUSER", "mem", "on", ">pw", "+memory|doctor")
    assert _getuser(server, "mem")["commands"] == b"-@all +memory|doctor"
    admin.execute_command("ACL", "SETUSER", "mem", "+memory")  # engulfs the subcommand
    assert _getuser(server, "mem")["commands"] == b"-@all +memory"
    admin.execute_command("ACL", "SETUSER", "mem", "+@all", "-memory|doctor")
    u = _as(server, "mem", "pw")
    with pytest.raises(redis.exceptions.NoPermissionError, match="'memory|doctor' command"):
        u.execute_command("MEMORY", "DOCTOR")
    stats = u.execute_command("MEMORY", "STATS")
    assert stats["total.allocated"] > 0  # redis-py makes the flat pairs a dict
    assert "Resident memory" in admin.execute_command("MEMORY", "DOCTOR")
    u.close()


def test_migrate_and_cluster_exist_by_name_only(server, admin) -> None:
    admin.set("rw", "v")
    with pytest.raises(redis.ResponseError, match="MIGRATE is not supported"):
        admin.execute_command("MIGRATE", "127.0.0.1", "1", "rw", "0", "500")
    assert admin.get("rw") == "v"  # nothing moved, nothing deleted
    with pytest.raises(redis.ResponseError, match="cluster support disabled"):
        admin.execute_command("CLUSTER", "INFO")
    admin.execute_command("ACL", "SETUSER", "mig", "+@all", "%R~read*", "%RW~rw*")
    dry = ["ACL", "DRYRUN", "mig", "MIGRATE", "h", "p"]
    assert admin.execute_command(*dry, "rw", "0", "500") == "OK"
    assert admin.execute_command(*dry, "read", "0", "500") == (
        "This user has no permissions to access the 'read' key")  # MIGRATE deletes it
    assert admin.execute_command(*dry, "", "0", "5000", "AUTH2", "KEYS", "123", "KEYS",
                                 "read") == (
        "This user has no permissions to access the 'read' key")
    raw = RawClient(server.port)
    assert b"movablekeys" in raw("COMMAND", "INFO", "migrate")[0][2]
    assert b"cluster|help" in raw("COMMAND", "LIST", "FILTERBY", "PATTERN", "cl*help")
    raw.close()
