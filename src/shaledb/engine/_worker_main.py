"""Entry point of the compaction worker process (``python -m shaledb.engine._worker_main``).

A module of its own, imported by nobody else, so that ``-m`` runs it fresh."""

import sys

from shaledb.engine.compaction_worker import _serve

if __name__ == "__main__":
    _serve(int(sys.argv[1]))
