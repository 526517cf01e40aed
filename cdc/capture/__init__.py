"""The capture role: replication stream -> decoded changes -> Avro events -> Kafka.

Owns, in the order data flows: source set-up (``source_setup``), the
replication transport (``replication``), the pgoutput decoder (``pgoutput``),
the spool of streamed transactions (``spool``), event encoding
(``encoding/``), the producer session (``session``), the checkpoint
(``checkpoint``), exactly-once mode (``exactly_once``), slot watching
(``slot_watch``), incremental snapshots (``snapshot/``) and the runtime that
restarts it all (``runtime``). Imports ``core``, ``config``, ``kafka``,
``state`` and ``schema_registry``; never ``sync``, ``inbound`` or ``ops``.
"""
