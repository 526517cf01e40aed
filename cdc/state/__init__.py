"""The sync state store: a small schema in PostgreSQL that sync, inbound and snapshots share.

Owns the identity map, the last applied version and tombstones per
(integration, key) for sinks that cannot hold versions, dead-letter and
snapshot bookkeeping (``store``). Imports ``cdc.core``, ``cdc.config`` and
``mappers`` (for versions and origins).
"""
