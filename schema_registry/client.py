"""Client of a Confluent-compatible schema registry, in two layers.

``RestClient`` speaks HTTP: one or more base URLs, optional basic auth,
timeouts, and retries with exponential backoff and jitter (``cdc.core.backoff``) on
connection errors and on 5xx/408/429 answers. It is the only place where httpx appears;
its failures are translated at this edge into the project's errors:

* 409 -> ``IncompatibleSchema`` (an ``IncompatibleSchemaError`` carrying the
  server's message, ``error_code`` and ``status``),
* 401 and 403 -> ``RegistryRefused`` (the credentials are refused: retrying cannot help),
* any other 4xx -> ``RegistryError(message, error_code=, status=)``,
* retries exhausted (unreachable, 5xx, 408, 429) -> ``RegistryUnavailable``.

``RegistryClient`` maps the REST API onto typed methods and keeps bounded LRU
caches, so that asking twice for what the registry already told us costs no
request: (subject, canonical schema) -> id, id -> schema text, (subject,
schema) -> registered schema, (subject, version) -> registered schema.

Invariants: credentials never appear in a log line, an exception message or
a ``repr``; a 4xx other than 408/429 is never retried; caches never hold more
than ``cache_size`` entries each; ``delete_subject`` forgets everything cached
for that subject; concurrent identical lookups share one request. A client
belongs to the event loop that first uses it (its pooled connections do):
create one per loop and close it in that loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, NewType, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx

from cdc.core.backoff import BackoffPolicy
from cdc.core.errors import (
    ConfigError,
    IncompatibleSchemaError,
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
)
from schema_registry.compatibility import CompatibilityLevel

log = logging.getLogger(__name__)

SchemaId = NewType("SchemaId", int)
Subject = NewType("Subject", str)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_ACCEPT = (
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json; qs=0.9, "
    "application/json; qs=0.5"
)
_RETRYABLE_STATUS = frozenset({408, 429})

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class IncompatibleSchema(IncompatibleSchemaError):
    """The registry refused a schema as incompatible (HTTP 409), with its reasons."""

    def __init__(self, message: str, *, error_code: int, status: int) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status = status


# The one definition of the levels lives beside the checker.
Compatibility = CompatibilityLevel


class Mode(StrEnum):
    """Registry modes: READONLY refuses registrations, IMPORT accepts given ids."""

    READWRITE = "READWRITE"
    READONLY = "READONLY"
    IMPORT = "IMPORT"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a request is retried.

    Attempt ``n`` (from 0) waits as ``cdc.core.backoff.BackoffPolicy`` says for
    ``base_delay`` doubling up to ``max_delay``, with full (+/- 100 %) jitter; a
    ``Retry-After`` header raises the wait up to ``max_delay``.
    """

    attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        policy = BackoffPolicy(self.base_delay, self.max_delay, jitter=1.0)
        capped = None if retry_after is None else min(retry_after, self.max_delay)
        return policy.delay(attempt + 1, retry_after=capped)


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """One version of a subject as the registry stores it."""

    subject: Subject
    schema_id: SchemaId
    version: int
    schema: str
    schema_type: str = "AVRO"

    @classmethod
    def from_json(cls, body: Mapping[str, Any], *, subject: str | None = None) -> RegisteredSchema:
        return cls(
            subject=Subject(str(body.get("subject", subject or ""))),
            schema_id=SchemaId(int(body["id"])),
            version=int(body["version"]),
            schema=str(body["schema"]),
            schema_type=str(body.get("schemaType", "AVRO")),
        )


class LruCache(Generic[K, V]):
    """A dictionary that forgets its least recently used entries beyond ``maxsize``."""

    __slots__ = ("_data", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("an LRU cache needs room for at least one entry")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        try:
            value = self._data[key]
        except KeyError:
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def discard_where(self, predicate: Callable[[K, V], bool]) -> None:
        for key in [k for k, v in self._data.items() if predicate(k, v)]:
            del self._data[key]

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def canonical_schema(schema: str) -> str:
    """A cache key for a schema text: compact JSON with sorted keys (text unchanged if not JSON).

    Sorting object keys never changes an Avro schema's meaning (field order
    lives in a list), so equivalent spellings share one cache entry.
    """
    try:
        return json.dumps(json.loads(schema), separators=(",", ":"), sort_keys=True)
    except ValueError:
        return schema


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``http://user:pw@host`` -> (``http://host``, (user, pw)); credentials never kept in URLs."""
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"not a registry URL (expected http(s)://host[:port]): host {parts.hostname!r}"
        )
    if parts.username is None:
        return urlunsplit(parts), None
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, (unquote(parts.username), unquote(parts.password or ""))


def _error_from_response(response: httpx.Response) -> tuple[str, int]:
    """The (message, error_code) of a registry error answer; Confluent's JSON body or plain text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("error_code", response.status_code)
        message = body.get("message") or response.reason_phrase
        return str(message), int(code) if isinstance(code, int) else response.status_code
    text = response.text.strip()[:500]
    return text or response.reason_phrase, response.status_code


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class RestClient:
    """HTTP transport to one registry (several URLs = replicas tried in turn on failure)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        raw = [urls] if isinstance(urls, str) else list(urls)
        if not raw:
            raise ConfigError("a registry client needs at least one URL")
        self._urls: list[str] = []
        for url in raw:
            bare, creds = _split_credentials(url)
            self._urls.append(bare)
            auth = auth or creds
        self._retry = retry or RetryPolicy()
        self._next = 0
        self._http = httpx.AsyncClient(
            auth=httpx.BasicAuth(*auth) if auth else None,
            timeout=httpx.Timeout(timeout),
            headers={"Accept": _ACCEPT, "Content-Type": CONTENT_TYPE},
            event_hooks={k: list(v) for k, v in (event_hooks or {}).items()},
            follow_redirects=False,
            transport=transport,
        )

    @property
    def urls(self) -> tuple[str, ...]:
        """The base URLs, without credentials."""
        return tuple(self._urls)

    def __repr__(self) -> str:
        return f"RestClient(urls={self._urls!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request (retried as the policy says) and return the decoded JSON answer."""
        content = None if body is None else json.dumps(body).encode()
        last_problem = "no attempt made"
        cause: BaseException | None = None
        attempts = max(1, self._retry.attempts)
        for attempt in range(attempts):
            base = self._urls[self._next % len(self._urls)]
            retry_after: float | None = None
            try:
                response = await self._http.request(
                    method, base + path, content=content, params=params
                )
            except httpx.TransportError as exc:
                last_problem = f"cannot reach {base}: {type(exc).__name__}: {exc}"
                cause = exc
            else:
                status = response.status_code
                if status < 300:
                    return response.json() if response.content else None
                message, code = _error_from_response(response)
                if status >= 500 or status in _RETRYABLE_STATUS:
                    last_problem = f"{base} answered {status} ({code}): {message}"
                    retry_after = _retry_after(response)
                    cause = None
                elif status == 409:
                    raise IncompatibleSchema(message, error_code=code, status=status)
                elif status in (401, 403):
                    raise RegistryRefused(
                        f"schema registry {base} refuses the credentials (HTTP {status}):"
                        f" {message}",
                        error_code=code,
                        status=status,
                    )
                else:
                    raise RegistryError(
                        f"{method} {path}: {message}", error_code=code, status=status
                    )
            # Retryable failure: rotate to the next replica and back off.
            self._next += 1
            if attempt + 1 < attempts:
                wait = self._retry.delay(attempt, retry_after=retry_after)
                log.warning(
                    "registry %s %s failed (%s); retry %d/%d in %.2fs",
                    method,
                    path,
                    last_problem,
                    attempt + 1,
                    attempts - 1,
                    wait,
                )
                await asyncio.sleep(wait)
        raise RegistryUnavailable(
            f"schema registry {method} {path} failed after {attempts} attempts: {last_problem}"
        ) from cause


def _path(*segments: str | int) -> str:
    return "".join("/" + quote(str(s), safe="") for s in segments)


class RegistryClient:
    """Typed, cached access to a Confluent-compatible schema registry (async).

    Use ``RegistryClient.from_url(...)`` or wrap a ``RestClient``; close with
    ``aclose()`` or ``async with``.
    """

    def __init__(self, rest: RestClient, *, cache_size: int = 1000) -> None:
        self.rest = rest
        self._ids: LruCache[tuple[str, str, bool], SchemaId] = LruCache(cache_size)
        self._schemas: LruCache[int, str] = LruCache(cache_size)
        self._lookups: LruCache[tuple[str, str, bool], RegisteredSchema] = LruCache(cache_size)
        self._versions: LruCache[tuple[str, int], RegisteredSchema] = LruCache(cache_size)
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}

    @classmethod
    def from_url(
        cls,
        urls: str | Sequence[str],
        *,
        auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        cache_size: int = 1000,
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
    ) -> RegistryClient:
        """A client of the registry at ``urls``; ``sqlite:///PATH`` runs one in-process."""
        transport = None
        if isinstance(urls, str) and urls.startswith("sqlite:///"):
            from schema_registry.embedded import (  # noqa: PLC0415  (loads the server only here)
                EMBEDDED_BASE_URL,
                EmbeddedTransport,
            )

            transport = EmbeddedTransport(urls)
            urls = EMBEDDED_BASE_URL
        rest = RestClient(
            urls,
            auth=auth,
            timeout=timeout,
            retry=retry,
            event_hooks=event_hooks,
            transport=transport,
        )
        return cls(rest, cache_size=cache_size)

    def __repr__(self) -> str:
        return f"RegistryClient({self.rest!r})"

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.rest.aclose()

    async def _shared(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` once for all concurrent callers asking for the same ``key``."""
        pending = self._inflight.get(key)
        if pending is not None:
            result: T = await asyncio.shield(pending)
            return result
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await call()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._inflight[key]

    # -- schemas ---------------------------------------------------------------------------

    async def register(self, subject: str, schema: str, *, normalize: bool = False) -> SchemaId:
        """Register ``schema`` under ``subject`` (idempotent) and return its global id."""
        key = (subject, canonical_schema(schema), normalize)
        cached = self._ids.get(key)
        if cached is not None:
            return cached

        async def call() -> SchemaId:
            params = {"normalize": "true"} if normalize else None
            answer = await self.rest.request(
                "POST",
                _path("subjects", subject, "versions"),
                body={"schema": schema},
                params=params,
            )
            schema_id = SchemaId(int(answer["id"]))
            self._ids.put(key, schema_id)
            if self._schemas.get(schema_id) is None:
                self._schemas.put(schema_id, schema)
            return schema_id

        return await self._shared(("register", *key), call)

    async def lookup(
        self, subject: str, schema: str, *, normalize: bool = False
    ) -> RegisteredSchema:
        """The version of ``subject`` holding ``schema``; RegistryError 40401/40403 if none."""
        key = (subject, canonical_schema(schema), normalize)
        cached = self._lookups.get(key)
        if cached is not None:
            return cached

        async def call() -> RegisteredSchema:
            params = {"normalize": "true"} if normalize else None
            answer = await self.rest.request(
                "POST", _path("subjects", subject), body={"schema": schema}, params=params
            )
            found = RegisteredSchema.from_json(answer, subject=subject)
            self._lookups.put(key, found)
            self._ids.put(key, found.schema_id)
            self._versions.put((subject, found.version), found)
            return found

        return await self._shared(("lookup", *key), call)

    async def get_schema(self, schema_id: int) -> str:
        """The schema text with global id ``schema_id``; RegistryError 40403 if unknown."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached

        async def call() -> str:
            answer = await self.rest.request("GET", _path("schemas", "ids", schema_id))
            text = str(answer["schema"])
            self._schemas.put(schema_id, text)
            return text

        return await self._shared(("schema", schema_id), call)

    def cached_schema(self, schema_id: int) -> str | None:
        """The schema text of ``schema_id`` if already known, without any request."""
        return self._schemas.get(schema_id)

    async def latest(self, subject: str) -> RegisteredSchema:
        """The newest version of ``subject`` (never cached: it changes)."""
        answer = await self.rest.request("GET", _path("subjects", subject, "versions", "latest"))
        found = RegisteredSchema.from_json(answer, subject=subject)
        self._versions.put((subject, found.version), found)
        self._schemas.put(found.schema_id, found.schema)
        return found

    async def version(self, subject: str, number: int) -> RegisteredSchema:
        """Version ``number`` of ``subject``."""
        cached = self._versions.get((subject, number))
        if cached is not None:
            return cached
        answer = await self.rest.request("GET", _path("subjects", subject, "versions", number))
        found = RegisteredSchema.from_json(answer, subject=subject)
        self._versions.put((subject, number), found)
        self._schemas.put(found.schema_id, found.schema)
        return found

    async def versions(self, subject: str) -> list[int]:
        """The live version numbers of ``subject``."""
        answer = await self.rest.request("GET", _path("subjects", subject, "versions"))
        return [int(v) for v in answer]

    async def subjects(self, *, deleted: bool = False) -> list[Subject]:
        """All subjects (soft-deleted ones too if ``deleted``)."""
        params = {"deleted": "true"} if deleted else None
        answer = await self.rest.request("GET", "/subjects", params=params)
        return [Subject(str(s)) for s in answer]

    async def delete_subject(self, subject: str, *, permanent: bool = False) -> list[int]:
        """Delete ``subject`` (soft, or hard if ``permanent``); returns the deleted versions."""
        params = {"permanent": "true"} if permanent else None
        try:
            answer = await self.rest.request("DELETE", _path("subjects", subject), params=params)
        finally:
            self._forget(subject)
        return [int(v) for v in answer]

    def _forget(self, subject: str) -> None:
        self._ids.discard_where(lambda k, _v: k[0] == subject)
        self._lookups.discard_where(lambda k, _v: k[0] == subject)
        self._versions.discard_where(lambda k, _v: k[0] == subject)

    # -- compatibility and mode -----------------------------------------------------------

    async def set_compatibility(
        self, level: Compatibility | str, *, subject: str | None = None
    ) -> Compatibility:
        """Set the compatibility level of ``subject`` (or the global default)."""
        path = "/config" if subject is None else _path("config", subject)
        answer = await self.rest.request(
            "PUT", path, body={"compatibility": Compatibility(level).value}
        )
        return Compatibility(answer.get("compatibility") or answer.get("compatibilityLevel"))

    async def get_compatibility(self, subject: str | None = None) -> Compatibility:
        """The compatibility level in force for ``subject`` (falling back to the global one)."""
        if subject is None:
            answer = await self.rest.request("GET", "/config")
        else:
            answer = await self.rest.request(
                "GET", _path("config", subject), params={"defaultToGlobal": "true"}
            )
        return Compatibility(answer.get("compatibilityLevel") or answer.get("compatibility"))

    async def test_compatibility(
        self,
        subject: str,
        schema: str,
        *,
        version: int | str = "latest",
        verbose: bool = True,
    ) -> tuple[bool, tuple[str, ...]]:
        """Would ``schema`` be accepted after ``version`` of ``subject``? (verdict, reasons)."""
        answer = await self.rest.request(
            "POST",
            _path("compatibility", "subjects", subject, "versions", version),
            body={"schema": schema},
            params={"verbose": "true"} if verbose else None,
        )
        messages = answer.get("messages") or ()
        return bool(answer["is_compatible"]), tuple(str(m) for m in messages)

    async def set_mode(self, mode: Mode | str, *, subject: str | None = None) -> Mode:
        """Set the mode of ``subject`` (or of the registry)."""
        path = "/mode" if subject is None else _path("mode", subject)
        answer = await self.rest.request("PUT", path, body={"mode": Mode(mode).value})
        return Mode(answer["mode"])

    async def get_mode(self, subject: str | None = None) -> Mode:
        """The mode in force for ``subject`` (falling back to the registry's)."""
        if subject is None:
            answer = await self.rest.request("GET", "/mode")
        else:
            answer = await self.rest.request(
                "GET", _path("mode", subject), params={"defaultToGlobal": "true"}
            )
        return Mode(answer["mode"])
