"""Avro serialisation in the Confluent wire format, with schemas from the registry.

The wire format: one magic byte ``0x00``, the schema id as a 4-byte big-endian
unsigned integer, then the Avro binary encoding of the datum (no container
header). ``frame``/``unframe`` own it; nothing else in the project builds or
parses those five bytes.

``AvroSerializer.prepare`` resolves (registers or looks up) a schema once per
(topic, key/value, schema) and returns a ``PreparedSchema``; ``serialize`` is
then synchronous, makes no request and reuses one buffer, because capture
encodes tens of thousands of records per second through it.
``AvroDeserializer`` fetches each writer schema once by id, parses it once, and
resolves it against an optional reader schema.

Invariants: ``unframe(frame(i, p)) == (i, p)``; a message shorter than five
bytes or with another magic byte raises ``WireFormatError`` (a
``SchemaError``); a record that does not fit its schema raises
``RecordEncodeError`` naming the subject; serialisers and deserialisers are
not thread-safe (one per thread; asyncio tasks are fine since the sync
methods never yield).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from cdc.core.errors import SchemaError
from schema_registry.client import LruCache, RegistryClient, SchemaId, Subject, canonical_schema

MAGIC_BYTE: Final = 0
_HEADER: Final = struct.Struct(">bI")
HEADER_SIZE: Final = _HEADER.size


class WireFormatError(SchemaError):
    """Bytes that are not a Confluent-framed message (too short or bad magic byte)."""


class RecordEncodeError(SchemaError):
    """A record does not fit the schema it is being written with."""


class UnknownSchemaIdError(SchemaError):
    """A message names a schema id whose schema has not been fetched yet."""


def frame(schema_id: int, payload: bytes) -> bytes:
    """``0x00`` + ``schema_id`` (4 bytes, big-endian) + ``payload``."""
    if not 0 <= schema_id <= 0xFFFFFFFF:
        raise WireFormatError(f"schema id out of range for the wire format: {schema_id}")
    return _HEADER.pack(MAGIC_BYTE, schema_id) + payload


def unframe(data: bytes | bytearray | memoryview) -> tuple[SchemaId, memoryview]:
    """Split a framed message into its schema id and (a zero-copy view of) its Avro payload."""
    if len(data) < HEADER_SIZE:
        raise WireFormatError(
            f"message of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte "
            "Confluent header; it was not written by a schema-registry serializer"
        )
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise WireFormatError(
            f"unknown magic byte {magic & 0xFF:#04x} (expected 0x00); "
            "it was not written by a schema-registry serializer"
        )
    return SchemaId(schema_id), memoryview(data)[HEADER_SIZE:]


# -- subject naming strategies ------------------------------------------------------------


class SubjectStrategy(Protocol):
    """Names the registry subject of a topic's key or value schema."""

    def __call__(self, topic: str, record_name: str | None, *, is_key: bool) -> Subject: ...


def topic_name_strategy(topic: str, record_name: str | None, *, is_key: bool) -> Subject:
    """``{topic}-key`` / ``{topic}-value`` (Confluent's default)."""
    return Subject(f"{topic}-key" if is_key else f"{topic}-value")


def record_name_strategy(topic: str, record_name: str | None, *, is_key: bool) -> Subject:
    """The record's full name, whatever the topic."""
    if not record_name:
        raise SchemaError("the record name strategy needs a named (record) schema")
    return Subject(record_name)


def topic_record_name_strategy(topic: str, record_name: str | None, *, is_key: bool) -> Subject:
    """``{topic}-{record full name}``."""
    if not record_name:
        raise SchemaError("the topic-record name strategy needs a named (record) schema")
    return Subject(f"{topic}-{record_name}")


def full_name(schema: Any) -> str | None:
    """The full name (``namespace.name``) of a named schema, None for primitives and unions."""
    if not isinstance(schema, Mapping) or "name" not in schema:
        return None
    name = str(schema["name"])
    namespace = schema.get("namespace")
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _parse(schema: Any) -> Any:
    try:
        return parse_schema(schema)
    except Exception as exc:  # fastavro raises several unrelated types here
        raise SchemaError(f"invalid Avro schema: {exc}") from exc


def _load(schema: Mapping[str, Any] | str) -> tuple[Any, str]:
    """(the schema as JSON data, its text) for a schema given as data or as JSON text."""
    if isinstance(schema, str):
        try:
            return json.loads(schema), schema
        except ValueError as exc:
            raise SchemaError(f"schema is not valid JSON: {exc}") from exc
    return schema, json.dumps(schema, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class PreparedSchema:
    """A schema resolved in the registry, ready to write records: id, subject, parsed form."""

    schema_id: SchemaId
    subject: Subject
    schema: str
    parsed: Any = field(repr=False, compare=False)
    header: bytes = field(repr=False, compare=False)

    @classmethod
    def build(
        cls, schema_id: int, schema: Mapping[str, Any] | str, *, subject: str
    ) -> PreparedSchema:
        """Prepare ``schema`` already known to be registered with ``schema_id``."""
        data, text = _load(schema)
        return cls(
            schema_id=SchemaId(schema_id),
            subject=Subject(subject),
            schema=text,
            parsed=_parse(data),
            header=frame(schema_id, b""),
        )


class AvroSerializer:
    """Writes records as Confluent-framed Avro, registering their schemas as configured.

    ``auto_register`` registers the schema (idempotent); otherwise it must
    already be registered under the subject (looked up). ``use_latest`` writes
    with the subject's latest registered schema instead of the given one.
    """

    def __init__(
        self,
        client: RegistryClient,
        *,
        subject_strategy: SubjectStrategy = topic_name_strategy,
        auto_register: bool = True,
        normalize: bool = False,
        use_latest: bool = False,
        cache_size: int = 1000,
    ) -> None:
        self.client = client
        self.subject_strategy = subject_strategy
        self.auto_register = auto_register
        self.normalize = normalize
        self.use_latest = use_latest
        self._prepared: LruCache[tuple[str, bool, str], PreparedSchema] = LruCache(cache_size)
        self._buffer = io.BytesIO()

    async def prepare(
        self, topic: str, schema: Mapping[str, Any] | str, *, is_key: bool
    ) -> PreparedSchema:
        """Resolve ``schema`` for ``topic``'s key or value in the registry (cached)."""
        data, text = _load(schema)
        key = (topic, is_key, canonical_schema(text))
        cached = self._prepared.get(key)
        if cached is not None:
            return cached
        parsed = _parse(data)
        subject = self.subject_strategy(topic, full_name(data), is_key=is_key)
        if self.use_latest:
            latest = await self.client.latest(subject)
            prepared = PreparedSchema.build(latest.schema_id, latest.schema, subject=subject)
        else:
            if self.auto_register:
                schema_id = await self.client.register(subject, text, normalize=self.normalize)
            else:
                found = await self.client.lookup(subject, text, normalize=self.normalize)
                schema_id = found.schema_id
            prepared = PreparedSchema(
                schema_id=schema_id,
                subject=subject,
                schema=text,
                parsed=parsed,
                header=frame(schema_id, b""),
            )
        self._prepared.put(key, prepared)
        return prepared

    def serialize(self, prepared: PreparedSchema, record: Any) -> bytes:
        """One record as framed Avro bytes (no I/O, one reused buffer)."""
        buf = self._buffer
        buf.seek(0)
        buf.truncate()
        buf.write(prepared.header)
        try:
            schemaless_writer(buf, prepared.parsed, record)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise RecordEncodeError(
                f"record does not fit schema {prepared.schema_id} of {prepared.subject}: {exc}"
            ) from exc
        return buf.getvalue()

    def serialize_many(self, prepared: PreparedSchema, records: Iterable[Any]) -> list[bytes]:
        """Many records written with one schema, each framed: one buffer, one copy out."""
        buf = self._buffer
        buf.seek(0)
        buf.truncate()
        header = prepared.header
        parsed = prepared.parsed
        ends: list[int] = []
        try:
            for record in records:
                buf.write(header)
                schemaless_writer(buf, parsed, record)
                ends.append(buf.tell())
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise RecordEncodeError(
                f"record #{len(ends)} does not fit schema {prepared.schema_id} of "
                f"{prepared.subject}: {exc}"
            ) from exc
        data = buf.getbuffer()
        try:
            out: list[bytes] = []
            start = 0
            for end in ends:
                out.append(bytes(data[start:end]))
                start = end
            return out
        finally:
            data.release()


class AvroDeserializer:
    """Reads Confluent-framed Avro, fetching each writer schema once by its id.

    With a ``reader_schema``, records are resolved to it by the Avro rules
    (defaults filled, promotions applied); otherwise they come back as written.
    """

    def __init__(
        self,
        client: RegistryClient,
        *,
        reader_schema: Mapping[str, Any] | str | None = None,
        cache_size: int = 1000,
    ) -> None:
        self.client = client
        self._reader = None if reader_schema is None else _parse(_load(reader_schema)[0])
        self._writers: LruCache[int, Any] = LruCache(cache_size)

    def remember(self, schema_id: int, schema: Mapping[str, Any] | str) -> None:
        """Declare the writer schema of ``schema_id`` (e.g. one this process registered)."""
        self._writers.put(schema_id, _parse(_load(schema)[0]))

    async def preload(self, schema_id: int) -> None:
        """Fetch and parse the writer schema of ``schema_id`` unless already known."""
        if self._writers.get(schema_id) is None:
            self.remember(schema_id, await self.client.get_schema(schema_id))

    async def deserialize(self, data: bytes | bytearray | memoryview) -> Any:
        """Decode one framed message, fetching its writer schema if needed."""
        schema_id, payload = unframe(data)
        await self.preload(schema_id)
        return self._read(schema_id, payload)

    def deserialize_cached(self, data: bytes | bytearray | memoryview) -> Any:
        """Decode one framed message whose writer schema is already known (no I/O)."""
        schema_id, payload = unframe(data)
        return self._read(schema_id, payload)

    def _read(self, schema_id: SchemaId, payload: memoryview) -> Any:
        writer = self._writers.get(schema_id)
        if writer is None:
            raise UnknownSchemaIdError(
                f"schema id {schema_id} is not cached; call preload({schema_id}) or "
                "use deserialize() to fetch it from the registry"
            )
        try:
            return schemaless_reader(io.BytesIO(payload), writer, self._reader)
        except SchemaResolutionError as exc:
            raise SchemaError(
                f"schema {schema_id} cannot be read with the reader schema: {exc}"
            ) from exc
        except (EOFError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
            raise WireFormatError(
                f"cannot decode a message written with schema {schema_id}: {exc!r}"
            ) from exc
