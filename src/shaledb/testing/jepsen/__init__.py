"""A Jepsen-style harness for ShaleDB's automatic failover (docs/design.md, "Failover with
etcd"; tests/cluster/test_jepsen.py).

- :mod:`.history`: operations (invoke/complete times, ok/fail/info) and their recorder;
- :mod:`.linearizability`: a Wing-Gong/Lowe linearizability checker for registers, split
  per key, with step and time budgets;
- :mod:`.lostwrites`: every acknowledged write (register) or add (set) survives;
- :mod:`.proxy`: TCP proxies to cut and heal links;
- :mod:`.cluster`: etcd and N ``shaledb serve --etcd`` nodes on loopback behind proxies;
- :mod:`.workload`: clients (redis-py's Sentinel: the ``dev`` extra), the nemesis, a run.
"""
