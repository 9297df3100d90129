"""The administration layer: what operators configure and observe.

:mod:`.config` (the configuration file and flags), :mod:`.settings` (CONFIG GET/SET),
:mod:`.acl` (users and permissions), :mod:`.info` (INFO), :mod:`.metrics` and
:mod:`.httpendpoint` (Prometheus metrics and health over HTTP), :mod:`.stats` (command
statistics), :mod:`.slowlog` (SLOWLOG) and :mod:`.logs` (logging setup).
"""
