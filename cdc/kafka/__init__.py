"""Kafka clients shared by every role: the acknowledging producer, batch consumers, offsets.

Owns the producer wrapper that tracks acknowledgements (``publisher``), the
consumer-group and batch-feed plumbing (``consumer``) and the planning of
offset ranges for replays and lag (``replay_plan``), librdkafka's log lines
through Python logging (``client_log``) and the start-up probe of the cluster
(``probe``). librdkafka errors are translated to ``cdc.core.errors`` here.
Imports ``cdc.core`` and ``cdc.config``.
"""
