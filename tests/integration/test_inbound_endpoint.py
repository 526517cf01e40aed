"""The inbound endpoint over HTTP against a real broker: answers, and Kafka being away."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from cdc.config import parse_config
from cdc.config.names import inbound_topic
from cdc.demo.throwaway import LocalBroker
from cdc.inbound.endpoint import sign
from cdc.ops.admin_api import AdminApi
from mappers.examples_inbound import crm_inbound_config
from tests.integration.inbound_harness import INBOUND_SECRET

BODY = {"name": "Ada", "email": "ada@example.com", "updated_at": "2026-01-02T03:04:05Z"}


def _config(bootstrap: str, prefix: str) -> Any:
    return parse_config(
        {
            "source": {"dsn": "postgresql://cdc@127.0.0.1:1/app", "tables": ["public.customers"]},
            "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix},
            "registry": {"url": "http://127.0.0.1:1"},
            "integrations": {
                "crm": {
                    "topics": [f"{prefix}.public.customers"],
                    "mapper": "mappers.examples:customer_to_contact",
                    "sink": {"type": "http", "url": "http://127.0.0.1:1/contacts/{key}"},
                    "inbound": {
                        **crm_inbound_config(secret_env="CRM_INBOUND_SECRET"),
                        "enqueue_timeout_s": 2,
                    },
                }
            },
            "admin": {"listen": "127.0.0.1:0", "token": "admin-token"},
        },
        env={"CRM_INBOUND_SECRET": INBOUND_SECRET},
    )


async def _put(
    client: httpx.AsyncClient, key: str, body: dict[str, Any], *, signed: bool = True
) -> httpx.Response:
    data = json.dumps(body).encode()
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    if signed:
        headers["X-Signature"] = sign(INBOUND_SECRET.encode(), data)
    return await client.put("/inbound/crm/contact/crm-1", content=data, headers=headers)


def _queued(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.partition.eof": True}
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out = []
        while True:
            msg = consumer.poll(10)
            assert msg is not None, "the inbound topic could not be read"
            if msg.error() is not None:
                break  # end of the partition
            out.append(json.loads(msg.value()))
        return out
    finally:
        consumer.close()


def test_the_endpoint_answers_503_while_kafka_is_frozen_and_accepts_the_retry(
    private_broker: LocalBroker, topic_prefix: str
) -> None:
    config = _config(private_broker.bootstrap, topic_prefix)

    async def scenario() -> None:
        api = AdminApi(config)
        api.bind()
        stop = asyncio.Event()
        serving = asyncio.create_task(api.serve(stop))
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{api.port}", timeout=30
            ) as client:
                assert (await _put(client, "k-1", BODY)).status_code == 202
                # The admin token is not what authenticates inbound changes.
                unsigned = await _put(client, "k-x", BODY, signed=False)
                assert unsigned.status_code == 401
                invalid = await _put(client, "k-y", {**BODY, "email": "nope"})
                assert invalid.status_code == 422
                assert [f["field"] for f in invalid.json()["fields"]] == ["email"]
                private_broker.pause()
                try:
                    frozen = await _put(client, "k-2", BODY)
                finally:
                    private_broker.resume()
                assert frozen.status_code == 503
                assert "Idempotency-Key" in frozen.json()["error"]
                for _ in range(15):  # the client retries with the same key until accepted
                    retried = await _put(client, "k-2", BODY)
                    if retried.status_code == 202:
                        break
                assert retried.status_code == 202
                status = (
                    await client.get("/status", headers={"Authorization": "Bearer admin-token"})
                ).json()["inbound"]["crm"]
                assert status["accepted"] >= 2
                assert status["rejected"]["401"] == 1
                assert status["rejected"]["422"] == 1
                assert status["rejected"]["503"] >= 1
        finally:
            stop.set()
            await serving

    asyncio.run(scenario())
    queued = _queued(private_broker.bootstrap, inbound_topic(config, "crm"))
    keys = [q["idempotency_key"] for q in queued]
    # Nothing refused was queued; the retried key is there (maybe twice: apply dedupes).
    assert set(keys) == {"k-1", "k-2"}
    assert keys.count("k-1") == 1
    assert all(q["fields"]["email"] == "ada@example.com" for q in queued)
