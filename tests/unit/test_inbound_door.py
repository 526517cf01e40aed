"""The inbound endpoint refuses at the door what the source database could not store.

Requests go through the admin API's ASGI app (the server's own routing and path decoding),
so the id is read as a client sent it. Every refusal happens before anything is queued:
the endpoint has not even created its Kafka producer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from cdc.config import Config, parse_config
from cdc.core.errors import ConfigError
from cdc.inbound.endpoint import sign
from cdc.ops.admin_api import AdminApi
from mappers.examples_inbound import crm_inbound_config

SECRET = "inbound-signing-secret"
BODY = {"name": "Ada", "email": "ada@example.com", "updated_at": "2026-01-02T03:04:05Z"}


def config() -> Config:
    return parse_config(
        {
            "source": {"dsn": "postgresql://cdc@127.0.0.1:1/app", "tables": ["public.customers"]},
            "kafka": {"bootstrap_servers": "127.0.0.1:1", "topic_prefix": "app"},
            "registry": {"url": "http://127.0.0.1:1"},
            "integrations": {
                "crm": {
                    "topics": ["app.public.customers"],
                    "mapper": "mappers.examples:customer_to_contact",
                    "sink": {"type": "http", "url": "http://127.0.0.1:1/contacts/{key}"},
                    "inbound": crm_inbound_config(secret_env="CRM_INBOUND_SECRET"),
                }
            },
        },
        env={"CRM_INBOUND_SECRET": SECRET},
    )


def put(raw_id: str, body: Any = BODY, *, key: str = "k-1") -> tuple[httpx.Response, AdminApi]:
    """A signed PUT to /inbound/crm/contact/{raw_id} (``raw_id`` is sent as written)."""
    api = AdminApi(config())
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            return await client.put(
                f"/inbound/crm/contact/{raw_id}",
                content=data,
                headers={"Idempotency-Key": key, "X-Signature": sign(SECRET.encode(), data)},
            )

    return asyncio.run(send()), api


def assert_refused(response: httpx.Response, api: AdminApi, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.json()
    assert api.inbound is not None and api.inbound._enqueuer is None  # nothing queued


@pytest.mark.parametrize(
    ("raw_id", "why"),
    [
        ("a%00b", "U+0000"),
        ("a%0Db", "U+000D"),
        ("a%0Ab", "U+000A"),
        ("a%1Bb", "U+001B"),
        ("a%7Fb", "U+007F"),
        ("a%C2%85b", "U+0085"),
        ("a%E2%80%8Bb", "U+200B"),
        ("a%E2%80%A8b", "U+2028"),
    ],
)
def test_an_id_with_a_control_character_is_400_naming_it(raw_id: str, why: str) -> None:
    response, api = put(raw_id)
    assert_refused(response, api, 400, why)


@pytest.mark.parametrize("raw_id", ["%ff%fe", "%fe%ff", "a%c3", "%ed%a0%80"])
def test_an_id_that_is_not_utf8_is_400_not_a_replacement_character(raw_id: str) -> None:
    response, api = put(raw_id)
    assert_refused(response, api, 400, "not valid UTF-8")


def test_an_id_longer_than_200_characters_is_400() -> None:
    response, api = put("x" * 201)
    assert_refused(response, api, 400, "1 to 200 characters")


def test_an_idempotency_key_with_a_control_character_is_400() -> None:
    response, api = put("crm-1", key="k\x01")
    assert_refused(response, api, 400, "Idempotency-Key")


def test_text_the_database_cannot_store_is_422_naming_the_field() -> None:
    response, api = put("crm-1", {**BODY, "name": "Ada\x00Lovelace"})
    assert_refused(response, api, 422, "name: contains NUL")
    assert response.json()["fields"] == [{"field": "name", "message": "contains NUL (U+0000)"}]
    surrogate = json.dumps(BODY).replace('"Ada"', '"Ada\\ud800"').encode()
    response, api = put("crm-1", surrogate)
    assert_refused(response, api, 422, "name: contains a lone surrogate")
    response, api = put("crm-1", {**BODY, "x\x00": 1})
    assert_refused(response, api, 422, "contains NUL")


def test_an_ordinary_id_with_escaped_utf8_passes_the_door() -> None:
    """Accepted ids still reach the queue step (here Kafka is away: 503, not 400)."""
    for raw_id in ("crm-1", "caf%C3%A9", "a%20b", "%E2%9C%93"):
        api = AdminApi(config())
        assert api.inbound is not None
        route = api.inbound.routes_by_name["crm"]
        change = route.parse(
            method="PUT",
            entity="contact",
            external_id=raw_id.replace("%C3%A9", "é").replace("%20", " ").replace("%E2%9C%93", "✓"),
            headers={"idempotency-key": "k"},
            body=json.dumps(BODY).encode(),
            now_us=1_780_000_000_000_000,
        )
        assert change.external_id


def admin_config(**admin: Any) -> Config:
    raw: dict[str, Any] = {
        "source": {"dsn": "postgresql://cdc@127.0.0.1:1/app", "tables": ["public.customers"]},
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "topic_prefix": "app"},
        "registry": {"url": "http://127.0.0.1:1"},
        "admin": admin,
    }
    return parse_config(raw)


def test_an_admin_api_on_a_non_loopback_address_without_a_token_refuses_to_start() -> None:
    api = AdminApi(admin_config(listen="0.0.0.0:0"))
    with pytest.raises(ConfigError, match=r"admin\.allow_unauthenticated_remote"):
        api.bind()
    assert api.port == 0  # nothing listened
    for allowed in (
        admin_config(listen="0.0.0.0:0", token="t0ken"),
        admin_config(listen="0.0.0.0:0", allow_unauthenticated_remote=True),
        admin_config(listen="127.0.0.1:0"),
        admin_config(listen="localhost:0"),
    ):
        api = AdminApi(allowed)
        api.bind()
        assert api.port > 0
        assert api._sock is not None
        api._sock.close()
