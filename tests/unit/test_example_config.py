"""deploy/cdcsync.example.yaml lists every configuration key, each with its default.

The keys are read from the config model itself, so a key added to the model without
being added to the example fails here. Where the example shows a value other than the
key's default (to illustrate), the line's comment names the default.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cdc.config import Config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cdcsync.example.yaml"
# Maps whose keys are the user's own (librdkafka properties, headers, mapped fields).
FREE_MAPS = {"properties", "headers", "fields", "constants"}
SECRET_SUFFIXES = ("_env", "_file")

Leaf = tuple[str, ...]


def _models(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        elif arg is not annotation and (
            typing.get_origin(arg) in (typing.Union, types.UnionType)
            or typing.get_origin(arg) is typing.Annotated
        ):
            found.extend(_models(arg))
    return found


def model_keys(model: type[BaseModel], path: Leaf = ()) -> dict[Leaf, Any]:
    """Every key the model accepts, ``integrations.*`` for the map of integrations, with
    its default (``PydanticUndefined`` when required or built by a factory)."""
    keys: dict[Leaf, Any] = {}
    for name, field in model.model_fields.items():
        key = (*path, field.alias or name)
        annotation = field.annotation
        if typing.get_origin(annotation) is dict and name not in FREE_MAPS:
            keys[key] = PydanticUndefined
            value_type = typing.get_args(annotation)[1]
            for sub in _models(value_type):
                keys.update(model_keys(sub, (*key, "*")))
            continue
        keys[key] = field.default
        for sub in _models(annotation):
            keys.update(model_keys(sub, key))
    return keys


def example_lines() -> dict[Leaf, list[tuple[Any, str]]]:
    """Every key of the example (integration names folded to ``*``; ``x_env`` to ``x``),
    with its value and the comment on its line."""
    text = EXAMPLE.read_text()
    lines = text.splitlines()
    found: dict[Leaf, list[tuple[Any, str]]] = {}

    def walk(node: yaml.Node, path: Leaf) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            key = key_node.value
            if path[-1:] == ("integrations",):
                walk(value_node, (*path, "*"))
                continue
            plain = key
            for suffix in SECRET_SUFFIXES:
                plain = plain.removesuffix(suffix)
            here = (*path, plain)
            line = lines[key_node.start_mark.line]
            comment = line.partition(" #")[2]
            value = yaml.safe_load(yaml.serialize(value_node))
            found.setdefault(here, []).append((value if plain == key else "<secret>", comment))
            if key not in FREE_MAPS:
                walk(value_node, here)

    walk(yaml.compose(text), ())
    return found


def test_every_key_of_the_config_model_is_in_the_example() -> None:
    missing = sorted(".".join(k) for k in model_keys(Config).keys() - example_lines().keys())
    assert missing == []


def test_every_key_of_the_example_exists_in_the_config_model() -> None:
    unknown = sorted(".".join(k) for k in example_lines().keys() - model_keys(Config).keys())
    assert unknown == []


def test_every_example_value_is_the_default_or_its_comment_names_the_default() -> None:
    wrong = []
    keys = model_keys(Config)
    for key, occurrences in example_lines().items():
        default = keys.get(key, PydanticUndefined)
        if default is PydanticUndefined or isinstance(default, BaseModel):
            continue
        for value, comment in occurrences:
            if value == "<secret>" or isinstance(value, dict):
                continue  # a secret's source, or a whole section: illustrative
            if value != default and "default" not in comment:
                wrong.append(f"{'.'.join(key)}: {value!r} (default {default!r})")
    assert wrong == []
