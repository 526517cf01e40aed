"""The registry's REST API spoken raw over HTTP: shapes, status codes, error bodies, edge input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from cdc.demo.throwaway import LocalRegistry

MEDIA = "application/vnd.schemaregistry.v1+json"
ROW = {"type": "record", "name": "Row", "fields": [{"name": "id", "type": "long"}]}
ROW2 = {
    "type": "record",
    "name": "Row",
    "fields": [{"name": "id", "type": "long"}, {"name": "n", "type": "int", "default": 0}],
}


@pytest.fixture
def http(registry_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry_url, timeout=30) as client:
        yield client


def subject() -> str:
    return f"api-{uuid.uuid4().hex[:10]}-value"


def register(http: httpx.Client, name: str, schema: Any = ROW) -> int:
    response = http.post(f"/subjects/{name}/versions", json={"schema": json.dumps(schema)})
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def snapshot(http: httpx.Client, name: str) -> tuple[Any, Any]:
    """What a user can see of the store: every subject, and this subject's versions."""
    subjects = http.get("/subjects", params={"deleted": "true"}).json()
    versions = http.get(f"/subjects/{name}/versions", params={"deleted": "true"})
    return subjects, versions.json()


def assert_error(response: httpx.Response, status: int, error_code: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(MEDIA)
    body = response.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == error_code
    assert isinstance(body["message"], str)
    assert body["message"]


def test_the_root_types_and_contexts_endpoints_answer_like_confluent(http: httpx.Client) -> None:
    assert http.get("/").json() == {}
    assert http.get("/schemas/types").json() == ["JSON", "AVRO"]
    assert http.get("/contexts").json() == ["."]
    assert_error(http.get("/associations/resources/x"), 404, 40401)


def test_a_registration_answers_200_with_the_registry_media_type(http: httpx.Client) -> None:
    name = subject()
    response = http.post(f"/subjects/{name}/versions", json={"schema": json.dumps(ROW)})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(MEDIA)
    schema_id = response.json()["id"]
    version = http.get(f"/subjects/{name}/versions/latest").json()
    assert version == {
        "subject": name,
        "version": 1,
        "id": schema_id,
        "schema": json.dumps(ROW, separators=(",", ":")),
    }
    assert http.get(f"/subjects/{name}/versions/-1/schema").json() == ROW
    assert http.get(f"/schemas/ids/{schema_id}/schema").json() == ROW
    assert http.get(f"/schemas/ids/{schema_id}").json() == {"schema": version["schema"]}
    assert {"subject": name, "version": 1} in http.get(f"/schemas/ids/{schema_id}/versions").json()
    assert name in http.get(f"/schemas/ids/{schema_id}/subjects").json()
    assert http.get(f"/subjects/{name}/versions/1/referencedby").json() == []


def test_a_malformed_json_body_is_refused_with_400_and_changes_nothing(http: httpx.Client) -> None:
    name = subject()
    register(http, name)
    before = snapshot(http, name)
    response = http.post(
        f"/subjects/{name}/versions",
        content=b'{"schema": "{\\"type\\": ',
        headers={"Content-Type": MEDIA},
    )
    assert_error(response, 400, 400)
    assert snapshot(http, name) == before


def test_invalid_avro_is_refused_with_42201_naming_the_problem(http: httpx.Client) -> None:
    name = subject()
    register(http, name)
    before = snapshot(http, name)
    bad_type = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "Nope"}]}
    bad_default = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "a", "type": "int", "default": "x"}],
    }
    cases = [
        ("not json", "JSON"),
        (json.dumps(bad_type), "Nope"),
        (json.dumps(bad_default), "default"),
    ]
    for text, named_problem in cases:
        response = http.post(f"/subjects/{name}/versions", json={"schema": text})
        assert_error(response, 422, 42201)
        assert named_problem in response.json()["message"]
    response = http.post(
        f"/subjects/{name}/versions", json={"schema": "{}", "schemaType": "PROTOBUF"}
    )
    assert_error(response, 422, 42201)
    assert "PROTOBUF" in response.json()["message"]
    assert_error(http.post(f"/subjects/{name}/versions", json={"nothing": 1}), 422, 42201)
    assert_error(http.post(f"/subjects/{name}/versions", json={"schema": ROW2}), 422, 422)
    assert_error(http.post(f"/subjects/{name}/versions", json=[json.dumps(ROW2)]), 422, 422)
    assert snapshot(http, name) == before


def test_an_incompatible_schema_answers_409_and_changes_nothing(http: httpx.Client) -> None:
    name = subject()
    register(http, name)
    before = snapshot(http, name)
    breaking = {"type": "record", "name": "Row", "fields": [{"name": "id", "type": "string"}]}
    response = http.post(f"/subjects/{name}/versions", json={"schema": json.dumps(breaking)})
    assert_error(response, 409, 409)
    assert snapshot(http, name) == before
    check = http.post(
        f"/compatibility/subjects/{name}/versions/latest",
        params={"verbose": "True"},
        json={"schema": json.dumps(breaking)},
    )
    assert check.status_code == 200
    assert check.json()["is_compatible"] is False
    assert any("TYPE_MISMATCH" in m for m in check.json()["messages"])
    plain = http.post(f"/compatibility/subjects/{name}/versions", json={"schema": json.dumps(ROW2)})
    assert plain.json() == {"is_compatible": True}


def test_an_unknown_compatibility_level_is_refused_with_42203(fresh_registry_url: str) -> None:
    with httpx.Client(base_url=fresh_registry_url) as http:
        assert_error(http.put("/config", json={"compatibility": "SIDEWAYS"}), 422, 42203)
        assert http.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
        assert http.put("/config", json={"compatibility": "full"}).json() == {
            "compatibility": "FULL"
        }
        assert http.get("/config").json() == {"compatibilityLevel": "FULL"}
        assert_error(http.get("/config/nobody"), 404, 40408)
        fallback = http.get("/config/nobody", params={"defaultToGlobal": "TRUE"})
        assert fallback.json() == {"compatibilityLevel": "FULL"}
        assert_error(http.put("/mode", json={"mode": "SOMETIMES"}), 422, 42204)
        assert http.get("/mode").json() == {"mode": "READWRITE"}


def test_a_body_over_the_limit_is_refused_with_413_and_changes_nothing(http: httpx.Client) -> None:
    name = subject()
    register(http, name)
    before = snapshot(http, name)
    huge = {"schema": json.dumps({**ROW2, "doc": "x" * 2_500_000})}
    response = http.post(f"/subjects/{name}/versions", json=huge)
    assert_error(response, 413, 413)
    assert snapshot(http, name) == before


def test_unknown_subjects_versions_and_ids_have_confluent_codes(http: httpx.Client) -> None:
    name = subject()
    schema_id = register(http, name)
    assert_error(http.get(f"/subjects/{subject()}/versions"), 404, 40401)
    assert_error(http.get(f"/subjects/{subject()}/versions/1"), 404, 40401)
    assert_error(http.get(f"/subjects/{name}/versions/7"), 404, 40402)
    assert_error(http.get(f"/subjects/{name}/versions/0"), 422, 42202)
    assert_error(http.get(f"/subjects/{name}/versions/one"), 422, 42202)
    assert_error(http.get("/schemas/ids/987654321"), 404, 40403)
    assert_error(http.get("/schemas/ids/abc"), 404, 404)
    assert_error(http.post(f"/subjects/{subject()}", json={"schema": json.dumps(ROW)}), 404, 40401)
    assert_error(http.post(f"/subjects/{name}", json={"schema": json.dumps(ROW2)}), 404, 40403)
    found = http.post(f"/subjects/{name}", json={"schema": json.dumps(ROW)}).json()
    assert (found["id"], found["version"], found["subject"]) == (schema_id, 1, name)
    assert_error(http.get("/no/such/route"), 404, 404)


def test_subjects_with_a_slash_sent_as_percent_2f_are_one_subject(http: httpx.Client) -> None:
    name = f"team/{uuid.uuid4().hex[:8]}/orders-value"
    encoded = name.replace("/", "%2F")
    schema_id = register(http, encoded)
    assert name in http.get("/subjects").json()
    info = http.get(f"/subjects/{encoded}/versions/1").json()
    assert (info["subject"], info["id"]) == (name, schema_id)
    assert http.delete(f"/subjects/{encoded}").json() == [1]
    assert name not in http.get("/subjects").json()


def test_content_is_negotiated_as_confluent_does_it(http: httpx.Client) -> None:
    name = subject()
    for content_type in (
        "application/json",
        "application/vnd.schemaregistry.v1+json",
        "application/vnd.schemaregistry+json; charset=utf-8",
        "application/octet-stream",
        None,
    ):
        headers = {"Content-Type": content_type} if content_type else {}
        response = http.post(
            f"/subjects/{name}/versions",
            content=json.dumps({"schema": json.dumps(ROW)}).encode(),
            headers=headers,
        )
        assert response.status_code == 200, (content_type, response.text)
    for accept, answered in (
        (None, MEDIA),
        ("*/*", MEDIA),
        (MEDIA, MEDIA),
        ("application/json", "application/json"),
        ("application/vnd.schemaregistry+json", "application/vnd.schemaregistry+json"),
        ("application/*", MEDIA),
        ("text/html, application/json;q=0.5", "application/json"),
        (f"application/json, {MEDIA};q=0.9", "application/json"),
    ):
        headers = {"Accept": accept} if accept else {}
        response = http.get(f"/subjects/{name}/versions", headers=headers)
        assert response.status_code == 200, (accept, response.text)
        assert response.headers["content-type"] == answered, accept
        assert response.json() == [1]
    missing = http.get(f"/subjects/{subject()}/versions", headers={"Accept": "application/json"})
    assert (missing.status_code, missing.headers["content-type"]) == (404, "application/json")
    for accept in ("text/html", "application/xml", "application/json;q=0"):
        refused = http.get(f"/subjects/{name}/versions", headers={"Accept": accept})
        assert_error(refused, 406, 406)
    before = http.get("/config").json()
    for content_type in ("text/plain", "application/xml", "application/x-www-form-urlencoded"):
        refused = http.put(
            "/config",
            content=json.dumps({"compatibility": "NONE"}).encode(),
            headers={"Content-Type": content_type},
        )
        assert_error(refused, 415, 415)
    assert http.get("/config").json() == before


def test_errors_are_answered_with_confluents_codes_and_statuses(http: httpx.Client) -> None:
    name = subject()
    register(http, name)
    before = snapshot(http, name)
    compat = json.dumps(ROW2)
    for path in (
        f"/compatibility/subjects/{name}/versions/9",
        f"/compatibility/subjects/{subject()}/versions/1",
    ):
        assert_error(http.post(path, json={"schema": compat}), 404, 40402)
    for bad in ("invalid", "1.5", "-x"):
        assert_error(http.get(f"/schemas/ids/{bad}"), 404, 404)
        assert_error(http.get(f"/schemas/ids/{bad}/versions"), 404, 404)
    for body in (
        [1, 2],
        "text",
        12,
        True,
        {"schema": {"type": "string"}},
        {"schema": '"int"', "id": "x"},
    ):
        answer = http.post(f"/subjects/{name}/versions", json=body)
        assert_error(answer, 422, 422)
        assert_error(http.post(f"/subjects/{name}", json=body), 422, 422)
    assert_error(http.put("/config", json=["NONE"]), 422, 422)
    assert snapshot(http, name) == before


def test_query_booleans_are_case_insensitive(http: httpx.Client) -> None:
    name = subject()
    register(http, name)
    assert http.delete(f"/subjects/{name}/versions/1").json() == 1
    assert_error(http.get(f"/subjects/{name}/versions"), 404, 40401)
    for spelling in ("true", "TRUE", "True"):
        assert http.get(f"/subjects/{name}/versions", params={"deleted": spelling}).json() == [1]
    assert_error(http.get(f"/subjects/{name}/versions", params={"deleted": "False"}), 404, 40401)
    assert http.delete(f"/subjects/{name}/versions/1", params={"permanent": "TRUE"}).json() == 1
    assert name not in http.get("/subjects", params={"deleted": "True"}).json()


def test_basic_auth_refuses_missing_or_wrong_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDCSYNC_TEST_REGISTRY_AUTH", "reg:s3cret")
    server = LocalRegistry(extra_args=("--basic-auth-env", "CDCSYNC_TEST_REGISTRY_AUTH")).start()
    try:
        with httpx.Client(base_url=server.url) as http:
            missing = http.get("/subjects")
            assert_error(missing, 401, 401)
            assert missing.headers["www-authenticate"].lower().startswith("basic")
            assert_error(http.get("/subjects", auth=("reg", "wrong")), 401, 401)
            assert "s3cret" not in missing.text
            assert http.get("/subjects", auth=("reg", "s3cret")).json() == []
    finally:
        server.stop()


def _nested_records(depth: int) -> str:
    text = '"int"'
    for level in range(depth):
        text = f'{{"type":"record","name":"R{level}","fields":[{{"name":"x","type":{text}}}]}}'
    return text


def test_a_schema_nested_5000_deep_is_refused_with_42201_and_changes_nothing(
    http: httpx.Client,
) -> None:
    name = subject()
    register(http, name)
    before = snapshot(http, name)
    for text in (_nested_records(5000), "[" * 5000 + '"int"' + "]" * 5000):
        for path in (f"/subjects/{name}/versions", f"/subjects/{name}"):
            assert_error(http.post(path, json={"schema": text}), 422, 42201)
        too_deep = http.post(f"/compatibility/subjects/{name}/versions", json={"schema": text})
        assert_error(too_deep, 422, 42201)
    body = ("[" * 100_000 + "]" * 100_000).encode()
    assert_error(http.post(f"/subjects/{name}/versions", content=body), 400, 400)
    assert snapshot(http, name) == before
    # A deep schema within the bound (99 nested records) still registers.
    deep = http.post(f"/subjects/{subject()}/versions", json={"schema": _nested_records(99)})
    assert deep.status_code == 200, deep.text


@pytest.mark.parametrize(
    "bad",
    ["a\x00b", "../../config", "x" * 10_000, "a/./b", "line\nbreak", " "],
    ids=["nul", "path-escape", "10000-chars", "dot-segment", "newline", "blank"],
)
def test_invalid_subject_names_are_refused_with_42208_and_change_nothing(
    http: httpx.Client, bad: str
) -> None:
    before = http.get("/subjects", params={"deleted": "true"}).json()
    path = quote(bad, safe="")
    answer = http.post(f"/subjects/{path}/versions", json={"schema": json.dumps(ROW)})
    assert_error(answer, 422, 42208)
    assert_error(http.put(f"/config/{path}", json={"compatibility": "NONE"}), 422, 42208)
    assert_error(http.put(f"/mode/{path}", json={"mode": "READONLY"}), 422, 42208)
    assert http.get("/subjects", params={"deleted": "true"}).json() == before
    assert http.get(f"/config/{path}").status_code == 404
    # A long but reasonable subject (a record name strategy's) is fine.
    fine = f"{subject()}.{'n' * 500}"
    assert (
        http.post(f"/subjects/{fine}/versions", json={"schema": json.dumps(ROW)}).status_code == 200
    )


def test_get_schemas_lists_versions_with_prefix_deleted_latest_only_and_paging(
    fresh_registry_url: str,
) -> None:
    with httpx.Client(base_url=fresh_registry_url, timeout=30) as http:
        first = register(http, "list-a", ROW)
        second = register(http, "list-a", ROW2)
        register(http, "list-b", ROW)
        register(http, "other", ROW)
        assert http.delete("/subjects/list-b/versions/1").status_code == 200

        def listing(**params: str) -> list[tuple[str, int, int]]:
            answer = http.get("/schemas", params=params)
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith(MEDIA)
            return [(s["subject"], s["version"], s["id"]) for s in answer.json()]

        assert listing(subjectPrefix="list") == [("list-a", 1, first), ("list-a", 2, second)]
        assert listing(subjectPrefix="list", deleted="true") == [
            ("list-a", 1, first),
            ("list-a", 2, second),
            ("list-b", 1, first),
        ]
        assert listing(subjectPrefix="list", latestOnly="true", deleted="true") == [
            ("list-a", 2, second),
            ("list-b", 1, first),
        ]
        assert [s for s, _, _ in listing()] == ["list-a", "list-a", "other"]
        assert listing(offset="1", limit="1") == [("list-a", 2, second)]
        entry = http.get("/schemas", params={"subjectPrefix": "other"}).json()[0]
        assert entry == {
            "subject": "other",
            "version": 1,
            "id": first,
            "schema": json.dumps(ROW, separators=(",", ":")),
        }
