"""The cdcsync configuration: one YAML file, typed and validated, with environment overrides.

``load_config(path, env=...)`` builds a frozen ``Config`` in four steps:

1. The YAML file (optional) is read; invalid YAML and duplicate keys are errors naming the
   file and line; the line of every key is kept for later messages.
2. Environment variables ``CDCSYNC_<SECTION>__<KEY>[__<KEY>...]`` override the file (below).
3. Secret keys given as ``<key>_env: VAR`` or ``<key>_file: PATH`` are resolved into
   ``SecretStr``; a ``_file`` value loses its trailing newlines (Docker/Kubernetes
   secrets) and a relative path is taken from the config file's directory.
4. pydantic validates everything at once. All problems are reported in one ``ConfigError``,
   one per line, as ``dotted.key: reason (file, line N | from VARIABLE)``. Unknown keys are
   errors (typos are caught) with a "did you mean" hint.

Environment overrides. Only variables with a double underscore after ``CDCSYNC_`` count
(``CDCSYNC_SOURCE__SLOT``); each ``__`` goes one level down; a segment in upper case is
lower-cased (``CDCSYNC_INTEGRATIONS__CRM__PAUSED`` -> ``integrations.crm.paused``) and a
segment holding a lower-case letter, a dot or a hyphen is used verbatim. Under a
``properties`` map an upper-case segment also turns ``_`` into ``.``
(``CDCSYNC_KAFKA__PROPERTIES__LINGER_MS`` -> ``linger.ms``; ``..._SASL_PASSWORD_ENV`` ->
``sasl.password_env``), under ``headers`` into ``-``; write the key verbatim when that rule
does not fit (``CDCSYNC_KAFKA__PROPERTIES__linger.ms``). A numeric segment indexes a list.
Values are parsed as YAML (``true``, ``5``, ``[a, b]``, ``{type: http, ...}``), except
secrets and ``*_env``/``*_file`` values, which are taken verbatim. An override of ``dsn``
replaces a ``dsn_env``/``dsn_file`` from the file, and the other way round. Overrides win
over the file; a configuration may come from the environment alone.

Secrets: ``source.dsn``, ``state.dsn``, sink ``dsn`` and ``secret``, ``registry.password``,
``admin.token``, and every entry of ``properties``/``headers`` whose name designates a
secret (``cdc.core.secrets.is_secret_name``: ``sasl.password``, ``Authorization``...), which may
also be given as ``<name>_env``/``<name>_file``. URLs are shown with credentials redacted.

Layout: the models and the entry points live here; field types (secrets, redacted URLs,
checked names) in ``cdc.config.fields``; reading the file, applying the environment and
wording errors in ``cdc.config.sources``; redaction and secret references in ``cdc.core.secrets``.

Invariants: config objects are frozen; no secret appears in ``repr``/``str`` of any of them,
in ``model_dump_json()`` (unless ``context={"reveal_secrets": True}``), in a ``ConfigError``
(nor its traceback) or in a log record.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    model_validator,
)

from cdc.config.fields import (
    CONTEXT_KEY,
    BootstrapServers,
    EntityName,
    Identifier,
    ListenAddress,
    LogLevel,
    MapperRef,
    Name,
    RedactedUrl,
    RegistryUrl,
    Scalar,
    SecretishMap,
    SecretValue,
    Section,
    SlotName,
    TableName,
    TargetTableName,
    TopicName,
    UrlTemplate,
)
from cdc.config.inbound import InboundConfig
from cdc.config.sources import LoadContext, Origins, apply_env, describe_errors, read_yaml
from cdc.config.tracing import TracingConfig
from cdc.core.errors import ConfigError

__all__ = [
    "AdminConfig",
    "CircuitConfig",
    "Config",
    "DeclarativeMapping",
    "HttpSinkConfig",
    "IntegrationConfig",
    "KafkaConfig",
    "KafkaSinkConfig",
    "LoggingConfig",
    "PostgresSinkConfig",
    "ProcessConfig",
    "ReconcileConfig",
    "RegistryConfig",
    "RetryConfig",
    "SinkConfig",
    "SourceConfig",
    "StateConfig",
    "TracingConfig",
    "load_config",
    "parse_config",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9_\-]{1,100}")


# --------------------------------------------------------------------------- models


class SourceConfig(Section):
    """The PostgreSQL source: what to capture and how.

    ``on_incompatible_schema``: ``stop`` halts capture with an error naming the columns when
    the registry rejects a changed table schema; ``continue`` sets that subject's
    compatibility to NONE, registers the new schema and goes on (consumers must cope).

    ``snapshot``: ``initial`` reads every table (``op=r`` events) when capture creates the
    slot; ``when_needed`` also reads a table that was never snapshotted; ``never`` reads
    only on ``cdcsync snapshot``. Reads go in primary-key chunks of ``snapshot_chunk_size``.

    The ``*_mode`` keys, ``provide_transaction_metadata``, ``tombstones_on_delete``,
    ``skipped_operations`` and ``unavailable_value_placeholder`` are Debezium's settings of
    the same names (dots as underscores), with Debezium's defaults. ``additive_fields``
    adds ``source.commit_lsn`` and ``unavailable_columns`` to the envelope (false: exactly
    Debezium's). ``temporal_logical_types`` opts in to Avro logical types on temporal
    columns for Python-native readers (Kafka Connect's AvroConverter rejects them).
    The older names ``decimal_handling`` and ``unavailable_value`` are still accepted.
    """

    secret_fields = ("dsn",)

    dsn: SecretValue
    slot: SlotName = "cdcsync"
    publication: Identifier = "cdcsync"
    tables: list[TableName] = Field(min_length=1)
    create_slot: bool = True
    create_publication: bool = True
    snapshot: Literal["initial", "never", "when_needed"] = "initial"
    snapshot_chunk_size: int = Field(default=20_000, ge=1)
    time_precision_mode: Literal["adaptive", "adaptive_time_microseconds", "connect"] = "adaptive"
    decimal_handling_mode: Literal["precise", "double", "string"] = "precise"
    hstore_handling_mode: Literal["json", "map"] = "json"
    interval_handling_mode: Literal["numeric", "string"] = "numeric"
    binary_handling_mode: Literal["bytes", "base64", "base64-url-safe", "hex"] = "bytes"
    provide_transaction_metadata: bool = False
    tombstones_on_delete: bool = True
    skipped_operations: list[Literal["c", "u", "d", "t", "none"]] = Field(
        default_factory=lambda: ["t"]  # type: ignore[arg-type]
    )
    additive_fields: bool = True
    temporal_logical_types: bool = False
    on_incompatible_schema: Literal["stop", "continue"] = "stop"
    status_interval_s: float = Field(default=10.0, gt=0, le=60)
    heartbeat_interval_s: float = Field(default=0.0, ge=0)
    slot_lag_warn_bytes: int | None = Field(default=None, gt=0)
    slot_lag_stop_bytes: int | None = Field(default=None, gt=0)
    max_batch_events: int = Field(default=5000, ge=1)
    max_inflight_bytes: int = Field(default=16 * MiB, ge=1024)
    unavailable_value_placeholder: str = "__debezium_unavailable_value"

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = dict(data)
            for old, new in (
                ("decimal_handling", "decimal_handling_mode"),
                ("unavailable_value", "unavailable_value_placeholder"),
            ):
                if old in data:
                    if new in data:
                        raise ValueError(f"{old}: the older name of {new}; set only one")
                    data[new] = data.pop(old)
        return data

    @property
    def skipped(self) -> frozenset[str]:
        """The operation codes not published (``none`` skips nothing)."""
        return frozenset(op for op in self.skipped_operations if op != "none")

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        if len(set(self.tables)) != len(self.tables):
            raise ValueError("tables: a table is listed twice")
        warn, stop = self.slot_lag_warn_bytes, self.slot_lag_stop_bytes
        if warn is not None and stop is not None and warn > stop:
            raise ValueError("slot_lag_warn_bytes: must not exceed slot_lag_stop_bytes")
        return self


class KafkaConfig(Section):
    """The Kafka cluster events are published to.

    ``properties`` are passed to librdkafka as they are (``client_properties()``); the keys
    this section sets itself may not be repeated there. ``delivery_timeout_ms`` (default
    120000, as Kafka's Java producer) bounds how long a message may wait for an
    acknowledgement before capture reports the broker unavailable. With ``exactly_once``
    the default ``transactional_id`` is ``cdcsync-{topic_prefix}-{source.slot}``.
    """

    _OWN_PROPERTIES: ClassVar[dict[str, str]] = {
        "bootstrap.servers": "bootstrap_servers",
        "transactional.id": "transactional_id",
        "delivery.timeout.ms": "delivery_timeout_ms",
    }

    bootstrap_servers: BootstrapServers
    topic_prefix: TopicName
    properties: SecretishMap = Field(default_factory=dict)
    exactly_once: bool = False
    transactional_id: str | None = None
    # With exactly_once: a Kafka transaction is committed (between PostgreSQL transactions)
    # once it holds this many events or is this old, or when capture has caught up.
    transaction_max_events: int = Field(default=20_000, ge=1)
    transaction_max_ms: float = Field(default=100.0, gt=0)
    topic_partitions: int = Field(default=1, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)
    delivery_timeout_ms: int = Field(default=120_000, gt=0)

    @model_validator(mode="after")
    def _check(self) -> KafkaConfig:
        for prop, key in self._OWN_PROPERTIES.items():
            if prop in self.properties:
                raise ValueError(f"properties: set kafka.{key} instead of {prop!r}")
        return self

    def client_properties(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings with secrets revealed: never log the result."""
        props: dict[str, str | int | float | bool] = {
            k: v.get_secret_value() if isinstance(v, SecretStr) else v
            for k, v in self.properties.items()
        }
        props["bootstrap.servers"] = self.bootstrap_servers
        return props


class RegistryConfig(Section):
    """The schema registry: an http(s):// URL, or ``sqlite:///PATH`` to run one in-process."""

    secret_fields = ("password",)

    url: RegistryUrl
    username: str | None = None
    password: SecretValue | None = None
    timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> RegistryConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together: give both or neither")
        if self.is_embedded and self.username is not None:
            raise ValueError("username: an embedded registry takes no credentials")
        return self

    @property
    def is_embedded(self) -> bool:
        return self.url.startswith("sqlite:///")

    def auth(self) -> tuple[str, str] | None:
        """Basic-auth credentials with the password revealed, or None: never log the result."""
        if not self.username or not self.password:
            return None
        return (self.username, self.password.get_secret_value())

    @property
    def embedded_storage(self) -> str | None:
        """The storage URL of the in-process registry, or None for a remote one."""
        return str(self.url) if self.is_embedded else None


class HttpSinkConfig(Section):
    """An HTTP API: ``upsert_method`` / ``delete_method`` on ``url`` ({key}, {entity} filled in).

    ``secret`` signs each request body (HMAC-SHA256); ``health_url`` is probed for readiness.
    ``external_id_field`` names the field of the upsert response holding the target's own id
    for the entity; it is recorded in the identity map so other mappers can refer to it.
    """

    secret_fields = ("secret",)

    type: Literal["http"]
    url: UrlTemplate
    upsert_method: Literal["PUT", "POST", "PATCH"] = "PUT"
    delete_method: Literal["DELETE", "PUT", "POST", "PATCH"] = "DELETE"
    secret: SecretValue | None = None
    headers: SecretishMap = Field(default_factory=dict)
    timeout_s: float = Field(default=10.0, gt=0)
    health_url: RedactedUrl | None = None
    external_id_field: str | None = None


class PostgresSinkConfig(Section):
    """A PostgreSQL table, written with version-guarded upserts."""

    secret_fields = ("dsn",)

    type: Literal["postgres"]
    dsn: SecretValue
    table: TargetTableName
    create_table: bool = False


class KafkaSinkConfig(Section):
    """A compacted entity topic; ``bootstrap_servers`` defaults to the main cluster's."""

    type: Literal["kafka"]
    topic: TopicName
    bootstrap_servers: BootstrapServers | None = None
    properties: SecretishMap = Field(default_factory=dict)


SinkConfig = Annotated[
    HttpSinkConfig | PostgresSinkConfig | KafkaSinkConfig, Field(discriminator="type")
]


class RetryConfig(Section):
    """Exponential backoff: ``initial_backoff_s * 2**n`` capped, +/- ``jitter`` (a fraction)."""

    attempts: int = Field(default=5, ge=1)
    initial_backoff_s: float = Field(default=0.2, gt=0)
    max_backoff_s: float = Field(default=30.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> RetryConfig:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("max_backoff_s: must not be below initial_backoff_s")
        return self


class CircuitConfig(Section):
    """Open the circuit after ``failure_threshold`` failures in a row; probe after the timeout."""

    failure_threshold: int = Field(default=5, ge=1)
    reset_timeout_s: float = Field(default=30.0, gt=0)


class DeclarativeMapping(Section):
    """A mapper written in the config: ``entity`` keyed by ``key`` (a column or a template).

    ``fields`` maps each target field to a source column or expression; ``constants`` are
    fixed values; ``where`` filters rows; ``version_column`` is accepted and ignored (versions
    are the source's commit order, see ``mappers.lww``);
    ``model`` (``module:Class``, a pydantic model) validates the entity, else a model with
    the mapped fields is derived.
    """

    entity: EntityName
    key: str = Field(min_length=1)
    fields: dict[str, str] = Field(min_length=1)
    constants: dict[str, Scalar] = Field(default_factory=dict)
    where: str | None = None
    version_column: str | None = None
    model: MapperRef | None = None

    @model_validator(mode="after")
    def _check(self) -> DeclarativeMapping:
        both = sorted(set(self.fields) & set(self.constants))
        if both:
            raise ValueError(f"constants: {both[0]!r} is also in fields")
        return self


def _mapper_kind(value: object) -> str | None:
    if isinstance(value, str):
        return "ref"
    if isinstance(value, Mapping | DeclarativeMapping):
        return "mapping"
    return None


MapperSpec = Annotated[
    Annotated[MapperRef, Tag("ref")] | Annotated[DeclarativeMapping, Tag("mapping")],
    Discriminator(
        _mapper_kind,
        custom_error_type="mapper_type",
        custom_error_message="must be module:function or a declarative mapping",
    ),
]


_EVERY = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ReconcileConfig(Section):
    """``cdcsync reconcile`` for one integration, and its schedule inside ``run``/``sync``.

    ``every`` (``30m``, ``6h``, ``1d``) or ``cron`` (a five-field cron expression, UTC)
    schedules a run; neither: only on demand. ``rows_per_s`` bounds how fast source rows are
    read; ``settle_s`` is how long a key that differs is given to catch up (changes still
    on their way) before it is reported; ``max_repair_keys`` is the most keys of one table
    repaired as a keyed snapshot (more: the whole table is snapshotted again).
    """

    every: str | None = None
    cron: str | None = None
    rows_per_s: float = Field(default=5000.0, gt=0)
    settle_s: float = Field(default=2.0, ge=0)
    max_repair_keys: int = Field(default=10_000, ge=1)
    repair: bool = False

    @model_validator(mode="after")
    def _check_schedule(self) -> ReconcileConfig:
        if self.every is not None and self.cron is not None:
            raise ValueError("give either every or cron, not both")
        if self.every is not None and _EVERY.fullmatch(self.every.strip()) is None:
            raise ValueError(f"every: {self.every!r} is not a duration such as 30m, 6h or 1d")
        if self.cron is not None:
            from croniter import croniter  # noqa: PLC0415

            if not croniter.is_valid(self.cron):
                raise ValueError(f"cron: {self.cron!r} is not a cron expression")
        return self

    @property
    def every_s(self) -> float | None:
        """``every`` in seconds (None when not set)."""
        if self.every is None:
            return None
        match = _EVERY.fullmatch(self.every.strip())
        assert match is not None
        return float(match.group(1)) * _UNIT_S[match.group(2)]


class IntegrationConfig(Section):
    """One external system: which topics feed it, how events map, where entities go.

    After loading through ``Config``, ``dead_letter_topic`` defaults to
    ``{topic_prefix}.dlq.{name}`` and ``group_id`` to ``cdcsync.{name}``. ``paused`` starts
    the integration paused (resume it at runtime); ``enabled: false`` leaves it out.
    """

    topics: list[TopicName] = Field(min_length=1)
    mapper: MapperSpec
    sink: SinkConfig
    retry: RetryConfig = Field(default_factory=RetryConfig)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)
    dead_letter_topic: TopicName | None = None
    group_id: str | None = None
    paused: bool = False
    enabled: bool = True
    # Seconds between the sink's health probes (0: no periodic probe).
    health_check_interval_s: float = Field(default=15.0, ge=0)
    # External systems writing back (``cdc.config.inbound``); None: outbound only.
    inbound: InboundConfig | None = None
    # ``cdcsync reconcile``: schedule and limits; ``verify_url`` ({key}, {entity}) reads an
    # entity back from an HTTP target, whose answer (its ``verify_fields_at`` member, if
    # set) is compared field by field.
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)
    verify_url: UrlTemplate | None = None
    verify_fields_at: str | None = None


class StateConfig(Section):
    """Where sync keeps its state (identity map, versions); default: the source database."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )
    secret_fields = ("dsn",)

    dsn: SecretValue | None = None
    schema_: Identifier = Field(default="cdcsync", alias="schema")


class AdminConfig(Section):
    """The admin HTTP API served by ``run``, ``capture`` and ``sync`` (health, readiness,
    metrics, status, pause/resume). With ``token`` set, every endpoint but /health and
    /ready asks for ``Authorization: Bearer TOKEN``. Port 0 picks a free port (logged)."""

    secret_fields = ("token",)

    enabled: bool = True
    listen: ListenAddress = "127.0.0.1:8080"
    token: SecretValue | None = None
    # Serve on a non-loopback address without a token (pause/resume open to the network).
    allow_unauthenticated_remote: bool = False
    # Seconds between the readiness probes of Kafka and the registry.
    probe_interval_s: float = Field(default=10.0, gt=0)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class LoggingConfig(Section):
    format: Literal["human", "json"] = "human"
    level: LogLevel = "INFO"


class ProcessConfig(Section):
    """How a long-running command stops: on SIGTERM/SIGINT it stops reading, drains what
    is in flight and confirms the final position, and gives up after
    ``shutdown_timeout_s`` (exit status 1)."""

    shutdown_timeout_s: float = Field(default=30.0, gt=0)


class Config(Section):
    """The whole configuration; see the module docstring for loading rules."""

    source: SourceConfig
    kafka: KafkaConfig
    registry: RegistryConfig
    integrations: dict[Name, IntegrationConfig] = Field(default_factory=dict)
    state: StateConfig = Field(default_factory=StateConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @model_validator(mode="before")
    @classmethod
    def _derive_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = {k: v for k, v in data.items() if v is not None}
        kafka, source = data.get("kafka"), data.get("source")
        prefix = kafka.get("topic_prefix") if isinstance(kafka, Mapping) else None
        slot = source.get("slot", "cdcsync") if isinstance(source, Mapping) else "cdcsync"
        if (
            isinstance(kafka, Mapping)
            and kafka.get("exactly_once") is True
            and kafka.get("transactional_id") is None
        ):
            data["kafka"] = {**kafka, "transactional_id": f"cdcsync-{prefix}-{slot}"}
        integrations = data.get("integrations")
        if isinstance(integrations, Mapping):
            filled: dict[Any, Any] = {}
            for name, given in integrations.items():
                spec = dict(given) if isinstance(given, Mapping) else given
                if isinstance(spec, dict) and isinstance(name, str) and _NAME.fullmatch(name):
                    if spec.get("dead_letter_topic") is None and isinstance(prefix, str):
                        spec["dead_letter_topic"] = f"{prefix}.dlq.{name}"
                    if spec.get("group_id") is None:
                        spec["group_id"] = f"cdcsync.{name}"
                filled[name] = spec
            data["integrations"] = filled
        return data

    def state_dsn(self) -> SecretStr:
        """The state store's DSN: ``state.dsn``, or the source's when not set."""
        return self.state.dsn if self.state.dsn is not None else self.source.dsn


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, *, env: Mapping[str, str] | None = None) -> Config:
    """Load, override from ``env`` (default ``os.environ``), resolve secrets and validate.

    Raises ``ConfigError`` listing every problem, one per line, without secret values.
    """
    env = os.environ if env is None else env
    origins = Origins()
    data: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        origins.file = str(path)
        data = read_yaml(path, origins.lines)
        base_dir = path.parent
    applied = apply_env(data, env, origins)
    if applied:
        log.debug("configuration overridden by %s", ", ".join(applied))
    try:
        config = _validate(data, LoadContext(env, base_dir), origins)
    except ConfigError as exc:
        if path is not None:
            raise
        raise ConfigError(
            "no configuration file given: pass --config FILE (deploy/cdcsync.example.yaml "
            "lists every key) or set the keys as CDCSYNC_SECTION__KEY environment variables; "
            f"without a file:\n{exc}"
        ) from None
    log.debug("configuration loaded from %s", origins.file or "the environment")
    return config


def parse_config(
    data: Mapping[str, Any], *, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    """Validate an already-parsed mapping (no environment overrides); ``*_env`` reads ``env``."""
    ctx = LoadContext(os.environ if env is None else env, base_dir or Path.cwd())
    return _validate(data, ctx, Origins())


def _validate(data: Mapping[str, Any], ctx: LoadContext, origins: Origins) -> Config:
    try:
        return Config.model_validate(data, context={CONTEXT_KEY: ctx})
    except ValidationError as exc:
        problems = describe_errors(exc, ctx.suggestions, origins)
    raise ConfigError("\n".join(problems))
