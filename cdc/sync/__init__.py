"""The sync role: Kafka topics -> mappers -> idempotent, last-writer-wins sinks.

Owns the runtime that starts one worker per integration (``runtime``), the
worker with its retries, circuit breaker and dead letters (``worker``), the
dead-letter commands (``dead_letters``), replays (``replay``) and the sinks
(``sinks/``). Imports ``core``, ``config``, ``kafka``, ``state``, ``inbound``,
``mappers`` and ``schema_registry``; never ``capture`` or ``ops``.
"""
