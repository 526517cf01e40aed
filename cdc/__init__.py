"""cdcsync capture and runtime.

Reads PostgreSQL changes through logical replication (pgoutput), encodes them
as Debezium-compatible Avro events, publishes them to Kafka and drives the
sync workers that apply them to external systems. One module per concept:
``replication`` (transport), ``pgoutput`` (decode), ``types`` (type mapping),
``envelope`` (events), ``publisher`` (Kafka), ``checkpoint`` (flush position),
``cli`` (command line).
"""

__version__ = "0.1.0"
