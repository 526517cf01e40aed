"""The demo CRM over real HTTP: idempotency, version order, signatures, tombstones, faults."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator

import httpx
import pytest

from cdc.demo.crm import CrmServer
from mappers.entity import Version


@pytest.fixture
def crm() -> Iterator[CrmServer]:
    with CrmServer() as server:
        yield server


@pytest.fixture
def client(crm: CrmServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=crm.url, timeout=10) as c:
        yield c


def put(
    client: httpx.Client,
    key: str,
    body: dict[str, object],
    version: Version,
    *,
    idem: str | None = None,
    secret: str | None = None,
) -> httpx.Response:
    data = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": idem or f"contact:{key}:{version.to_bytes().hex()}",
        "X-Cdcsync-Version": str(version),
        "X-Cdcsync-Version-Bytes": version.to_bytes().hex(),
    }
    if secret is not None:
        headers["X-Signature"] = "sha256=" + hmac.new(secret.encode(), data, "sha256").hexdigest()
    return client.put(f"/contacts/{key}", content=data, headers=headers)


def delete(client: httpx.Client, key: str, version: Version) -> httpx.Response:
    return client.delete(
        f"/contacts/{key}",
        headers={
            "Idempotency-Key": f"contact:{key}:{version.to_bytes().hex()}",
            "X-Cdcsync-Version-Bytes": version.to_bytes().hex(),
        },
    )


def test_a_new_contact_gets_an_id_and_can_be_read_back(client: httpx.Client) -> None:
    created = put(client, "1", {"name": "Ada"}, Version.from_lsn(10, 0))
    assert created.status_code == 201
    assert created.json() == {"id": "crm-1", "name": "Ada"}
    second = put(client, "2", {"name": "Bob"}, Version.from_lsn(11, 0))
    assert second.json()["id"] == "crm-2"
    got = client.get("/contacts/1").json()
    assert (got["id"], got["fields"], got["version"]) == ("crm-1", {"name": "Ada"}, "0/A#0")
    listed = client.get("/contacts").json()["contacts"]
    assert sorted(c["key"] for c in listed) == ["1", "2"]
    assert client.get("/health").json() == {"status": "ok"}


def test_an_update_keeps_fields_it_does_not_mention(client: httpx.Client) -> None:
    put(client, "1", {"name": "Ada", "email": "ada@example.com"}, Version.from_lsn(10, 0))
    updated = put(client, "1", {"name": "Ada L."}, Version.from_lsn(20, 0))
    assert updated.status_code == 200
    assert updated.json() == {"id": "crm-1", "name": "Ada L.", "email": "ada@example.com"}


def test_a_repeated_idempotency_key_returns_the_first_answer_without_reapplying(
    client: httpx.Client,
) -> None:
    first = put(client, "1", {"name": "Ada"}, Version.from_lsn(10, 0), idem="k-1")
    again = put(client, "1", {"name": "Changed"}, Version.from_lsn(30, 0), idem="k-1")
    assert again.json() == first.json()
    assert client.get("/contacts/1").json()["fields"] == {"name": "Ada"}
    stats = client.get("/_stats").json()
    assert (stats["requests"], stats["applied"], stats["duplicates"]) == (2, 1, 1)


def test_an_older_version_is_refused_with_409_and_changes_nothing(client: httpx.Client) -> None:
    put(client, "1", {"name": "new"}, Version.from_lsn(20, 0))
    older = put(client, "1", {"name": "old"}, Version.from_lsn(10, 5))
    assert older.status_code == 409
    assert client.get("/contacts/1").json()["fields"] == {"name": "new"}
    assert client.get("/_stats").json()["older"] == 1


def test_a_deleted_contact_is_not_resurrected_by_an_older_write(client: httpx.Client) -> None:
    put(client, "1", {"name": "Ada"}, Version.from_lsn(10, 0))
    assert delete(client, "1", Version.from_lsn(30, 0)).status_code == 200
    assert client.get("/contacts/1").status_code == 404
    assert put(client, "1", {"name": "late"}, Version.from_lsn(20, 0)).status_code == 409
    assert client.get("/contacts").json() == {"contacts": []}
    assert delete(client, "never", Version.from_lsn(40, 0)).status_code == 404
    assert put(client, "never", {"name": "x"}, Version.from_lsn(39, 0)).status_code == 409


def test_a_newer_write_recreates_a_deleted_contact_with_its_old_id(client: httpx.Client) -> None:
    put(client, "1", {"name": "Ada", "email": "a@x"}, Version.from_lsn(10, 0))
    delete(client, "1", Version.from_lsn(20, 0))
    again = put(client, "1", {"name": "Ada"}, Version.from_lsn(30, 0))
    assert again.status_code == 201
    assert again.json() == {"id": "crm-1", "name": "Ada"}


def test_with_a_secret_only_correctly_signed_writes_are_accepted() -> None:
    with CrmServer(secret="hush") as crm, httpx.Client(base_url=crm.url) as client:
        unsigned = put(client, "1", {"name": "Ada"}, Version.from_lsn(10, 0))
        wrong = put(client, "1", {"name": "Ada"}, Version.from_lsn(10, 0), secret="nope")
        right = put(client, "1", {"name": "Ada"}, Version.from_lsn(10, 0), secret="hush")
        assert [unsigned.status_code, wrong.status_code, right.status_code] == [401, 401, 201]
        assert client.get("/_stats").json()["rejected"] == 2


def test_injected_failures_fail_the_next_writes_with_retry_after(client: httpx.Client) -> None:
    client.post("/_faults", json={"status": 503, "count": 2, "retry_after": 7})
    answers = [put(client, "1", {"n": i}, Version.from_lsn(10 + i, 0)) for i in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 201]
    assert answers[0].headers["retry-after"] == "7"
    assert client.get("/contacts/1").json()["fields"] == {"n": 2}


def test_rejected_keys_always_fail_until_faults_are_cleared(client: httpx.Client) -> None:
    client.post("/_faults", json={"reject_keys": ["42"], "status": 422})
    assert put(client, "42", {"n": 1}, Version.from_lsn(10, 0)).status_code == 422
    assert put(client, "42", {"n": 1}, Version.from_lsn(11, 0)).status_code == 422
    assert put(client, "7", {"n": 1}, Version.from_lsn(12, 0)).status_code == 201
    client.delete("/_faults")
    assert put(client, "42", {"n": 1}, Version.from_lsn(13, 0)).status_code == 201


def test_a_body_that_is_not_a_json_object_is_a_400(client: httpx.Client) -> None:
    answer = client.put("/contacts/1", content=b"[1, 2]")
    assert answer.status_code == 400
    assert client.get("/contacts/1").status_code == 404


def test_the_signature_is_an_hmac_of_the_exact_body_bytes() -> None:
    body = b'{"name":"Ada"}'
    signature = "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    with CrmServer(secret="k") as crm, httpx.Client(base_url=crm.url) as client:
        ok = client.put("/contacts/1", content=body, headers={"X-Signature": signature})
        spaced = client.put(
            "/contacts/1", content=b'{"name": "Ada"}', headers={"X-Signature": signature}
        )
    assert (ok.status_code, spaced.status_code) == (201, 401)


def test_without_version_checks_every_write_is_applied_in_arrival_order() -> None:
    with CrmServer(check_versions=False) as server, httpx.Client(base_url=server.url) as c:
        v1, v2 = Version.from_lsn(1, 0), Version.from_lsn(2, 0)
        assert put(c, "1", {"name": "newer"}, v2).status_code == 201
        assert put(c, "1", {"name": "older"}, v1).status_code == 200
        assert put(c, "1", {"name": "newer"}, v2).status_code == 200
        assert delete(c, "1", v1).status_code == 200
        assert c.get("/contacts/1").status_code == 404
