"""FUNCTION LOAD / FCALL as Redis 7.0.15 words and reads them (its TCL unit/functions): the
library header, redis.register_function's argument errors, what a library's top level sees
of ``redis``, and case-insensitive function names. Over a socket with redis-py."""

from __future__ import annotations

import pytest
import redis


def _load_error(r: redis.Redis, code: str) -> str:
    with pytest.raises(redis.ResponseError) as e:
        r.function_load(code, replace=True)
    return str(e.value)


def test_function_names_are_case_insensitive(r: redis.Redis) -> None:
    r.function_load("#!lua name=test\nredis.register_function('test', "
                    "function() return 'hello1' end)")
    assert r.fcall("TEST", 0) == b"hello1"
    assert "already exists in the library" in _load_error(
        r, "#!lua name=lib\nredis.register_function('f1', function() return 1 end)\n"
           "redis.register_function('F1', function() return 1 end)")


@pytest.mark.parametrize("body, error", [
    ("redis.register_function('f1')",
     "calling redis.register_function with a single argument is only applicable to Lua table"),
    ("redis.register_function(1, function() return 1 end)",
     "first argument to redis.register_function must be a string"),
    ("redis.register_function('f1', 1)",
     "second argument to redis.register_function must be a function"),
    ("redis.register_function('f-1', function() return 1 end)",
     "Library names can only contain letters, numbers, or underscores(_)"),
    ("redis.register_function{callback=function() return 1 end}",
     "redis.register_function must get a function name argument"),
    ("redis.register_function{function_name='f1'}",
     "redis.register_function must get a callback argument"),
    ("redis.register_function{function_name='f1', callback=function() return 1 end, "
     "description=function() return 1 end}",
     "description argument given to redis.register_function must be a string"),
    ("return redis.call('ping')", "attempted to access nonexistent global variable 'call'"),
    ("return redis.setresp(3)", "attempted to access nonexistent global variable 'setresp'"),
])
def test_register_function_errors(r: redis.Redis, body: str, error: str) -> None:
    assert error in _load_error(r, "#!lua name=lib\n" + body)


def test_library_header(r: redis.Redis) -> None:
    assert _load_error(r, "#! name=test\nredis.register_function('foo', "
                          "function() return 1 end)") == "Engine '' not found"
    assert "name argument was given multiple times" in _load_error(
        r, "#!lua name=foo name=bar\nredis.register_function('foo', function() return 1 end)")
    assert r.function_load('#!lua name="foo"\nredis.register_function(\'foo\', '
                           'function() return 1 end)') == b"foo"
