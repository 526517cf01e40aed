"""A table with awkward names, end to end: what Kafka, the registry and mappers see.

The table is ``public."CustomerNotes"`` (mixed case, listed in ``source.tables`` in SQL's
quoted form) with columns whose names are no Avro names: ``"first name"``, ``"quo""te"``,
``"2nd"``, ``"a-b"`` beside a plain ``a_b``, and mixed-case ``"Id"`` and ``"MixedCase"``.
The README's naming rules are checked here as a user meets them: the topic, the schema's
fields, a declarative mapper and a code mapper written against the rewritten names, and
the entities they produce.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from confluent_kafka import Consumer

from tests.integration.harness import read_log, spawn_cdcsync, terminate

TABLE_SQL = """
CREATE TABLE public."CustomerNotes" (
    "Id" integer PRIMARY KEY,
    "first name" text,
    "quo""te" text,
    "MixedCase" text,
    "2nd" text,
    "a-b" text,
    a_b text
)
"""

CODE_MAPPER = """
from pydantic import BaseModel


class Note(BaseModel):
    first: str | None
    quote: str | None
    second: str | None


def note(event, ctx):
    row = event.after
    if row is None:
        return [event.delete("note", str(event.key["Id"]))]
    # The rewritten names, as the README says: not "first name", 'quo"te' or "2nd".
    model = Note(first=row["first_name"], quote=row["quo_te"], second=row["_2nd"])
    return [event.upsert("note", str(row["Id"]), model)]
"""


def _entities(
    bootstrap: str,
    topic: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> dict[str, Any]:
    """The newest value per key of an entity topic, once ``until`` holds for them."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{topic}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    found: dict[str, Any] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while not until(found) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            value = msg.value()
            found[(msg.key() or b"").decode()] = None if value is None else json.loads(value)
    finally:
        consumer.close()
    return found


def _wait(
    what: str,
    predicate: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 60,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"cdcsync run exited:\n{read_log(log)[-4000:]}"
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{read_log(log)[-4000:]}")


def test_a_table_with_awkward_names_reaches_kafka_and_mappers_under_the_documented_names(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(TABLE_SQL)
    (tmp_path / "note_mappers.py").write_text(CODE_MAPPER)
    topic = f"{topic_prefix}.public.CustomerNotes"
    declared_topic = f"{topic_prefix}.entities.notes_declared"
    code_topic = f"{topic_prefix}.entities.notes_code"
    config = {
        "source": {
            "dsn": pg_dsn,
            "slot": f"s_{topic_prefix}",
            "publication": f"p_{topic_prefix}",
            "tables": ['public."CustomerNotes"'],
            "snapshot": "never",
        },
        "kafka": {
            "bootstrap_servers": kafka_bootstrap,
            "topic_prefix": topic_prefix,
            "properties": {"session.timeout.ms": 6000},
        },
        "registry": {"url": registry_url},
        "admin": {"listen": "127.0.0.1:0"},
        "state": {"schema": "cdcsync_state"},
        "integrations": {
            "declared": {
                "topics": [topic],
                "mapper": {
                    "entity": "Note",
                    "key": "Id",
                    "fields": {
                        "first": "first_name",
                        "quote": "quo_te",
                        "mixed": "MixedCase",
                        "second": "_2nd",
                        "dash": "a_b",
                        "underscore": "a_b_",
                    },
                },
                "sink": {"type": "kafka", "topic": declared_topic},
            },
            "code": {
                "topics": [topic],
                "mapper": "note_mappers:note",
                "sink": {"type": "kafka", "topic": code_topic},
            },
        },
    }
    path = tmp_path / "awkward.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "run.log"
    proc = spawn_cdcsync("run", path, log, env={"PYTHONPATH": str(tmp_path)})
    try:
        _wait(
            "capture to stream",
            lambda: "capture streaming from slot" in read_log(log),
            proc,
            log,
        )
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                'INSERT INTO public."CustomerNotes"'
                ' ("Id", "first name", "quo""te", "MixedCase", "2nd", "a-b", a_b)'
                " VALUES (1, 'Ada', 'say \"hi\"', 'Mixed', 'two', 'dash', 'underscore')"
            )

        # The topic keeps the table's case; the schema's fields are the rewritten names,
        # each keeping the column's own name in "__cdcsync_column" when it differs.
        _wait(
            "the value schema",
            lambda: httpx.get(f"{registry_url}/subjects").json().count(f"{topic}-value") == 1,
            proc,
            log,
        )
        schema = json.loads(
            httpx.get(f"{registry_url}/subjects/{topic}-value/versions/latest").json()["schema"]
        )
        assert schema["namespace"] == f"{topic_prefix}.public.CustomerNotes"
        row = next(f for f in schema["fields"] if f["name"] == "before")["type"][1]
        fields = {f["name"]: f.get("__cdcsync_column") for f in row["fields"]}
        assert fields == {
            "Id": None,
            "first_name": "first name",
            "quo_te": 'quo"te',
            "MixedCase": None,
            "_2nd": "2nd",
            "a_b": "a-b",
            "a_b_": "a_b",
        }

        declared = _entities(kafka_bootstrap, declared_topic, lambda found: "1" in found)
        assert {
            k: {f: v for f, v in e.items() if not f.startswith("_")} for k, e in declared.items()
        } == {
            "1": {
                "first": "Ada",
                "quote": 'say "hi"',
                "mixed": "Mixed",
                "second": "two",
                "dash": "dash",
                "underscore": "underscore",
            }
        }
        code = _entities(kafka_bootstrap, code_topic, lambda found: "1" in found)
        assert {
            k: {f: v for f, v in e.items() if not f.startswith("_")} for k, e in code.items()
        } == {"1": {"first": "Ada", "quote": 'say "hi"', "second": "two"}}

        # An update that leaves a large ("first name", stored out of line) value unchanged:
        # the event lists it in unavailable_columns under its field name, so the mapping
        # leaves "first" out instead of writing the placeholder.
        big = "".join(f"{n:x}{n * 7919 % 104729:x}" for n in range(4000))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                'INSERT INTO public."CustomerNotes" ("Id", "first name", "MixedCase")'
                " VALUES (2, %s, 'before')",
                (big,),
            )
            conn.execute('UPDATE public."CustomerNotes" SET "MixedCase" = \'after\' WHERE "Id" = 2')
        declared = _entities(
            kafka_bootstrap,
            declared_topic,
            lambda found: (found.get("2") or {}).get("mixed") == "after",
        )
        updated = declared["2"]
        assert updated["mixed"] == "after"
        assert "first" not in updated
        assert "__debezium_unavailable_value" not in json.dumps(declared)
        assert "dead-lettering" not in read_log(log)
    finally:
        terminate([proc])
