"""The registry's domain: subjects, versions, ids, deletes, compatibility config and mode.

No HTTP here: methods take plain values and raise ``RegistryServiceError``
carrying Confluent's ``error_code`` and HTTP status. Every method runs in one
storage transaction (``write()`` for mutations), so a failed request changes
nothing. Semantics (Confluent Schema Registry's, with these choices):

- ids are global, one per distinct schema (type + canonical text +
  references); registering a known schema under another subject reuses its id
  and adds a version there; the same schema registered again under the same
  subject (non-deleted) returns its id and adds nothing.
- versions count per subject from 1 and are never reused, not even after a
  permanent delete; a schema re-registered after a soft delete gets a new
  version with its old id.
- schemas are compared by their canonical text (Confluent's
  ``canonicalString()``, see ``schemas``) everywhere: register, look-up, id
  reuse across subjects, references; ``normalize=true`` compares the stronger
  normalised text instead and registers the canonical text of the normalised
  schema.
- compatibility is checked against the subject's non-deleted versions at
  the subject's level (else the global one, default BACKWARD); IMPORT mode
  skips it and accepts the client's ``id`` and ``version``.
- READONLY mode (subject's own, else global) refuses registrations and
  deletes with 42205; config and mode changes stay allowed. IMPORT mode may
  only be entered on an empty registry/subject unless ``force``.
- subjects are validated where they are stored (register, subject config and
  mode): ``validate_subject`` answers 42208 for empty, over-long, control
  characters and ``.``/``..`` path segments; schemas nesting deeper than
  ``schemas.MAX_DEPTH`` are 42201. Neither changes the store.
- a permanent subject delete also drops the subject's config and mode.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from cdc.core.errors import RegistryError
from schema_registry import json_schemas, schemas
from schema_registry.compatibility import CompatibilityLevel, CompatibilityResult
from schema_registry.compatibility import check_level_schemas as _check_level
from schema_registry.json_schemas import JSON
from schema_registry.schemas import AVRO, InvalidSchemaError, ParsedSchema, Reference
from schema_registry.storage import GLOBAL_SCOPE, Storage, StoredSchema, Tx, VersionRow

DEFAULT_COMPATIBILITY = CompatibilityLevel.BACKWARD
MODES = ("READWRITE", "READONLY", "IMPORT")
MAX_VERSION = 2**31 - 1
MAX_SUBJECT_CHARS = 1024
_COMPAT_KEY = "compatibility"
_MODE_KEY = "mode"


class RegistryServiceError(RegistryError):
    """A request the registry refuses; ``error_code`` and ``status`` are Confluent's."""


def _err(error_code: int, message: str) -> RegistryServiceError:
    status = error_code if error_code < 1000 else error_code // 100
    return RegistryServiceError(message, error_code=error_code, status=status)


def subject_not_found(subject: str) -> RegistryServiceError:
    return _err(40401, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: int) -> RegistryServiceError:
    return _err(40402, f"Version {version} not found for subject '{subject}'.")


def schema_not_found(detail: str = "Schema not found") -> RegistryServiceError:
    return _err(40403, detail)


def validate_subject(subject: str) -> str:
    """``subject`` if a registry may store it, else 42208 (Confluent's invalid subject).

    Refused: empty, longer than ``MAX_SUBJECT_CHARS``, control characters (NUL, CR,
    LF, as Confluent refuses), and ``.`` or ``..`` between slashes (a path escape in
    clients that put the subject into a URL unencoded).
    """
    problem = None
    if not subject.strip():
        problem = "it is empty"
    elif len(subject) > MAX_SUBJECT_CHARS:
        problem = f"it is longer than {MAX_SUBJECT_CHARS} characters"
    elif any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in subject):
        problem = "it contains a control character"
    elif any(part in (".", "..") for part in subject.split("/")):
        problem = "it contains a '.' or '..' path segment"
    if problem is not None:
        shown = subject[:64].encode("unicode_escape").decode("ascii")
        raise _err(42208, f"Invalid subject '{shown}': {problem}")
    return subject


@dataclass(frozen=True, slots=True)
class SchemaRequest:
    """A schema as a client sends it (register, lookup, compatibility test)."""

    schema: str
    schema_type: str | None = None
    references: tuple[Reference, ...] = ()
    schema_id: int | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a subject."""

    subject: str
    version: int
    schema_id: int
    schema: str
    references: tuple[Reference, ...] = field(default=())
    schema_type: str = AVRO


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    """A schema by id."""

    schema_id: int
    schema: str
    references: tuple[Reference, ...] = ()
    schema_type: str = AVRO


def parse_version(spec: str | int) -> int | None:
    """A version spec: a number in 1..2^31-1, or ``latest`` / ``-1`` (None)."""
    text = str(spec).strip()
    if text.lower() == "latest" or text == "-1":
        return None
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_VERSION:
        raise _err(
            42202,
            f"The specified version '{text}' is not a valid version id. Allowed values are"
            f' between [1, {MAX_VERSION}] and the string "latest"',
        )
    return number


class RegistryService:
    """The registry's operations over a ``Storage``."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    @contextlib.contextmanager
    def _read(self) -> Iterator[Tx]:
        with self._storage.read() as tx:
            yield tx

    @contextlib.contextmanager
    def _write(self) -> Iterator[Tx]:
        with self._storage.write() as tx:
            yield tx

    # ------------------------------------------------------------ schemas

    def _resolve(self, tx: Tx, references: Sequence[Reference], *, depth: int = 0) -> list[str]:
        """The texts of the referenced schemas, dependencies first."""
        if depth > 32:
            raise _err(42201, "Invalid schema: schema references nest too deeply")
        texts: list[str] = []
        for ref in references:
            rows = [r for r in tx.versions(ref.subject) if not r.deleted]
            row = next((r for r in rows if r.version == ref.version), None)
            if ref.version == -1 and rows:
                row = rows[-1]
            if row is None:
                raise _err(
                    42201,
                    f"Invalid schema: reference {ref.name!r} names subject '{ref.subject}'"
                    f" version {ref.version}, which does not exist",
                )
            stored = tx.schema_by_id(row.schema_id)
            assert stored is not None
            texts += self._resolve(tx, schemas.references_from_json(stored.refs), depth=depth + 1)
            texts.append(stored.canonical)
        return texts

    def _named(self, tx: Tx, references: Sequence[Reference], *, depth: int = 0) -> dict[str, str]:
        """Referenced schema texts by reference name (JSON Schema ``$ref``), nested ones too."""
        if depth > 32:
            raise _err(42201, "Invalid schema: schema references nest too deeply")
        found: dict[str, str] = {}
        for ref in references:
            rows = [r for r in tx.versions(ref.subject) if not r.deleted]
            row = rows[-1] if ref.version == -1 and rows else None
            row = row or next((r for r in rows if r.version == ref.version), None)
            stored = tx.schema_by_id(row.schema_id) if row is not None else None
            if stored is None:
                continue  # _resolve has reported it
            found.update(
                self._named(tx, schemas.references_from_json(stored.refs), depth=depth + 1)
            )
            found[ref.name] = stored.canonical
        return found

    @staticmethod
    def _kind(request: SchemaRequest) -> str:
        kind = (request.schema_type or AVRO).strip().upper()
        if kind == "PROTOBUF":
            raise _err(
                42201,
                "Invalid schema: schemaType PROTOBUF is not supported by this registry"
                " (AVRO and JSON are); see the README's schema registry section",
            )
        if kind not in (AVRO, JSON):
            raise _err(
                42201, f"Invalid schema: unknown schemaType {request.schema_type!r} (AVRO or JSON)"
            )
        return kind

    def _parse(self, tx: Tx, request: SchemaRequest) -> ParsedSchema:
        kind = self._kind(request)
        try:
            referenced = self._resolve(tx, request.references)
            if kind == JSON:
                return json_schemas.parse(request.schema)
            return schemas.parse(request.schema, referenced=referenced)
        except InvalidSchemaError as exc:
            raise _err(42201, str(exc)) from exc

    def _parse_stored(self, tx: Tx, stored: StoredSchema) -> ParsedSchema:
        if stored.schema_type == JSON:
            return json_schemas.parse(stored.canonical)
        refs = schemas.references_from_json(stored.refs)
        return schemas.parse(stored.canonical, referenced=self._resolve(tx, refs))

    def _info(self, tx: Tx, row: VersionRow) -> VersionInfo:
        stored = tx.schema_by_id(row.schema_id)
        assert stored is not None
        refs = schemas.references_from_json(stored.refs)
        return VersionInfo(
            row.subject, row.version, row.schema_id, stored.canonical, refs, stored.schema_type
        )

    def schema_by_id(self, schema_id: int) -> SchemaInfo:
        with self._read() as tx:
            stored = tx.schema_by_id(schema_id)
            if stored is None or not tx.versions_of_schema(schema_id):
                raise schema_not_found(f"Schema {schema_id} not found")
            return SchemaInfo(
                schema_id,
                stored.canonical,
                schemas.references_from_json(stored.refs),
                stored.schema_type,
            )

    def versions_of_schema(self, schema_id: int, *, deleted: bool = False) -> list[VersionRow]:
        with self._read() as tx:
            rows = tx.versions_of_schema(schema_id)
        if not rows:
            raise schema_not_found(f"Schema {schema_id} not found")
        return [r for r in rows if deleted or not r.deleted]

    def subjects_of_schema(self, schema_id: int, *, deleted: bool = False) -> list[str]:
        rows = self.versions_of_schema(schema_id, deleted=deleted)
        return sorted({r.subject for r in rows})

    def list_schemas(
        self,
        *,
        prefix: str = "",
        deleted: bool = False,
        latest_only: bool = False,
        offset: int = 0,
        limit: int = -1,
    ) -> list[VersionInfo]:
        """``GET /schemas``: versions by subject then version, Confluent's filters and paging."""
        found: list[VersionInfo] = []
        with self._read() as tx:
            for name, _ in sorted(tx.subjects()):
                if not name.startswith(prefix):
                    continue
                rows = [r for r in tx.versions(name) if deleted or not r.deleted]
                for row in rows[-1:] if latest_only else rows:
                    found.append(self._info(tx, row))
        start = max(offset, 0)
        return found[start:] if limit < 0 else found[start : start + limit]

    # ------------------------------------------------------------ subjects

    def subjects(
        self, *, prefix: str = "", deleted: bool = False, deleted_only: bool = False
    ) -> list[str]:
        with self._read() as tx:
            rows = tx.subjects()
        return [
            name
            for name, all_deleted in rows
            if name.startswith(prefix)
            and (all_deleted if deleted_only else (deleted or not all_deleted))
        ]

    def _rows(self, tx: Tx, subject: str, *, deleted: bool) -> list[VersionRow]:
        rows = [r for r in tx.versions(subject) if deleted or not r.deleted]
        if not rows:
            raise subject_not_found(subject)
        return rows

    def versions(self, subject: str, *, deleted: bool = False) -> list[int]:
        with self._read() as tx:
            return [r.version for r in self._rows(tx, subject, deleted=deleted)]

    def _pick(self, rows: list[VersionRow], subject: str, *, version: int | None) -> VersionRow:
        if version is None:
            return rows[-1]
        for row in rows:
            if row.version == version:
                return row
        raise version_not_found(subject, version)

    def get_version(self, subject: str, spec: str | int, *, deleted: bool = False) -> VersionInfo:
        version = parse_version(spec)
        with self._read() as tx:
            row = self._pick(self._rows(tx, subject, deleted=deleted), subject, version=version)
            return self._info(tx, row)

    def referenced_by(self, subject: str, spec: str | int) -> list[int]:
        """Ids of the schemas that reference ``subject`` at that version."""
        info = self.get_version(subject, spec)
        with self._read() as tx:
            users = tx.schemas_with_references()
        return sorted(
            s.schema_id
            for s in users
            if any(
                r.subject == subject and r.version == info.version
                for r in schemas.references_from_json(s.refs)
            )
        )

    def lookup(
        self,
        subject: str,
        request: SchemaRequest,
        *,
        normalize: bool = False,
        deleted: bool = False,
    ) -> VersionInfo:
        """The version of ``subject`` holding this schema (40401 / 40403 if none)."""
        with self._read() as tx:
            rows = self._rows(tx, subject, deleted=deleted)
            parsed = self._parse(tx, request)
            kind = self._kind(request)
            wanted = parsed.normalized if normalize else parsed.canonical
            for row in reversed(rows):
                stored = tx.schema_by_id(row.schema_id)
                assert stored is not None
                if stored.schema_type != kind:
                    continue
                if schemas.references_from_json(stored.refs) != request.references:
                    continue
                text = stored.normalized if normalize else stored.canonical
                if text == wanted or (
                    # a store written before canonical texts followed Confluent's
                    not normalize
                    and kind == AVRO
                    and self._parse_stored(tx, stored).canonical == wanted
                ):
                    return self._info(tx, row)
        raise schema_not_found(f"Schema not found in subject '{subject}'")

    # ------------------------------------------------------------ register

    def register(self, subject: str, request: SchemaRequest, *, normalize: bool = False) -> int:
        """Register a schema under ``subject``; returns its global id."""
        validate_subject(subject)
        with self._write() as tx:
            mode = self._effective_mode(tx, subject)
            if mode == "READONLY":
                raise _err(42205, f"Subject '{subject}' is in read-only mode")
            importing = mode == "IMPORT"
            if request.schema_id is not None and not importing:
                raise _err(42205, "A schema id may only be given in IMPORT mode")
            parsed = self._parse(tx, request)
            kind = self._kind(request)
            text = parsed.canonical
            if normalize:
                text = self._parse(tx, replace(request, schema=parsed.normalized)).canonical
            key = schemas.fingerprint(kind, text, references=request.references)
            known = tx.schema_by_fingerprint(key)
            rows = tx.versions(subject)
            live = [r for r in rows if not r.deleted]
            if known is not None and (request.schema_id in (None, known.schema_id)):
                same = [r for r in live if r.schema_id == known.schema_id]
                if same and request.version in (None, same[-1].version):
                    return known.schema_id
            if known is not None and request.schema_id not in (None, known.schema_id):
                raise _err(
                    42205,
                    f"This schema is already registered with id {known.schema_id};"
                    f" it cannot take id {request.schema_id}",
                )
            if not importing and live:
                self._ensure_compatible(tx, subject, request=request, parsed=parsed, live=live)
            schema_id = self._allocate_id(
                tx, request, known=known, text=text, key=key, parsed=parsed
            )
            version = self._allocate_version(
                tx, subject, request=request, rows=rows, importing=importing
            )
            tx.insert_version(VersionRow(subject, version, schema_id, deleted=False))
            return schema_id

    def _ensure_compatible(
        self,
        tx: Tx,
        subject: str,
        *,
        request: SchemaRequest,
        parsed: ParsedSchema,
        live: list[VersionRow],
    ) -> None:
        level = self._effective_level(tx, subject)
        result = self._check(tx, level, request=request, parsed=parsed, rows=live)
        if not result.compatible:
            raise _err(
                409,
                f"Schema being registered is incompatible with an earlier schema for subject"
                f" '{subject}' ({level}), details: {json.dumps(list(result.messages))}",
            )

    def _check(
        self,
        tx: Tx,
        level: CompatibilityLevel,
        *,
        request: SchemaRequest,
        parsed: ParsedSchema,
        rows: Sequence[VersionRow],
    ) -> CompatibilityResult:
        if level is CompatibilityLevel.NONE or not rows:
            return CompatibilityResult(compatible=True)
        if not level.transitive:
            rows = rows[-1:]
        kind = self._kind(request)
        existing = []
        named = self._named(tx, request.references) if kind == JSON else {}
        for row in rows:
            stored = tx.schema_by_id(row.schema_id)
            assert stored is not None
            if stored.schema_type != kind:
                return CompatibilityResult.of(
                    [f"version {row.version} is {stored.schema_type}, the new schema {kind}"]
                )
            existing.append(self._parse_stored(tx, stored).schema)
            if kind == JSON:
                named.update(self._named(tx, schemas.references_from_json(stored.refs)))
        labels = [f"version {r.version}" for r in rows]
        if kind == JSON:
            docs = json_schemas.referenced_documents(named)
            return _check_level(
                level,
                new=parsed.schema,
                existing=existing,
                labels=labels,
                pair=lambda reader, writer: CompatibilityResult.of(
                    json_schemas.check(reader=reader, writer=writer, referenced=docs)
                ),
            )
        return _check_level(level, new=parsed.schema, existing=existing, labels=labels)

    def _allocate_id(
        self,
        tx: Tx,
        request: SchemaRequest,
        *,
        known: StoredSchema | None,
        text: str,
        key: str,
        parsed: ParsedSchema,
    ) -> int:
        if known is not None:
            return known.schema_id
        if request.schema_id is not None:
            taken = tx.schema_by_id(request.schema_id)
            if taken is not None:
                raise _err(
                    42205,
                    f"Overwrite new schema with id {request.schema_id} is not"
                    " permitted: the id belongs to another schema",
                )
            schema_id = request.schema_id
        else:
            schema_id = tx.max_schema_id() + 1
        tx.insert_schema(
            StoredSchema(
                schema_id,
                self._kind(request),
                text,
                parsed.normalized,
                schemas.references_json(request.references),
                key,
            )
        )
        return schema_id

    def _allocate_version(
        self,
        tx: Tx,
        subject: str,
        *,
        request: SchemaRequest,
        rows: list[VersionRow],
        importing: bool,
    ) -> int:
        following = max([tx.last_version(subject), *(r.version for r in rows)]) + 1
        if request.version is None:
            return following
        if importing:
            if any(r.version == request.version for r in rows):
                raise _err(42205, f"Version {request.version} of subject '{subject}' exists")
            return request.version
        if request.version != following:
            raise _err(
                42202,
                f"Version {request.version} is not the next version"
                f" ({following}) of subject '{subject}'",
            )
        return following

    # ------------------------------------------------------------ compatibility test

    def test_compatibility(
        self, subject: str, request: SchemaRequest, *, spec: str | int | None = None
    ) -> CompatibilityResult:
        """Check a schema against one version (``spec``) or per the level (``spec`` None)."""
        version = parse_version(spec) if spec is not None else None
        with self._read() as tx:
            parsed = self._parse(tx, request)
            level = self._effective_level(tx, subject)
            live = [r for r in tx.versions(subject) if not r.deleted]
            if spec is None:
                return self._check(tx, level, request=request, parsed=parsed, rows=live)
            if not live:
                if version is None:
                    return CompatibilityResult(compatible=True)
                raise version_not_found(subject, version)  # Confluent: 40402, even then
            row = self._pick(live, subject, version=version)
            one = CompatibilityLevel(level.value.removesuffix("_TRANSITIVE"))
            return self._check(tx, one, request=request, parsed=parsed, rows=[row])

    # ------------------------------------------------------------ deletes

    def delete_subject(self, subject: str, *, permanent: bool = False) -> list[int]:
        with self._write() as tx:
            if self._effective_mode(tx, subject) == "READONLY":
                raise _err(42205, f"Subject '{subject}' is in read-only mode")
            rows = tx.versions(subject)
            if not rows:
                raise subject_not_found(subject)
            live = [r for r in rows if not r.deleted]
            if permanent:
                if live:
                    raise _err(
                        40405,
                        f"Subject '{subject}' was not deleted first before being"
                        " permanently deleted",
                    )
                for row in rows:
                    tx.remove_version(subject, row.version)
                tx.delete_setting(subject, _COMPAT_KEY)
                tx.delete_setting(subject, _MODE_KEY)
                return [r.version for r in rows]
            if not live:
                raise _err(
                    40404,
                    f"Subject '{subject}' was soft deleted. Set permanent=true"
                    " to delete permanently",
                )
            for row in live:
                tx.mark_deleted(subject, row.version)
            return [r.version for r in live]

    def delete_version(self, subject: str, spec: str | int, *, permanent: bool = False) -> int:
        version = parse_version(spec)
        with self._write() as tx:
            if self._effective_mode(tx, subject) == "READONLY":
                raise _err(42205, f"Subject '{subject}' is in read-only mode")
            rows = tx.versions(subject)
            if not rows:
                raise subject_not_found(subject)
            live = [r for r in rows if not r.deleted]
            if version is None:
                row = live[-1] if live and not permanent else rows[-1]
            else:
                row = self._pick(rows, subject, version=version)
            if permanent:
                if not row.deleted:
                    raise _err(
                        40407,
                        f"Subject '{subject}' Version {row.version} was not deleted"
                        " first before being permanently deleted",
                    )
                tx.remove_version(subject, row.version)
            else:
                if row.deleted:
                    raise _err(
                        40406,
                        f"Subject '{subject}' Version {row.version} was soft"
                        " deleted. Set permanent=true to delete permanently",
                    )
                tx.mark_deleted(subject, row.version)
            return row.version

    # ------------------------------------------------------------ config

    def _effective_level(self, tx: Tx, subject: str | None) -> CompatibilityLevel:
        for scope in ([subject] if subject else []) + [GLOBAL_SCOPE]:
            value = tx.get_setting(scope, _COMPAT_KEY)
            if value is not None:
                return CompatibilityLevel(value)
        return DEFAULT_COMPATIBILITY

    def get_config(
        self, subject: str | None = None, *, default_to_global: bool = False
    ) -> CompatibilityLevel:
        with self._read() as tx:
            if subject and not default_to_global:
                value = tx.get_setting(subject, _COMPAT_KEY)
                if value is None:
                    raise _err(
                        40408,
                        f"Subject '{subject}' does not have subject-level compatibility configured",
                    )
                return CompatibilityLevel(value)
            return self._effective_level(tx, subject)

    def set_config(self, subject: str | None, level: str) -> CompatibilityLevel:
        if subject:
            validate_subject(subject)
        try:
            parsed = CompatibilityLevel.parse(level)
        except (ValueError, AttributeError) as exc:
            choices = ", ".join(v.value for v in CompatibilityLevel)
            raise _err(
                42203, f"Invalid compatibility level {level!r}. Valid values are {choices}"
            ) from exc
        with self._write() as tx:
            tx.set_setting(subject or GLOBAL_SCOPE, _COMPAT_KEY, value=parsed.value)
        return parsed

    def delete_config(self, subject: str | None = None) -> CompatibilityLevel:
        """Remove a config; returns the level that was in force before."""
        with self._write() as tx:
            previous = self._effective_level(tx, subject)
            if (
                subject
                and tx.get_setting(subject, _COMPAT_KEY) is None
                and not tx.versions(subject)
            ):
                raise subject_not_found(subject)
            tx.delete_setting(subject or GLOBAL_SCOPE, _COMPAT_KEY)
            return previous

    # ------------------------------------------------------------ mode

    def _effective_mode(self, tx: Tx, subject: str | None) -> str:
        for scope in ([subject] if subject else []) + [GLOBAL_SCOPE]:
            value = tx.get_setting(scope, _MODE_KEY)
            if value is not None:
                return value
        return "READWRITE"

    def get_mode(self, subject: str | None = None, *, default_to_global: bool = False) -> str:
        with self._read() as tx:
            if subject and not default_to_global:
                value = tx.get_setting(subject, _MODE_KEY)
                if value is None:
                    raise _err(
                        40409, f"Subject '{subject}' does not have subject-level mode configured"
                    )
                return value
            return self._effective_mode(tx, subject)

    def set_mode(self, subject: str | None, mode: str, *, force: bool = False) -> str:
        if subject:
            validate_subject(subject)
        wanted = mode.strip().upper() if isinstance(mode, str) else ""
        if wanted not in MODES:
            raise _err(42204, f"Invalid mode {mode!r}. Valid values are {', '.join(MODES)}")
        with self._write() as tx:
            if wanted == "IMPORT" and not force:
                busy = bool(tx.versions(subject)) if subject else bool(tx.subjects())
                if busy:
                    raise _err(
                        42205,
                        "Cannot import since found existing subjects;"
                        " use force=true to switch to IMPORT anyway",
                    )
            tx.set_setting(subject or GLOBAL_SCOPE, _MODE_KEY, value=wanted)
        return wanted

    def delete_mode(self, subject: str | None = None) -> str:
        """Remove a mode setting; returns the mode that was in force before."""
        with self._write() as tx:
            previous = self._effective_mode(tx, subject)
            if subject and tx.get_setting(subject, _MODE_KEY) is None and not tx.versions(subject):
                raise subject_not_found(subject)
            tx.delete_setting(subject or GLOBAL_SCOPE, _MODE_KEY)
            return previous
