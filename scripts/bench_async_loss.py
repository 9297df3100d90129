"""Async replication's loss window under load: how many acknowledged writes a failover
loses when the primary is SIGKILLed while clients write as fast as they can.

Starts etcd and a 3-node failover group on loopback (the Jepsen-style harness's cluster,
``shaledb.testing.jepsen.cluster``), asynchronous unless ``--sync-replicas K``. Each round:
``--clients`` threads send pipelines of ``--pipeline`` SADDs of unique members to the
primary's proxy and record every member whose pipeline was answered; after ``--seconds``
the primary is SIGKILLed, a new primary is awaited, and the members acknowledged but
missing from the new primary's set are counted as lost. The killed node is restarted (it
rejoins as a replica) before the next round. Prints one line per round and the totals.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import redis

from shaledb.testing.jepsen.cluster import Cluster, ClusterConfig


def _write(address: tuple[str, int], key: str, prefix: str, pipeline: int,
           stop: threading.Event, acked: set[str]) -> None:
    """One client: pipelines of unique SADDs until ``stop`` or an error; every member of
    an answered pipeline goes into ``acked``."""
    r = redis.Redis(host=address[0], port=address[1], socket_timeout=2)
    n = 0
    try:
        while not stop.is_set():
            batch = [f"{prefix}{n + j}" for j in range(pipeline)]
            n += pipeline
            pipe = r.pipeline(transaction=False)
            for m in batch:
                pipe.sadd(key, m)
            pipe.execute()
            acked.update(batch)
    except (redis.RedisError, OSError):
        pass
    finally:
        r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--pipeline", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--appendfsync", default="everysec")
    ap.add_argument("--sync-replicas", type=int, default=0)
    args = ap.parse_args()
    extra = ("--sync-replicas", str(args.sync_replicas)) if args.sync_replicas else ()
    total_acked = total_lost = 0
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ClusterConfig(Path(tmp), nodes=3, server_args=extra,
                            appendfsync=args.appendfsync)
        with Cluster(cfg) as cl:
            st = cl.wait_leader(0, 60)
            assert st is not None and st.leader is not None
            for rnd in range(args.rounds):
                time.sleep(2.0)  # replicas re-pointed and resynced after the last round
                st = cl.wait_leader(0, 60)
                assert st is not None and st.leader is not None
                leader = st.leader
                node = cl.node(leader.node)
                key = f"s{rnd}"
                acked: list[set[str]] = [set() for _ in range(args.clients)]
                stop = threading.Event()

                threads = [threading.Thread(target=_write, args=(
                    node.address, key, f"{i}-", args.pipeline, stop, acked[i]))
                    for i in range(args.clients)]
                for t in threads:
                    t.start()
                time.sleep(args.seconds)
                t0 = time.monotonic()
                node.kill()
                stop.set()
                for t in threads:
                    t.join(10)
                new = cl.wait_leader(leader.term, 60)
                took = time.monotonic() - t0
                assert new is not None and new.leader is not None
                r = redis.Redis(host=new.leader.host, port=new.leader.port, socket_timeout=10)
                present = {m.decode() if isinstance(m, bytes) else m for m in r.smembers(key)}
                r.close()
                all_acked = set().union(*acked)
                lost = len(all_acked - present)
                total_acked += len(all_acked)
                total_lost += lost
                print(f"round {rnd + 1}: killed {leader.node} (term {leader.term}), "
                      f"{new.leader.node} leads term {new.leader.term} after {took:.2f} s; "
                      f"{lost} of {len(all_acked)} acknowledged adds lost", flush=True)
                node.start()
    print(f"total: {total_lost} of {total_acked} acknowledged adds lost over {args.rounds} "
          f"failovers ({'sync-replicas ' + str(args.sync_replicas) if extra else 'async'}, "
          f"appendfsync {args.appendfsync})")


if __name__ == "__main__":
    main()
