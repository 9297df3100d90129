"""EVAL EVALSHA EVAL_RO EVALSHA_RO SCRIPT FUNCTION FCALL FCALL_RO (Redis' eval.c and
function.c). The Lua side -- sandbox, conversions, the worker thread, BUSY and SCRIPT KILL
-- is :mod:`shaledb.server.exec.scripting`; this module parses the commands.

A script's keys are its KEYS arguments: the ACL checks them before the script runs (EVAL's
key positions are found from numkeys), and again, with every other permission, on each
``redis.call``.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import CommandError
from ..exec.scripting import Script
from ..glob import compile_glob
from ..net.protocol import OK, Status
from . import CommandFamily, Context, parse_int

FAMILY = CommandFamily()
command = FAMILY.command


def _numkeys_keys(argv: list[bytes]) -> list[bytes]:
    """EVAL script numkeys key... arg...: the keys (movable keys, as Redis' evalGetKeys)."""
    try:
        n = int(argv[2])
    except ValueError:
        return []
    if n <= 0 or n > len(argv) - 3:
        return []
    return argv[3:3 + n]


def _split(argv: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    n = parse_int(argv[2])
    if n > len(argv) - 3:
        raise CommandError("Number of keys can't be greater than number of args")
    if n < 0:
        raise CommandError("Number of keys can't be negative")
    return argv[3:3 + n], argv[3 + n:]


_EVAL_FLAGS = "noscript skip-monitor may-replicate no-mandatory-keys stale"


def _run(ctx: Context, script: Script, argv: list[bytes], read_only: bool) -> Any:
    keys, args = _split(argv)
    return ctx.services.scripts.run_script(ctx, script, keys, args, read_only)


@command("eval", -3, _EVAL_FLAGS, "slow scripting", key_finder=_numkeys_keys)
def eval_(ctx: Context, argv: list[bytes]) -> Any:
    """EVAL script numkeys [key ...] [arg ...]"""
    _split(argv)  # numkeys errors before compile errors, as Redis
    return _run(ctx, ctx.services.scripts.load(ctx.services, argv[1], False), argv, False)


@command("eval_ro", -3, _EVAL_FLAGS + " readonly", "slow scripting", key_finder=_numkeys_keys)
def eval_ro(ctx: Context, argv: list[bytes]) -> Any:
    """EVAL_RO script numkeys [key ...] [arg ...]: a script that may not write"""
    _split(argv)
    return _run(ctx, ctx.services.scripts.load(ctx.services, argv[1], False), argv, True)


def _by_sha(ctx: Context, sha: bytes) -> Script:
    script = ctx.services.scripts.scripts.get(sha.decode("latin-1").lower())
    if script is None:
        raise CommandError("No matching script. Please use EVAL.", prefix="NOSCRIPT")
    ctx.services.scripts.scripts.move_to_end(script.sha)
    return script


@command("evalsha", -3, _EVAL_FLAGS, "slow scripting", key_finder=_numkeys_keys)
def evalsha(ctx: Context, argv: list[bytes]) -> Any:
    """EVALSHA sha1 numkeys [key ...] [arg ...]"""
    _split(argv)
    return _run(ctx, _by_sha(ctx, argv[1]), argv, False)


@command("evalsha_ro", -3, _EVAL_FLAGS + " readonly", "slow scripting",
         key_finder=_numkeys_keys)
def evalsha_ro(ctx: Context, argv: list[bytes]) -> Any:
    """EVALSHA_RO sha1 numkeys [key ...] [arg ...]"""
    _split(argv)
    return _run(ctx, _by_sha(ctx, argv[1]), argv, True)


@command("script", -2, "noscript", "slow scripting",
         subcommands={"load": "slow scripting", "exists": "slow scripting",
                      "flush": "slow scripting", "kill": "slow scripting",
                      "help": "slow scripting"})
def script(ctx: Context, argv: list[bytes]) -> Any:
    """SCRIPT LOAD script | EXISTS sha1... | FLUSH [ASYNC|SYNC] | KILL | HELP"""
    sub = argv[1].lower()
    engine = ctx.services.scripts
    if sub == b"load" and len(argv) == 3:
        return engine.load(ctx.services, argv[2], True).sha.encode()
    if sub == b"exists" and len(argv) >= 3:
        return [int(a.decode("latin-1").lower() in engine.scripts) for a in argv[2:]]
    if sub == b"flush" and len(argv) <= 3:
        if len(argv) == 3 and argv[2].lower() not in (b"async", b"sync"):
            raise CommandError("SCRIPT FLUSH only support SYNC|ASYNC option")
        engine.flush()
        return OK
    if sub == b"kill" and len(argv) == 2:
        engine.kill("script")
        return OK
    if sub == b"help" and len(argv) == 2:
        return [Status(line) for line in (
            b"SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            b"EXISTS <sha1> [<sha1> ...]", b"FLUSH [ASYNC|SYNC]", b"KILL",
            b"LOAD <script>", b"HELP")]
    raise CommandError(f"unknown subcommand or wrong number of arguments for "
                       f"'{argv[1].decode('utf-8', 'replace')}'. Try SCRIPT HELP.")


# -- functions -------------------------------------------------------------------------------


@command("fcall", -3, _EVAL_FLAGS, "slow scripting", key_finder=_numkeys_keys)
def fcall(ctx: Context, argv: list[bytes]) -> Any:
    """FCALL function numkeys [key ...] [arg ...]"""
    keys, args = _split(argv)
    return ctx.services.scripts.fcall(ctx, argv[1], keys, args, False, argv)


@command("fcall_ro", -3, _EVAL_FLAGS + " readonly", "slow scripting", key_finder=_numkeys_keys)
def fcall_ro(ctx: Context, argv: list[bytes]) -> Any:
    """FCALL_RO function numkeys [key ...] [arg ...]"""
    keys, args = _split(argv)
    return ctx.services.scripts.fcall(ctx, argv[1], keys, args, True, argv)


@command("function", -2, "noscript", "slow scripting",
         subcommands={"load": "write slow scripting", "delete": "write slow scripting",
                      "flush": "write slow scripting", "kill": "slow scripting",
                      "list": "slow scripting", "stats": "slow scripting",
                      "help": "slow scripting"})
def function(ctx: Context, argv: list[bytes]) -> Any:
    """FUNCTION LOAD [REPLACE] code | DELETE lib | FLUSH | KILL | LIST [WITHCODE]
    [LIBRARYNAME pattern] | STATS"""
    sub = argv[1].lower()
    engine = ctx.services.scripts
    if sub == b"load" and len(argv) >= 3:
        replace = False
        for opt in argv[2:-1]:
            if opt.lower() != b"replace":
                raise CommandError(f"Unknown option given: {opt.decode('utf-8', 'replace')}")
            replace = True
        return engine.function_load(ctx, argv[-1], replace).encode()
    if sub == b"delete" and len(argv) == 3:
        engine.function_delete(argv[2].decode("utf-8", "replace"))
        return OK
    if sub == b"flush" and len(argv) <= 3:
        if len(argv) == 3 and argv[2].lower() not in (b"async", b"sync"):
            raise CommandError("FUNCTION FLUSH only supports SYNC|ASYNC option")
        engine.function_flush()
        return OK
    if sub == b"kill" and len(argv) == 2:
        engine.kill("function")
        return OK
    if sub == b"list":
        return _function_list(ctx, argv[2:])
    if sub == b"stats" and len(argv) == 2:
        call = engine.current if engine.busy else None
        running = None if call is None or call.kind != "function" else {
            b"name": call.name.encode(), b"command": list(call.argv),
            b"duration_ms": int((time.monotonic() - call.started) * 1000)}
        return {b"running_script": running,
                b"engines": {b"LUA": {b"libraries_count": len(engine.libraries),
                                      b"functions_count": len(engine.functions)}}}
    if sub == b"help" and len(argv) == 2:
        return [Status(line) for line in (
            b"FUNCTION <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            b"LOAD [REPLACE] <FUNCTION CODE>", b"DELETE <LIBRARY NAME>",
            b"LIST [LIBRARYNAME PATTERN] [WITHCODE]", b"FLUSH [ASYNC|SYNC]", b"KILL",
            b"STATS", b"HELP")]
    raise CommandError(f"unknown subcommand or wrong number of arguments for "
                       f"'{argv[1].decode('utf-8', 'replace')}'. Try FUNCTION HELP.")


def _function_list(ctx: Context, args: list[bytes]) -> Any:
    with_code = False
    pattern: bytes | None = None
    i = 0
    while i < len(args):
        opt = args[i].lower()
        if opt == b"withcode" and not with_code:
            with_code = True
        elif opt == b"libraryname" and pattern is None and i + 1 < len(args):
            i += 1
            pattern = args[i]
        else:
            raise CommandError(f"Unknown argument {args[i].decode('utf-8', 'replace')}")
        i += 1
    match = compile_glob(pattern) if pattern is not None else None
    out = []
    for lib in ctx.services.scripts.libraries.values():
        if match is not None and not match(lib.name.encode()):
            continue
        entry: dict[bytes, Any] = {
            b"library_name": lib.name.encode(), b"engine": b"LUA",
            b"functions": [
                {b"name": f.name.encode(), b"description": f.description,
                 b"flags": {Status(flag.encode()) for flag in sorted(f.flags)}}
                for f in lib.functions.values()]}
        if with_code:
            entry[b"library_code"] = lib.code
        out.append(entry)
    return out


__all__ = ["FAMILY"]
