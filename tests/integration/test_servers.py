"""Smoke tests proving that each fixture's server is real."""

from __future__ import annotations

import uuid

import httpx
import psycopg
from confluent_kafka import Consumer, Producer


def test_postgres_fixture_is_a_real_server_with_logical_wal(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        wal_level = conn.execute("SHOW wal_level").fetchone()
        version = conn.execute("SHOW server_version_num").fetchone()
    assert wal_level == ("logical",)
    assert version is not None
    assert int(version[0]) >= 150000


def test_kafka_fixture_round_trips_a_message(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.smoke"
    payload = uuid.uuid4().bytes
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=b"k", value=payload)
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{topic_prefix}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        got = None
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                got = msg.value()
                break
    finally:
        consumer.close()
    assert got == payload


def test_registry_fixture_answers_http(registry_url: str) -> None:
    response = httpx.get(f"{registry_url}/subjects")
    assert response.status_code == 200
    assert isinstance(response.json(), list)
