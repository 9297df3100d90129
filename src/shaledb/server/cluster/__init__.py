"""Automatic failover with etcd: the etcd v3 client (:mod:`.etcd`), the leader election and
self-fencing state machine (:mod:`.election`), the interface it drives a node through
(:mod:`.control`) and the Sentinel-compatible view of a group (:mod:`.sentinel`).

Layering: this package calls only downward (``shaledb.errors``, the standard library);
``server.server`` starts a :class:`~.election.Election` beside the event loop and the
SENTINEL command reads the group through :mod:`.sentinel`. docs/design.md, "Failover with
etcd".
"""
