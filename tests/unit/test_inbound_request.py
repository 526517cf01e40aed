"""Inbound requests: authentication, validation and what is queued (no server needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cdc.config import Config, parse_config
from cdc.config.names import inbound_dead_letter_topic, inbound_group_id, inbound_topic
from cdc.core.errors import ConfigError, MappingError
from cdc.inbound.endpoint import InboundRejected, InboundRoute, sign
from mappers.entity import Version
from mappers.examples_inbound import crm_inbound_config
from mappers.inbound import InboundChange

SECRET = "inbound-signing-secret"
TOKEN = "inbound-bearer-token"
NOW_US = 1_780_000_000_000_000  # 2026-05-28, after the bodies' versions


def config(**inbound: Any) -> Config:
    section = {**crm_inbound_config(secret_env="CRM_INBOUND_SECRET"), **inbound}
    section = {k: v for k, v in section.items() if v is not None}
    return parse_config(
        {
            "source": {"dsn": "postgresql://cdc@db/app", "tables": ["public.customers"]},
            "kafka": {"bootstrap_servers": "localhost:9092", "topic_prefix": "app"},
            "registry": {"url": "http://localhost:8081"},
            "integrations": {
                "crm": {
                    "topics": ["app.public.customers"],
                    "mapper": "mappers.examples:customer_to_contact",
                    "sink": {"type": "http", "url": "http://crm/contacts/{key}"},
                    "inbound": section,
                }
            },
        },
        env={"CRM_INBOUND_SECRET": SECRET, "CRM_INBOUND_TOKEN": TOKEN},
    )


def route(**inbound: Any) -> InboundRoute:
    cfg = config(**inbound).integrations["crm"].inbound
    assert cfg is not None
    return InboundRoute("crm", cfg)


def body(**fields: Any) -> bytes:
    data = {"name": "Ada", "email": "ada@example.com", "updated_at": "2026-01-02T03:04:05Z"}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def parse(r: InboundRoute, data: bytes, *, method: str = "PUT", **headers: str) -> InboundChange:
    return r.parse(
        method=method,
        entity="contact",
        external_id="crm-7",
        headers={"idempotency-key": "k-1", **headers},
        body=data,
        now_us=NOW_US,
    )


def test_a_body_signed_with_the_integrations_secret_is_authenticated() -> None:
    data = body()
    route().authenticate({"x-signature": sign(SECRET.encode(), data)}, data)


def test_a_wrong_or_missing_signature_is_401_without_the_secret_in_the_answer() -> None:
    data = body()
    r = route()
    for headers in ({}, {"x-signature": sign(b"other", data)}, {"x-signature": "sha256=00"}):
        with pytest.raises(InboundRejected) as info:
            r.authenticate(headers, data)
        assert info.value.status == 401
        assert SECRET not in info.value.error
    # A signature over another body does not authenticate this one.
    with pytest.raises(InboundRejected):
        r.authenticate({"x-signature": sign(SECRET.encode(), body(name="Eve"))}, data)


def test_a_bearer_token_integration_accepts_the_token_and_refuses_others() -> None:
    r = route(secret_env=None, token_env="CRM_INBOUND_TOKEN")
    r.authenticate({"authorization": f"Bearer {TOKEN}"}, b"{}")
    with pytest.raises(InboundRejected) as info:
        r.authenticate({"authorization": "Bearer nope"}, b"{}")
    assert info.value.status == 401
    # The signature scheme is not configured, so a signature does not help.
    with pytest.raises(InboundRejected):
        r.authenticate({"x-signature": sign(SECRET.encode(), b"{}")}, b"{}")


def test_an_inbound_section_without_credentials_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"inbound.*authenticated"):
        config(secret_env=None)


def test_an_invalid_body_is_422_naming_each_field() -> None:
    with pytest.raises(InboundRejected) as info:
        parse(route(), body(email="not-an-email", name=..., nickname="x"))
    rejected = info.value
    assert rejected.status == 422
    named = {f["field"] for f in rejected.fields or []}
    assert named == {"email", "name", "nickname"}
    assert "email" in rejected.error


def test_a_missing_or_naive_version_is_422() -> None:
    for data in (body(updated_at=...), body(updated_at="2026-01-02T03:04:05")):
        with pytest.raises(InboundRejected) as info:
            parse(route(), data)
        assert info.value.status == 422
        assert [f["field"] for f in info.value.fields or []] == ["updated_at"]


def test_a_version_far_in_the_future_is_422_unless_allowed() -> None:
    future = body(updated_at="2027-01-01T00:00:00Z")
    with pytest.raises(InboundRejected) as info:
        parse(route(), future)
    assert info.value.status == 422
    assert "future" in info.value.error
    assert parse(route(max_future_s=400 * 86_400), future).version_us > NOW_US


def test_no_idempotency_key_or_no_json_object_is_400() -> None:
    r = route()
    with pytest.raises(InboundRejected) as info:
        r.parse(
            method="PUT",
            entity="contact",
            external_id="crm-7",
            headers={},
            body=body(),
            now_us=NOW_US,
        )
    assert info.value.status == 400
    assert "Idempotency-Key" in info.value.error
    for data in (b"not json", b"[1, 2]", b""):
        with pytest.raises(InboundRejected) as info:
            parse(r, data)
        assert info.value.status == 400


def test_another_entity_than_the_integrations_is_404() -> None:
    with pytest.raises(InboundRejected) as info:
        route().parse(
            method="PUT",
            entity="order",
            external_id="1",
            headers={"idempotency-key": "k"},
            body=body(),
            now_us=NOW_US,
        )
    assert info.value.status == 404


def test_a_valid_upsert_becomes_a_versioned_change_that_survives_the_queue() -> None:
    change = parse(route(), body())
    assert change.op == "upsert"
    assert change.version_us == 1_767_323_045_000_000
    assert change.fields["email"] == "ada@example.com"
    assert change.partition_key == b"contact/crm-7"
    assert InboundChange.from_json(change.to_json()) == change


def test_a_delete_is_versioned_by_its_body_or_by_the_time_of_receipt() -> None:
    r = route()
    stamped = parse(r, b'{"updated_at": "2026-01-02T03:04:05Z"}', method="DELETE")
    assert (stamped.op, stamped.version_us) == ("delete", 1_767_323_045_000_000)
    bare = parse(r, b"", method="DELETE")
    assert (bare.op, bare.version_us, bare.fields) == ("delete", NOW_US, {})
    with pytest.raises(InboundRejected) as info:
        parse(r, body(), method="DELETE")
    assert info.value.status == 422


def test_a_queued_record_that_is_not_a_change_is_a_mapping_error() -> None:
    for data in (b"", b"{}", b'{"op": "merge"}'):
        with pytest.raises(MappingError):
            InboundChange.from_json(data)


def test_inbound_names_default_from_the_integration() -> None:
    cfg = config()
    assert inbound_topic(cfg, "crm") == "app.inbound.crm"
    assert inbound_group_id(cfg, "crm") == "cdcsync.inbound.crm"
    assert inbound_dead_letter_topic(cfg, "crm") == "app.dlq.crm.inbound"


def test_the_base_version_header_is_carried_with_the_change_and_a_bad_one_is_400() -> None:
    r = route()
    version = Version.from_lsn(0x16B3740, 2).to_bytes().hex()
    assert parse(r, body()).base_version is None
    assert parse(r, body(), **{"x-cdcsync-base-version": ""}).base_version == ""
    based = parse(r, body(), **{"x-cdcsync-base-version": version.upper()})
    assert based.base == bytes.fromhex(version)
    assert InboundChange.from_json(based.to_json()) == based
    for bad in ("xyz", "00ff", version + "00"):
        with pytest.raises(InboundRejected) as refused:
            parse(r, body(), **{"x-cdcsync-base-version": bad})
        assert refused.value.status == 400
        assert "X-Cdcsync-Base-Version" in str(refused.value)
