"""The execution layer: from a request to a reply, one event-loop turn at a time.

:mod:`.dispatch` (lookup, arity, ACL, MULTI queueing, the per-turn commit shared by every
client), :mod:`.context` (what a command handler gets: the :class:`~.context.Context` and
the narrow :class:`~.context.Services` interface), :mod:`.client` (the state of one client),
:mod:`.watch` (WATCH), :mod:`.cursors` (SCAN cursors), :mod:`.durability` (fsync groups),
:mod:`.checkpoint` (SAVE/BGSAVE) and :mod:`.deferred` (replies that come later).
"""
