"""Tests of automatic failover (shaledb.server.cluster) and the Jepsen-style harness
(shaledb.testing.jepsen), against a real etcd on loopback."""
