"""Field types of the configuration models: secrets, redacted URLs, checked names.

``Section`` is the base of every configuration model: frozen, unknown keys rejected (with a
"did you mean" hint collected for the error message), and the secret keys it lists in
``secret_fields`` accepted as ``<key>``, ``<key>_env`` or ``<key>_file``.

Invariants: a secret is held as ``SecretStr`` from the moment it is validated; it is shown
as ``**********`` by ``repr`` and in JSON dumps unless the dump's context holds
``reveal_secrets: True``. URLs that may carry credentials are ``RedactedStr``: their
``repr`` and JSON dump hide passwords and tokens. Validation messages never quote a secret.
"""

from __future__ import annotations

import difflib
import logging
import re
import string
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    SerializationInfo,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cdc.config.sources import LoadContext
from cdc.core.secrets import (
    SecretConflict,
    SecretRef,
    SecretUnavailable,
    fold_secret_keys,
    is_secret_name,
    redact_dsn,
    split_secret_suffix,
)

log = logging.getLogger(__name__)

CONTEXT_KEY = "cdcsync"


# --------------------------------------------------------------------------- secret fields


def _context(info: ValidationInfo) -> LoadContext:
    ctx = info.context.get(CONTEXT_KEY) if isinstance(info.context, dict) else None
    return ctx if isinstance(ctx, LoadContext) else LoadContext()


def _resolve_ref(value: object, info: ValidationInfo) -> object:
    """Resolve a ``SecretRef`` to its text; anything else passes through."""
    if isinstance(value, SecretConflict):
        keys = ", ".join(value.keys)
        raise PydanticCustomError("secret_conflict", "give only one of {keys}", {"keys": keys})
    if not isinstance(value, SecretRef):
        return value
    ctx = _context(info)
    try:
        text = value.read(ctx.env, base_dir=ctx.base_dir)
    except SecretUnavailable as exc:
        ctx_vars = {"key": exc.key, "message": str(exc)}
        raise PydanticCustomError("secret_source", "{message}", ctx_vars) from None
    log.debug("secret %s read from %s %s", value.key, value.kind, value.target)
    return text


def _reveal(info: SerializationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("reveal_secrets"))


def _dump_secret(value: SecretStr, info: SerializationInfo) -> object:
    if _reveal(info):
        return value.get_secret_value()
    return str(value) if info.mode_is_json() else value


class RedactedStr(str):
    """A string (a URL that may carry credentials) whose ``repr`` hides passwords and tokens."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_dsn(str(self)))


def _dump_redacted(value: str, info: SerializationInfo) -> object:
    if _reveal(info):
        return str(value)
    return redact_dsn(value) if info.mode_is_json() else value


def _flat_value(value: object, info: ValidationInfo) -> str | int | float | bool | SecretStr:
    value = _resolve_ref(value, info)
    if isinstance(value, str | int | float | bool | SecretStr):
        return value
    raise PydanticCustomError("flat_value", "must be a string, number or boolean")


def _fold_map_refs(value: object) -> object:
    """In a free-form map, turn ``name_env`` / ``name_file`` entries into references."""
    if not isinstance(value, Mapping):
        return value
    groups: dict[object, list[str]] = {}
    for key in value:
        base, _ = split_secret_suffix(key) if isinstance(key, str) else (key, "")
        groups.setdefault(base, []).append(key)
    folded: dict[object, object] = {}
    for base, keys in groups.items():
        if isinstance(base, str):
            entry = {k: value[k] for k in keys}
            fold_secret_keys(entry, base)
            folded[base] = entry[base]
        else:
            folded[base] = value[keys[0]]
    return folded


def _protect_entries(value: dict[str, Any]) -> dict[str, Any]:
    return {
        k: SecretStr(str(v)) if is_secret_name(k) and not isinstance(v, SecretStr) else v
        for k, v in value.items()
    }


def _dump_map(value: dict[str, Any], info: SerializationInfo) -> dict[str, Any]:
    return {k: _dump_secret(v, info) if isinstance(v, SecretStr) else v for k, v in value.items()}


# --------------------------------------------------------------------------- checked strings


def _matches(pattern: str, reason: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(reason.format(value=value))
        return value

    return AfterValidator(check)


_PLAIN_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_SOURCE_TABLE = re.compile(rf'("?)({_PLAIN_IDENTIFIER})\1\.("?)({_PLAIN_IDENTIFIER})\3')


def _check_source_table(value: str) -> str:
    """A table of ``source.tables``: ``schema.table`` as the catalog spells both
    (case-sensitive, so ``public.Orders`` is the table created as ``"Orders"``); SQL's
    double quotes around either part are accepted and dropped (``public."Orders"``)."""
    found = _SOURCE_TABLE.fullmatch(value)
    if found is not None:
        return f"{found.group(2)}.{found.group(4)}"
    if "." not in value:
        raise ValueError(
            f"{value!r} is not schema.table (the schema is required, e.g. public.orders)"
        )
    raise ValueError(
        f"{value!r} cannot be captured: schema and table names must be letters, digits and"
        " _, not starting with a digit, written as the catalog spells them (upper case"
        ' included: public.Orders or public."Orders"); names with spaces, quotes, dots, $ or'
        " other characters are not supported (they would not fit a Kafka topic name):"
        " rename the table"
    )


def _check_http_url(value: str) -> str:
    if not re.match(r"https?://[^/\s?#]+", value):
        raise ValueError(f"{redact_dsn(value)!r} is not an http:// or https:// URL")
    return value


def _check_url_template(value: str) -> str:
    _check_http_url(value)
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(f"is not a valid URL template: {exc}") from None
    unknown = names - {"key", "entity"}
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{sorted(unknown)[0]}}} (use {{key}} or {{entity}})"
        )
    return value


def _check_registry_url(value: str) -> str:
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return value
    if re.match(r"https?://[^/\s?#]+", value):
        return value
    raise ValueError(
        f"{redact_dsn(value)!r} is neither an http(s):// URL nor sqlite:///PATH (embedded registry)"
    )


def _check_listen(value: str) -> str:
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


def _upper_level(value: object) -> object:
    if isinstance(value, str):
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"{value!r} is not DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


SecretValue = Annotated[SecretStr, BeforeValidator(_resolve_ref), PlainSerializer(_dump_secret)]
RedactedUrl = Annotated[
    str,
    AfterValidator(_check_http_url),
    AfterValidator(RedactedStr),
    PlainSerializer(_dump_redacted),
]
FlatValue = Annotated[str | int | float | bool | SecretStr, PlainValidator(_flat_value)]
SecretishMap = Annotated[
    dict[str, FlatValue],
    BeforeValidator(_fold_map_refs),
    AfterValidator(_protect_entries),
    PlainSerializer(_dump_map),
]
Identifier = Annotated[
    str,
    _matches(
        r"[a-z_][a-z0-9_]{0,62}",
        "{value!r} is not a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63)",
    ),
]
SlotName = Annotated[
    str, _matches(r"[a-z0-9_]{1,63}", "{value!r} is not a slot name (1 to 63 of a-z, 0-9, _)")
]
TableName = Annotated[str, AfterValidator(_check_source_table)]
# A sink's target table: any PostgreSQL identifiers (quoted when used), split at the first dot.
TargetTableName = Annotated[
    str,
    _matches(
        r"[^.\x00]{1,63}\.[^\x00]{1,63}",
        "{value!r} is not schema.table (the schema is required, e.g. analytics.orders)",
    ),
]
TopicName = Annotated[
    str,
    _matches(r"[A-Za-z0-9._\-]{1,249}", "{value!r} is not a Kafka topic name (A-Z a-z 0-9 . _ -)"),
]
Name = Annotated[
    str, _matches(r"[A-Za-z0-9_\-]{1,100}", "{value!r} is not a valid name (A-Z a-z 0-9 _ -)")
]
BootstrapServers = Annotated[
    str,
    _matches(
        r"(?:[A-Za-z_]+://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._\-]+)(?::\d{1,5})?"
        r"(?:,(?:[A-Za-z_]+://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._\-]+)(?::\d{1,5})?)*",
        "{value!r} is not HOST:PORT[,HOST:PORT...]",
    ),
]
RegistryUrl = Annotated[
    str,
    AfterValidator(_check_registry_url),
    AfterValidator(RedactedStr),
    PlainSerializer(_dump_redacted),
]
UrlTemplate = Annotated[
    str,
    AfterValidator(_check_url_template),
    AfterValidator(RedactedStr),
    PlainSerializer(_dump_redacted),
]
ListenAddress = Annotated[str, AfterValidator(_check_listen)]
LogLevel = Annotated[str, BeforeValidator(_upper_level)]
EntityName = Annotated[
    str, _matches(r"[A-Za-z_][A-Za-z0-9_]*", "{value!r} is not an entity name (A-Z a-z 0-9 _)")
]
MapperRef = Annotated[
    str,
    _matches(
        r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*",
        "{value!r} is not module:function (e.g. myapp.mappers:customer_to_contact)",
    ),
]


def _scalar(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise PydanticCustomError("scalar", "must be a string, number, boolean or null")


Scalar = Annotated[str | int | float | bool | None, PlainValidator(_scalar)]


# --------------------------------------------------------------------------- base model


class Section(BaseModel):
    """Base of every config model: frozen, unknown keys rejected, secrets folded and resolved."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, coerce_numbers_to_str=True, hide_input_in_errors=True
    )
    secret_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for key in cls.secret_fields:
            fold_secret_keys(data, key)
        known = {f.alias or name for name, f in cls.model_fields.items()}
        ctx = _context(info)
        for key in data:
            if isinstance(key, str) and key not in known:
                base, suffix = split_secret_suffix(key)
                if suffix and base in known:
                    ctx.suggestions.setdefault(key, set()).add(f"!{base} is not a secret")
                for match in difflib.get_close_matches(key, known, n=1, cutoff=0.6):
                    ctx.suggestions.setdefault(key, set()).add(match)
        return data
