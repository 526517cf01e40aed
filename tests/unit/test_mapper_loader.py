"""Loading mappers named in the config: references, signatures, results and failures."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdc.config import DeclarativeMapping
from cdc.core.errors import ConfigError, MappingError, RelationPending
from mappers.entity import EntityDelete, EntityUpsert, Origin, TableEvent
from mappers.examples import Contact
from mappers.loader import load_mapper
from mappers.references import load_callable

_counter = itertools.count()

USER_MAPPERS = """
from pydantic import BaseModel


class Item(BaseModel):
    id: int


def event_only(event):
    return event.upsert("item", event.row["id"], Item(id=event.row["id"]))


def with_context(event, ctx):
    return [event.upsert("item", ctx.integration, Item(id=event.row["id"]))]


def nothing(event, ctx):
    return None


def several(event, ctx):
    yield event.upsert("item", 1, Item(id=1))
    yield event.delete("item", 2)


def broken(event, ctx):
    return event.row["no_such_column"]


def broken_generator(event, ctx):
    yield event.delete("item", 1)
    raise ValueError("bad row")


def waits(event, ctx):
    return ctx.external_id("crm", "contact", event.row["id"])


def returns_text(event, ctx):
    return "item-1"


def yields_garbage(event, ctx):
    return [event.delete("item", 1), {"id": 1}]


def flexible(event, ctx=None, *rest):
    return event.delete("item", "flex")


def needs_flag(event, ctx, *, flag):
    return None


def too_many(event, ctx, extra):
    return None


def no_args():
    return None


NOT_CALLABLE = 42
"""


@dataclass(frozen=True)
class Links:
    integration: str = "crm"

    def external_id(self, integration: str, entity: str, key: object) -> str:
        raise RelationPending(integration=integration, entity=entity, key=str(key))


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real importable module of user mappers, under a name unique to the test."""
    name = f"user_mappers_{next(_counter)}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MAPPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def event(offset: int = 3) -> TableEvent:
    return TableEvent(
        origin=Origin("app.public.items", 2, offset),
        op="c",
        schema="public",
        table="items",
        key={"id": 5},
        before=None,
        after={"id": 5, "name": "x"},
        unavailable=frozenset(),
        commit_lsn=1000,
        seq=1,
        ts_us=0,
    )


# --------------------------------------------------------------------------- load_callable


def test_a_reference_loads_the_named_object() -> None:
    assert load_callable("mappers.examples:Contact") is Contact
    assert load_callable("mappers.examples:Contact.model_validate") == Contact.model_validate


@pytest.mark.parametrize(
    "ref", ["mappers.examples", "mappers.examples:", ":Contact", "a b:c", "x:1y"]
)
def test_a_malformed_reference_is_a_config_error(ref: str) -> None:
    with pytest.raises(ConfigError, match="is not module:attribute"):
        load_callable(ref)


def test_a_missing_module_is_a_config_error_naming_the_reference() -> None:
    with pytest.raises(ConfigError, match=r"nosuchpkg\.mappers:f: no module named 'nosuchpkg'"):
        load_callable("nosuchpkg.mappers:f")


def test_a_missing_attribute_is_a_config_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as caught:
        load_callable("mappers.examples:customer_to_contacts")
    message = str(caught.value)
    assert message.startswith("mappers.examples:customer_to_contacts:")
    assert "has no attribute 'customer_to_contacts'" in message
    assert "did you mean 'customer_to_contact'" in message


def test_a_module_failing_to_import_is_a_config_error_keeping_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"broken_mappers_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('database password missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=f"{name}:f: importing '{name}' failed: RuntimeError"):
        load_callable(f"{name}:f")


def test_a_module_importing_a_missing_dependency_names_that_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"needy_mappers_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="no_such_dependency_xyz") as caught:
        load_callable(f"{name}:f")
    assert f"importing '{name}' failed" in str(caught.value)


# --------------------------------------------------------------------------- load_mapper


def test_a_mapper_taking_only_the_event_is_called_with_the_event(user_module: str) -> None:
    mapper = load_mapper(f"{user_module}:event_only", integration="crm")
    [op] = mapper(event(), Links())
    assert isinstance(op, EntityUpsert)
    assert op.key == "5"


def test_a_mapper_taking_the_context_receives_it(user_module: str) -> None:
    mapper = load_mapper(f"{user_module}:with_context", integration="crm")
    [op] = mapper(event(), Links(integration="support"))
    assert op.key == "support"


def test_a_mapper_returning_none_maps_to_nothing(user_module: str) -> None:
    assert list(load_mapper(f"{user_module}:nothing", integration="crm")(event(), Links())) == []


def test_a_generator_mapper_gives_all_its_operations(user_module: str) -> None:
    ops = list(load_mapper(f"{user_module}:several", integration="crm")(event(), Links()))
    assert [type(op) for op in ops] == [EntityUpsert, EntityDelete]
    assert [op.key for op in ops] == ["1", "2"]


def test_a_mapper_with_optional_and_variadic_parameters_is_accepted(user_module: str) -> None:
    [op] = load_mapper(f"{user_module}:flexible", integration="crm")(event(), Links())
    assert op.key == "flex"


def test_a_failing_mapper_raises_a_mapping_error_naming_it_and_the_origin(user_module: str) -> None:
    mapper = load_mapper(f"{user_module}:broken", integration="crm")
    with pytest.raises(MappingError) as caught:
        mapper(event(offset=17), Links())
    message = str(caught.value)
    assert f"{user_module}:broken" in message
    assert "app.public.items[2]@17" in message
    assert "KeyError" in message
    assert isinstance(caught.value.__cause__, KeyError)


def test_an_error_raised_midway_through_a_generator_is_a_mapping_error(user_module: str) -> None:
    mapper = load_mapper(f"{user_module}:broken_generator", integration="crm")
    with pytest.raises(MappingError, match="ValueError: bad row") as caught:
        mapper(event(), Links())
    assert isinstance(caught.value.__cause__, ValueError)


def test_a_pending_relation_passes_through_unchanged(user_module: str) -> None:
    mapper = load_mapper(f"{user_module}:waits", integration="analytics")
    with pytest.raises(RelationPending) as caught:
        mapper(event(), Links())
    assert (caught.value.integration, caught.value.entity, caught.value.key) == (
        "crm",
        "contact",
        "5",
    )


@pytest.mark.parametrize(
    ("function", "complaint"),
    [("returns_text", "returned a str"), ("yields_garbage", "yielded a dict")],
)
def test_a_mapper_returning_something_else_than_operations_is_a_mapping_error(
    user_module: str, function: str, complaint: str
) -> None:
    mapper = load_mapper(f"{user_module}:{function}", integration="crm")
    with pytest.raises(MappingError, match=complaint):
        mapper(event(), Links())


@pytest.mark.parametrize(
    ("function", "complaint"),
    [
        ("NOT_CALLABLE", "int object is not callable"),
        ("needs_flag", "cannot require keyword argument 'flag'"),
        ("too_many", "takes \\(event, ctx\\) or \\(event\\)"),
        ("no_args", "takes \\(event, ctx\\) or \\(event\\)"),
    ],
)
def test_an_unusable_mapper_is_a_config_error_at_load(
    user_module: str, function: str, complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint) as caught:
        load_mapper(f"{user_module}:{function}", integration="crm")
    assert f"{user_module}:{function}" in str(caught.value)


def test_a_declarative_mapping_loads_as_a_mapper() -> None:
    spec = DeclarativeMapping(entity="item", key="id", fields={"label": "upper(name)"})
    mapper = load_mapper(spec, integration="crm")
    [op] = mapper(event(), Links())
    assert isinstance(op, EntityUpsert)
    assert op.fields() == {"label": "X"}


def test_a_declarative_mapping_error_names_the_integration_key() -> None:
    spec = DeclarativeMapping(entity="item", key="id", fields={"label": "name.upper()"})
    with pytest.raises(ConfigError, match=r"integrations\.support\.mapper\.fields\.label"):
        load_mapper(spec, integration="support")
