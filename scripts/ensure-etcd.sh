#!/usr/bin/env bash
# Make sure etcd (Debian package etcd-server; bookworm has 3.4.23) is installed for the
# failover tests (tests/cluster/): they start their own etcd on loopback with its own data
# directory. As root with apt-get available, install it; otherwise say why, and the tests
# that need it skip themselves with that reason. Never fails the build.
set -u
if command -v etcd >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing etcd-server for the failover tests"
    export DEBIAN_FRONTEND=noninteractive
    # The package's own etcd service is not wanted: the tests start etcd themselves.
    if apt-get install -y -qq etcd-server >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq etcd-server >/dev/null 2>&1; }; then
        exit 0
    fi
    echo "could not install etcd-server; the failover tests will be skipped"
else
    echo "etcd not found and not root: run 'sudo apt-get install etcd-server' to run the failover tests"
fi
exit 0
