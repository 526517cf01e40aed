"""The HTTP sink: entity upserts and deletes sent to an HTTP API, version-guarded by state.

An HTTP API cannot hold our versions, so the last applied ``Version`` of each key (and
whether it is a tombstone) lives in the ``StateStore``. ``apply`` locks the batch's keys
there (``StateStore.guard``: per-key advisory locks in one state-store transaction, held
across the requests), reads their stored versions, decides locally, sends only the
operations that are newer, and saves the versions of those the target accepted in the same
transaction (also when the call fails half-way, so a retry finds them as duplicates). Check,
send and save are thus atomic per key: a replay running beside the live worker waits for
the keys and then sees the live worker's versions, so a target never receives an older
version after a newer one.

Requests:

- upsert: ``upsert_method`` to ``url`` (``{key}`` and ``{entity}`` filled in, URL-quoted),
  body the JSON of ``EntityUpsert.fields()`` (unavailable fields left out);
- delete: ``delete_method``; no body for DELETE, ``{"deleted": true}`` for other methods;
- headers: ``Content-Type: application/json``, ``Idempotency-Key: {entity}:{key}:{hex}``,
  ``X-Cdcsync-Version: str(version)``, ``X-Cdcsync-Version-Bytes: {hex}`` (hex of
  ``Version.to_bytes()``, whose bytewise order is the version order), with a secret
  ``X-Signature: sha256=<HMAC-SHA256 of the exact body bytes>``, and the configured headers.

Answers: 2xx applied (404 to a delete too: already gone); 409/412 mean the target holds a
newer write, so ``OLDER`` and nothing saved; 429, 5xx, timeouts and connection errors
raise ``HttpUnavailable`` (a ``SinkUnavailable``) carrying ``retry_after_s`` from a
``Retry-After`` header; any other status is a ``SinkRejected`` in that operation's slot.
An echo of the integration's own inbound write is not sent while the last version
delivered for its key is still the base the target's change was made on
(``mappers.lww.echo_held``); it is sent otherwise, so the target ends with the database's
row. With ``external_id_field``, the id found in a 2xx upsert answer is put in the identity map
(with the batch's versions, identities first).

Invariants: operations on one key are sent strictly in order, different keys concurrently
(at most ``max_in_flight`` requests); the secret and the values of secret headers never
appear in errors or logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import quote

from pydantic import SecretStr

from cdc.config import HttpSinkConfig
from cdc.core import tracing
from cdc.core.errors import SinkRejected, SinkUnavailable
from cdc.core.secrets import redact_dsn
from cdc.state.store import StateStore, VersionGuard
from cdc.sync.sinks.base import Outcome, Result
from cdc.sync.sinks.http_client import HttpClient, HttpTransportError
from mappers.entity import EntityDelete, EntityOp, EntityUpsert, Version
from mappers.lww import echo_held

__all__ = ["HttpSink", "HttpUnavailable", "parse_retry_after"]

log = logging.getLogger(__name__)

_EXCERPT: Final = 200
_CONFLICT: Final = frozenset({409, 412})


class HttpUnavailable(SinkUnavailable):
    """The HTTP target is down or throttling; ``retry_after_s`` is its Retry-After, if any."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True, slots=True)
class _Answer:
    """What came back for one request."""

    status: int
    content: bytes
    retry_after: str | None

    @property
    def success(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


# A connection refused or reset, a malformed answer, a timeout: the target is unavailable.
_TRANSPORT_ERRORS = (HttpTransportError, TimeoutError)


@dataclass(slots=True)
class _KeyState:
    """The newest version known for one key while a batch is applied."""

    version: Version | None
    applied: list[tuple[str, Version, bool]] = field(default_factory=list)
    external_id: str | None = None


class HttpSink:
    """A ``Sink`` writing to an HTTP API (see the module docstring)."""

    def __init__(
        self,
        name: str,
        config: HttpSinkConfig,
        *,
        integration: str,
        state: StateStore,
        max_in_flight: int = 16,
    ) -> None:
        self.name = name
        self.config = config
        self.integration = integration
        self.state = state
        self._client: HttpClient | None = None
        self._max_in_flight = max_in_flight
        secret = config.secret.get_secret_value() if config.secret is not None else None
        self._secret = secret.encode() if secret is not None else None
        self._headers: dict[str, str] = {}
        self._hidden: list[str] = [secret] if secret else []
        for header, value in config.headers.items():
            if isinstance(value, SecretStr):
                revealed = value.get_secret_value()
                self._hidden.append(revealed)
            elif isinstance(value, bool):
                revealed = "true" if value else "false"
            else:
                revealed = str(value)
            self._headers[header] = revealed

    async def start(self) -> None:
        if self._client is None:
            # The client holds at most max_in_flight requests at once.
            self._client = HttpClient(limit=self._max_in_flight, timeout_s=self.config.timeout_s)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _request(
        self, method: str, url: str, *, body: bytes | None, headers: dict[str, str] | None
    ) -> _Answer:
        """One request; transport failures and timeouts are raised as they come."""
        if self._client is None:
            raise RuntimeError(f"sink {self.name!r} is not started")
        response = await self._client.request(method, url, body=body, headers=headers)
        return _Answer(response.status, response.content, response.headers.get("retry-after"))

    async def probe(self) -> None:
        """GET ``health_url`` when configured; any error or non-2xx is ``SinkUnavailable``."""
        url = self.config.health_url
        if url is None:
            return
        try:
            answer = await self._request("GET", str(url), body=None, headers=None)
        except _TRANSPORT_ERRORS as exc:
            raise HttpUnavailable(
                f"sink {self.name!r}: health check {redact_dsn(str(url))} failed: "
                f"{self._describe(exc)}"
            ) from None
        if not answer.success:
            raise HttpUnavailable(
                f"sink {self.name!r}: health check answered HTTP {answer.status}",
                retry_after_s=parse_retry_after(answer.retry_after),
            )

    async def holding(self, entity: str, keys: Sequence[str]) -> set[str]:
        held = await self.state.versions(self.integration, entity, keys=keys)
        return {key for key, (_, deleted) in held.items() if not deleted}

    async def apply(self, ops: Sequence[EntityOp]) -> list[Result]:
        """Apply ``ops``; one result per operation, in order (see ``cdc.sync.sinks.base``)."""
        results: list[Result | None] = [None] * len(ops)
        groups: dict[tuple[str, str], list[int]] = {}
        for index, op in enumerate(ops):
            groups.setdefault((op.entity, op.key), []).append(index)
        failure: BaseException | None = None
        async with self.state.guard(self.integration, list(groups)) as guard:
            states = {group: _KeyState(guard.version(*group)) for group in groups}
            tasks = [
                asyncio.create_task(self._apply_key(ops, indexes, states[group], results))
                for group, indexes in groups.items()
            ]
            try:
                if tasks:
                    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    for task in done:
                        error = task.exception()
                        if error is not None:
                            raise error
            except BaseException as exc:  # saved below, raised once the versions commit
                failure = exc
            finally:
                for task in tasks:
                    if not task.done():
                        task.cancel()
                await self._save(guard, states)
        if failure is not None:
            raise failure
        return [r if r is not None else Outcome.DUPLICATE for r in results]

    async def _save(self, guard: VersionGuard, states: dict[tuple[str, str], _KeyState]) -> None:
        # Identities first: a saved version means "never send again", so an id the target
        # gave must already be stored by then.
        identities: dict[str, list[tuple[str, str]]] = {}
        by_entity: dict[str, list[tuple[str, Version, bool]]] = {}
        for (entity, key), state in states.items():
            by_entity.setdefault(entity, []).extend(state.applied)
            if state.external_id is not None:
                identities.setdefault(entity, []).append((key, state.external_id))
        for entity, pairs in identities.items():
            await guard.record_identities(entity, items=pairs)
        for entity, items in by_entity.items():
            if items:
                await guard.save_versions(entity, items=items)

    async def _apply_key(
        self,
        ops: Sequence[EntityOp],
        indexes: list[int],
        state: _KeyState,
        results: list[Result | None],
    ) -> None:
        for index in indexes:
            op = ops[index]
            if op.echo_token and echo_held(op.echo_token, state.version):
                results[index] = Outcome.ECHO
                continue
            if state.version is not None and op.version <= state.version:
                results[index] = Outcome.OLDER if op.version < state.version else Outcome.DUPLICATE
                continue
            result, external_id = await self._send(op)
            results[index] = result
            if external_id is not None:
                state.external_id = external_id
            if result is Outcome.APPLIED:
                state.version = op.version
                state.applied.append((op.key, op.version, isinstance(op, EntityDelete)))

    async def _send(self, op: EntityOp) -> tuple[Result, str | None]:
        """Send one operation: its result, and the target's id for it if the answer gave one."""
        delete = isinstance(op, EntityDelete)
        method = self.config.delete_method if delete else self.config.upsert_method
        url = self.config.url.format(key=quote(op.key, safe=""), entity=quote(op.entity, safe=""))
        if isinstance(op, EntityUpsert):
            body = _encode(op.fields())
        elif method == "DELETE":
            body = b""
        else:
            body = _encode({"deleted": True})
        version_hex = op.version.to_bytes().hex()
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Idempotency-Key": f"{op.entity}:{op.key}:{version_hex}",
            "X-Cdcsync-Version": str(op.version),
            "X-Cdcsync-Version-Bytes": version_hex,
        }
        if self._secret is not None:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["X-Signature"] = f"sha256={digest}"
        tracing.inject_op(op, headers)  # traceparent of the change's trace, when traced
        what = f"{method} {op.entity} {op.key!r}"
        try:
            answer = await self._request(method, url, body=body or None, headers=headers)
        except _TRANSPORT_ERRORS as exc:
            raise HttpUnavailable(
                f"sink {self.name!r}: {what} failed: {self._describe(exc)}"
            ) from None
        except ValueError as exc:  # e.g. a key with a line break cannot go in a header
            return SinkRejected(f"sink {self.name!r}: {what} cannot be sent: {exc}"), None
        status = answer.status
        if answer.success or (delete and status == 404):
            log.debug("sink %s: %s -> HTTP %d", self.name, what, status)
            external_id = self._external_id(answer) if isinstance(op, EntityUpsert) else None
            return Outcome.APPLIED, external_id
        if status in _CONFLICT:
            log.debug("sink %s: %s -> HTTP %d, target holds newer", self.name, what, status)
            return Outcome.OLDER, None
        if status == 429 or status >= 500:
            raise HttpUnavailable(
                f"sink {self.name!r}: {what} answered HTTP {status}",
                retry_after_s=parse_retry_after(answer.retry_after),
            )
        excerpt = self._scrub(answer.text[:_EXCERPT]).strip()
        return SinkRejected(f"sink {self.name!r}: {what} answered HTTP {status}: {excerpt}"), None

    def _external_id(self, answer: _Answer) -> str | None:
        """The target's id for the entity in an upsert's answer, when configured and there."""
        field_name = self.config.external_id_field
        if field_name is None:
            return None
        try:
            document = json.loads(answer.content)
        except ValueError:
            return None
        if isinstance(document, dict) and document.get(field_name) is not None:
            return str(document[field_name])
        return None

    def _describe(self, exc: BaseException) -> str:
        detail = str(exc) or "no answer within the timeout"
        return self._scrub(f"{type(exc).__name__}: {detail}")

    def _scrub(self, text: str) -> str:
        """``text`` with URL credentials, the secret and secret header values hidden."""
        text = redact_dsn(text)
        for hidden in self._hidden:
            text = text.replace(hidden, "***")
        return text


def _encode(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
