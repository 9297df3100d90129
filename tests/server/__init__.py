"""Tests of the network server (shaledb.server) over real loopback sockets."""
