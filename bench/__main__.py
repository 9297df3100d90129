"""``python -m bench``: see :mod:`bench.runner` (``python -m bench --help``)."""

from __future__ import annotations

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
