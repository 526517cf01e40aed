"""External systems writing back: the HTTP endpoint and the worker that applies their writes.

Owns the endpoint that authenticates, validates and enqueues inbound writes
(``endpoint``), the worker that applies them to the source under a
replication origin (``apply``), and their dead letters and replays. Imports
``core``, ``config``, ``kafka``, ``state`` and ``mappers``.
"""
