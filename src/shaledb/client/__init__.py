"""Client-side helpers for ShaleDB's own commands, on top of redis-py (or any client with
``execute_command``): :mod:`.krange` (KRANGE, KDELRANGE, KBATCH)."""
