#!/usr/bin/env bash
# Make sure redis-cli (Debian package redis-tools) is installed for the server tests.
# As root with apt-get available, install it; otherwise say why, and the tests that need it
# skip themselves with that reason. Never fails the build: the rest of the suite still runs.
set -u
# redis-server too: the reference run of the tests that compare with Redis 7
# (test_server_frameworks.py and others skip that run, saying why, without it).
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = "0" ] \
    && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server for the tests that compare with it"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq redis-server >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq redis-server >/dev/null 2>&1; } \
        || echo "could not install redis-server; the Redis reference runs will be skipped"
fi
if command -v redis-cli >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-tools (redis-cli) for the server tests"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y -qq redis-tools >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq redis-tools >/dev/null 2>&1; }; then
        exit 0
    fi
    echo "could not install redis-tools; redis-cli tests will be skipped"
else
    echo "redis-cli not found and not root: run 'sudo apt-get install redis-tools' to run the redis-cli tests"
fi
exit 0
