"""Where configuration values come from, and how problems are reported.

* ``read_yaml`` parses the file and records the line of every key; invalid YAML and
  duplicate keys raise ``ConfigError`` naming the file and line (never quoting the line,
  which could hold a secret).
* ``apply_env`` applies ``CDCSYNC_SECTION__KEY`` variables (the rules are in
  ``cdc.config``'s docstring) and records which variable set which key.
* ``describe_errors`` turns pydantic's errors into one line per problem:
  ``dotted.key: reason (file, line N)`` or ``(from CDCSYNC_...)``.

Invariants: nothing here formats an input value into a message; secret values from the
environment are taken verbatim and never parsed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cdc.core.errors import ConfigError
from cdc.core.secrets import is_secret_name, split_secret_suffix

ENV_PREFIX = "CDCSYNC_"
SINK_TYPES = ("http", "postgres", "kafka")
SECRET_FIELDS = frozenset({"dsn", "password", "token", "secret"})
_FREE_MAPS = {"properties": ".", "headers": "-"}

Loc = tuple[str | int, ...]


@dataclass(slots=True)
class LoadContext:
    """Passed to validation: where ``*_env`` / ``*_file`` secrets are read, typo hints found."""

    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    base_dir: Path = field(default_factory=Path.cwd)
    suggestions: dict[str, set[str]] = field(default_factory=dict)


@dataclass(slots=True)
class Origins:
    """Where each value came from: a line of the file or an environment variable."""

    file: str | None = None
    lines: dict[Loc, int] = field(default_factory=dict)
    env_vars: dict[Loc, str] = field(default_factory=dict)

    def describe(self, loc: Loc) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.env_vars:
                return f" (from {self.env_vars[loc[:n]]})"
            if loc[:n] in self.lines:
                return f" ({self.file}, line {self.lines[loc[:n]]})"
        below = sorted(var for key, var in self.env_vars.items() if key[: len(loc)] == loc)
        return f" (from {', '.join(below)})" if below else ""

    def overridden(self, loc: Loc, var: str) -> None:
        for known in [k for k in (*self.lines, *self.env_vars) if k[: len(loc)] == loc]:
            self.lines.pop(known, None)
            self.env_vars.pop(known, None)
        self.env_vars[loc] = var


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; duplicate keys are detected on the node tree."""


def read_yaml(path: Path, lines: dict[Loc, int]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read: {reason}") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _walk_nodes(node, (), lines, path)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        # Only the position and the problem: the snippet of the line could hold a secret.
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: invalid YAML") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (source:, kafka:, ...)")
    return data


def _walk_nodes(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: Path) -> None:
    """Record the line of every key and item; reject duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key == "<<":
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{path}, line {line}: duplicate key {dotted((*loc, key))}")
            seen.add(key)
            lines[(*loc, key)] = line
            _walk_nodes(value_node, (*loc, key), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _walk_nodes(item, (*loc, index), lines, path)


def apply_env(data: dict[str, Any], env: Mapping[str, str], origins: Origins) -> list[str]:
    """Apply ``CDCSYNC_A__B`` variables to ``data``, broadest first; return their names."""
    overrides = []
    for var in env:
        if var.startswith(ENV_PREFIX) and "__" in var[len(ENV_PREFIX) :]:
            parts = var[len(ENV_PREFIX) :].split("__")
            if not all(parts):
                raise ConfigError(f"{var}: empty key between double underscores")
            overrides.append((len(parts), var, _env_path(parts)))
    for _, var, path in sorted(overrides):
        raw = env[var]
        value = raw if _is_secret_path(path) else _parse_scalar(raw)
        loc = _set_path(data, path, value)
        origins.overridden(loc, var)
    return [var for _, var, _ in sorted(overrides)]


def _env_path(parts: list[str]) -> list[str]:
    path: list[str] = []
    for raw in parts:
        verbatim = any(c.islower() or c in ".-" for c in raw)
        parent = path[-1] if path else None
        if verbatim:
            path.append(raw)
        elif parent in _FREE_MAPS:
            base, suffix = split_secret_suffix(raw.lower())
            path.append(base.replace("_", _FREE_MAPS[parent]) + suffix)
        else:
            path.append(raw.lower())
    return path


def _is_secret_path(path: list[str]) -> bool:
    base, suffix = split_secret_suffix(path[-1])
    if suffix or base in SECRET_FIELDS:
        return True
    return len(path) > 1 and path[-2] in _FREE_MAPS and is_secret_name(base)


def _parse_scalar(raw: str) -> object:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if value is None and raw.strip() not in {"", "~", "null", "Null", "NULL"}:
        return raw  # "#..." is a comment to YAML, but a value here
    return raw if isinstance(value, date) else value


def _set_path(data: dict[str, Any], path: list[str], value: object) -> Loc:
    node: Any = data
    loc: list[str | int] = []
    for depth, seg in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list) and seg.isdigit() and int(seg) <= len(node):
            index = int(seg)
            loc.append(index)
            if index == len(node):
                node.append({})
            if last:
                node[index] = value
            elif not isinstance(node[index], dict | list):
                node[index] = {}
            node = node[index]
            continue
        loc.append(seg)
        if last:
            base, _ = split_secret_suffix(seg)
            for sibling in (base, f"{base}_env", f"{base}_file"):
                if sibling != seg:
                    node.pop(sibling, None)
            node[seg] = value
        else:
            if not isinstance(node.get(seg), dict | list):
                node[seg] = {}
            node = node[seg]
    return tuple(loc)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]+")
_UNION_TAGS = {"sink": set(SINK_TYPES), "mapper": {"ref", "mapping"}}


def dotted(loc: Loc) -> str:
    """``source.tables[1]``; keys that are not plain words in brackets: ``properties["a.b"]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out or "(top level)"


def _clean_loc(loc: tuple[str | int, ...]) -> Loc:
    out: list[str | int] = []
    for part in loc:
        if out and isinstance(out[-1], str) and part in _UNION_TAGS.get(out[-1], ()):
            continue  # the tag pydantic adds for the chosen union member
        if part == "[key]":
            continue
        out.append(part)
    return tuple(out)


def describe_errors(
    exc: ValidationError, suggestions: dict[str, set[str]], origins: Origins
) -> list[str]:
    """One line per problem: ``dotted.key: reason (where the value came from)``."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False, include_context=True):
        loc = _clean_loc(err["loc"])
        kind, ctx = err["type"], dict(err.get("ctx") or {})
        message = err["msg"]
        if kind == "secret_source" and loc:
            loc = (*loc[:-1], ctx["key"])
        if kind == "missing":
            message = "field required"
        elif kind == "extra_forbidden":
            message = "unknown key"
            hints = suggestions.get(str(loc[-1]), set()) if loc else set()
            notes = sorted(h[1:] for h in hints if h.startswith("!"))
            guesses = sorted(h for h in hints if not h.startswith("!"))
            if notes:
                message += f" ({notes[0]}; only secrets take _env / _file)"
            elif len(guesses) == 1:
                message += f" (did you mean {guesses[0]!r}?)"
        elif kind in {"model_type", "model_attributes_type", "dict_type"}:
            message = "must be a mapping"
        elif kind == "literal_error":
            message = f"must be {ctx['expected']}"
        elif kind == "union_tag_invalid":  # only sinks are told apart by a tag
            loc, message = (*loc, "type"), f"must be one of {', '.join(SINK_TYPES)}"
        elif kind == "union_tag_not_found":
            loc, message = (*loc, "type"), f"field required (one of {', '.join(SINK_TYPES)})"
        elif kind == "value_error" and "[key]" in err["loc"]:
            message = "name " + message.removeprefix("Value error, ")
        else:
            message = message.removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
            field_prefix = re.match(r"(\w+): ", message)
            if field_prefix and kind == "value_error":  # a model check naming its field
                loc, message = (*loc, field_prefix.group(1)), message[field_prefix.end() :]
        problems.append(f"{dotted(loc)}: {message}{origins.describe(loc)}")
    return problems
