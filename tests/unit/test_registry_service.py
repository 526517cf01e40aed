"""The registry's domain rules on a real SQLite file: ids, versions, deletes, config, mode."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schema_registry.service import RegistryService, RegistryServiceError, SchemaRequest
from schema_registry.storage_url import open_storage


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RegistryService]:
    storage = open_storage(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        yield RegistryService(storage)
    finally:
        storage.close()


def avro(*fields: tuple[str, Any] | tuple[str, Any, Any], name: str = "Row") -> SchemaRequest:
    out = []
    for spec in fields:
        item: dict[str, Any] = {"name": spec[0], "type": spec[1]}
        if len(spec) == 3:
            item["default"] = spec[2]
        out.append(item)
    return SchemaRequest(json.dumps({"type": "record", "name": name, "fields": out}))


V1 = avro(("id", "long"))
V2 = avro(("id", "long"), ("name", "string", ""))
V3 = avro(("id", "long"), ("name", "string", ""), ("age", "int", 0))


def error_code(exc: pytest.ExceptionInfo[RegistryServiceError]) -> int:
    return exc.value.error_code


def test_registering_the_same_schema_twice_returns_the_same_id(service: RegistryService) -> None:
    first = service.register("orders-value", V1)
    spaced = SchemaRequest(json.dumps(json.loads(V1.schema), indent=4))
    assert service.register("orders-value", spaced) == first
    assert service.versions("orders-value") == [1]


def test_the_same_schema_under_another_subject_keeps_its_id_and_starts_at_version_one(
    service: RegistryService,
) -> None:
    schema_id = service.register("a-value", V1)
    assert service.register("b-value", V1) == schema_id
    assert service.get_version("b-value", "latest").version == 1
    assert service.subjects_of_schema(schema_id) == ["a-value", "b-value"]


def test_distinct_schemas_get_increasing_ids_and_versions(service: RegistryService) -> None:
    ids = [service.register("s", v) for v in (V1, V2, V3)]
    assert ids == sorted(set(ids))
    assert service.versions("s") == [1, 2, 3]
    latest = service.get_version("s", -1)
    assert (latest.version, latest.schema_id) == (3, ids[2])
    assert json.loads(latest.schema) == json.loads(V3.schema)


def test_an_incompatible_schema_is_refused_and_changes_nothing(service: RegistryService) -> None:
    service.register("s", V1)
    with pytest.raises(RegistryServiceError) as exc:
        service.register("s", avro(("id", "long"), ("required", "string")))
    assert error_code(exc) == 409
    assert "required" in str(exc.value)
    assert service.versions("s") == [1]


def test_invalid_avro_is_refused_with_42201(service: RegistryService) -> None:
    bad_default = avro(("id", "long", "not a number"))
    for request in (SchemaRequest("{not json"), SchemaRequest('{"type": "nope"}'), bad_default):
        with pytest.raises(RegistryServiceError) as exc:
            service.register("s", request)
        assert error_code(exc) == 42201
    with pytest.raises(RegistryServiceError) as exc:
        service.register("s", SchemaRequest('{"type": "string"}', schema_type="PROTOBUF"))
    assert error_code(exc) == 42201
    assert "AVRO" in str(exc.value)
    assert service.subjects() == []


def test_soft_deleted_versions_disappear_but_their_numbers_are_never_reused(
    service: RegistryService,
) -> None:
    service.register("s", V1)
    service.register("s", V2)
    assert service.delete_version("s", 2) == 2
    assert service.versions("s") == [1]
    assert service.versions("s", deleted=True) == [1, 2]
    service.register("s", V3)
    assert service.versions("s") == [1, 3]


def test_a_schema_registered_again_after_a_soft_delete_gets_a_new_version_and_its_old_id(
    service: RegistryService,
) -> None:
    first = service.register("s", V1)
    assert service.delete_subject("s") == [1]
    assert service.subjects() == []
    assert service.subjects(deleted=True) == ["s"]
    assert service.register("s", V1) == first
    assert service.versions("s") == [2]


def test_permanent_deletes_require_a_soft_delete_first(service: RegistryService) -> None:
    service.register("s", V1)
    service.register("s", V2)
    with pytest.raises(RegistryServiceError) as exc:
        service.delete_version("s", 1, permanent=True)
    assert error_code(exc) == 40407
    with pytest.raises(RegistryServiceError) as exc:
        service.delete_subject("s", permanent=True)
    assert error_code(exc) == 40405
    assert service.delete_subject("s") == [1, 2]
    with pytest.raises(RegistryServiceError) as exc:
        service.delete_subject("s")
    assert error_code(exc) == 40404
    with pytest.raises(RegistryServiceError) as exc:
        service.delete_version("s", 1)
    assert error_code(exc) == 40406
    assert service.delete_subject("s", permanent=True) == [1, 2]
    assert service.subjects(deleted=True) == []
    with pytest.raises(RegistryServiceError) as exc:
        service.versions("s", deleted=True)
    assert error_code(exc) == 40401
    # Versions keep counting after a permanent delete.
    service.register("s", V1)
    assert service.versions("s") == [3]


def test_unknown_subjects_versions_and_ids_have_distinct_codes(service: RegistryService) -> None:
    service.register("s", V1)
    cases: list[tuple[Callable[[], object], int]] = [
        (lambda: service.versions("nobody"), 40401),
        (lambda: service.get_version("s", 9), 40402),
        (lambda: service.get_version("s", "zero"), 42202),
        (lambda: service.get_version("s", 0), 42202),
        (lambda: service.schema_by_id(999), 40403),
        (lambda: service.lookup("s", V2), 40403),
        (lambda: service.lookup("nobody", V1), 40401),
    ]
    for call, code in cases:
        with pytest.raises(RegistryServiceError) as exc:
            call()
        assert error_code(exc) == code


def test_lookup_finds_the_version_and_normalize_ignores_namespaces_and_docs(
    service: RegistryService,
) -> None:
    plain = {"type": "record", "name": "x.Row", "fields": [{"name": "id", "type": "long"}]}
    schema_id = service.register("s", SchemaRequest(json.dumps(plain)), normalize=True)
    found = service.lookup("s", SchemaRequest(json.dumps(plain)), normalize=True)
    assert (found.version, found.schema_id) == (1, schema_id)
    # What was stored is the normalised text, so looking it up verbatim finds it too.
    stored = service.schema_by_id(schema_id).schema
    assert service.lookup("s", SchemaRequest(stored)).schema_id == schema_id
    other_spelling = {
        "type": "record",
        "name": "Row",
        "namespace": "x",
        "doc": "a row",
        "fields": [{"name": "id", "type": {"type": "long"}}],
    }
    with pytest.raises(RegistryServiceError):
        service.lookup("s", SchemaRequest(json.dumps(other_spelling)))
    assert (
        service.lookup("s", SchemaRequest(json.dumps(other_spelling)), normalize=True).version == 1
    )
    assert service.register("s", SchemaRequest(json.dumps(other_spelling)), normalize=True) == (
        schema_id
    )


def test_config_defaults_to_backward_and_subject_config_overrides_global(
    service: RegistryService,
) -> None:
    assert service.get_config().value == "BACKWARD"
    with pytest.raises(RegistryServiceError) as exc:
        service.get_config("s")
    assert error_code(exc) == 40408
    assert service.get_config("s", default_to_global=True).value == "BACKWARD"
    service.register("s", V1)
    service.set_config("s", "none")
    service.register("s", avro(("totally", "boolean"), name="Other"))
    assert service.get_config("s").value == "NONE"
    with pytest.raises(RegistryServiceError) as exc:
        service.set_config(None, "sideways")
    assert error_code(exc) == 42203
    assert service.delete_config("s").value == "NONE"
    assert service.get_config("s", default_to_global=True).value == "BACKWARD"


def test_transitive_levels_check_every_live_version(service: RegistryService) -> None:
    service.set_config("s", "BACKWARD")
    service.register("s", avro(("id", "string")))
    service.set_config("s", "NONE")
    service.register("s", V1)
    service.set_config("s", "BACKWARD")
    # Against the latest only, re-adding a field type change is fine...
    assert service.test_compatibility("s", V2).compatible
    service.set_config("s", "BACKWARD_TRANSITIVE")
    # ...but not against the first version.
    result = service.test_compatibility("s", V2)
    assert not result.compatible
    assert any("version 1" in m for m in result.messages)
    with pytest.raises(RegistryServiceError) as exc:
        service.register("s", V2)
    assert error_code(exc) == 409
    # Checking against one named version ignores transitivity.
    assert service.test_compatibility("s", V2, spec=2).compatible
    assert not service.test_compatibility("s", V2, spec=1).compatible


def test_forward_and_full_levels_protect_old_readers(service: RegistryService) -> None:
    service.register("f", V2)
    service.set_config("f", "FORWARD")
    drops_required = avro(("name", "string", ""))
    assert not service.test_compatibility("f", drops_required).compatible
    service.set_config("f", "FULL")
    assert service.register("f", V3) > 0
    assert not service.test_compatibility("f", avro(("id", "long"), ("x", "int"))).compatible


def test_readonly_mode_refuses_writes_but_allows_reads_and_config(
    service: RegistryService,
) -> None:
    service.register("s", V1)
    assert service.set_mode(None, "readonly") == "READONLY"
    for call in (
        lambda: service.register("s", V2),
        lambda: service.delete_subject("s"),
        lambda: service.delete_version("s", 1),
    ):
        with pytest.raises(RegistryServiceError) as exc:
            call()
        assert error_code(exc) == 42205
    assert service.versions("s") == [1]
    service.set_config("s", "NONE")
    # A subject's own mode overrides the global one.
    service.set_mode("s", "READWRITE")
    assert service.register("s", V2) > 0
    with pytest.raises(RegistryServiceError) as exc:
        service.set_mode(None, "SOMETIMES")
    assert error_code(exc) == 42204
    with pytest.raises(RegistryServiceError) as exc:
        service.get_mode("other")
    assert error_code(exc) == 40409
    assert service.get_mode("other", default_to_global=True) == "READONLY"


def test_import_mode_keeps_the_given_ids_and_versions(service: RegistryService) -> None:
    service.set_mode(None, "IMPORT")
    request = SchemaRequest(V1.schema, schema_id=42, version=7)
    assert service.register("imported", request) == 42
    info = service.get_version("imported", 7)
    assert (info.schema_id, info.version) == (42, 7)
    clash = SchemaRequest(V2.schema, schema_id=42, version=8)
    with pytest.raises(RegistryServiceError) as exc:
        service.register("imported", clash)
    assert error_code(exc) == 42205
    service.set_mode(None, "READWRITE")
    assert service.register("imported", V2) == 43
    assert service.versions("imported") == [7, 8]


def test_import_mode_needs_an_empty_registry_unless_forced(service: RegistryService) -> None:
    service.register("s", V1)
    with pytest.raises(RegistryServiceError) as exc:
        service.set_mode(None, "IMPORT")
    assert error_code(exc) == 42205
    assert service.set_mode(None, "IMPORT", force=True) == "IMPORT"


def test_ids_are_refused_outside_import_mode(service: RegistryService) -> None:
    with pytest.raises(RegistryServiceError) as exc:
        service.register("s", SchemaRequest(V1.schema, schema_id=5))
    assert error_code(exc) == 42205
    assert service.subjects() == []


def test_subjects_can_be_filtered_by_prefix(service: RegistryService) -> None:
    for subject in ("app.public.a-value", "app.public.b-key", "other-value"):
        service.register(subject, V1)
    assert service.subjects(prefix="app.") == ["app.public.a-value", "app.public.b-key"]


def test_references_resolve_named_types_from_another_subject(service: RegistryService) -> None:
    address = {
        "type": "record",
        "name": "Address",
        "namespace": "com.acme",
        "fields": [{"name": "city", "type": "string"}],
    }
    service.register("address", SchemaRequest(json.dumps(address)))
    customer = {
        "type": "record",
        "name": "Customer",
        "namespace": "com.acme",
        "fields": [{"name": "home", "type": "Address"}],
    }
    from schema_registry.schemas import Reference

    ref = Reference("com.acme.Address", "address", 1)
    customer_id = service.register(
        "customer", SchemaRequest(json.dumps(customer), references=(ref,))
    )
    info = service.get_version("customer", 1)
    assert info.references == (ref,)
    assert service.referenced_by("address", 1) == [customer_id]
    with pytest.raises(RegistryServiceError) as exc:
        service.register("lonely", SchemaRequest(json.dumps(customer)))
    assert error_code(exc) == 42201
