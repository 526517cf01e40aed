"""The inbound endpoint: external systems post entity changes, which are queued on Kafka.

``POST|PUT|DELETE /inbound/{integration}/{entity}/{external_id}`` (served by the admin
API's listener) with a JSON body and an ``Idempotency-Key`` header. POST and PUT carry the
entity (validated by the integration's pydantic model: an upsert); DELETE may carry a body
holding only the version field (without one, the time of receipt is the version).

Answers, in the order they are decided:

- 404: no such integration accepting inbound changes, or another entity than its own;
- 413: body larger than ``inbound.max_body_bytes``;
- 401: neither a valid ``X-Signature: sha256=<HMAC-SHA256 of the body>`` (``inbound.secret``)
  nor a valid ``Authorization: Bearer`` (``inbound.token``);
- 400: an external id that is not 1 to 200 characters of valid UTF-8 without control,
  format, surrogate or line-separator characters; no ``Idempotency-Key`` (or one with such
  characters); a body that is not a JSON object; an ``X-Cdcsync-Base-Version`` that is
  not the hex of an ``X-Cdcsync-Version-Bytes`` value (or empty);
- 422: the body does not validate, or holds text the database cannot store (NUL, a lone
  surrogate); ``fields`` names each offending field and why;
- 503: Kafka did not acknowledge in ``inbound.enqueue_timeout_s`` (retry with the same key);
- 202: the change is durably on the integration's inbound topic (acks=all, idempotent
  producer, delivery report received).

Invariants: 202 is sent only after Kafka acknowledged the record; every other answer means
"not accepted" and is safe to retry with the same ``Idempotency-Key`` (the apply step
applies one key at most once, see ``cdc.inbound.apply``). Authentication is checked before
the body is parsed. Responses and logs never carry a secret, a token or a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import struct
import threading
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cdc.config import Config
from cdc.config.inbound import InboundConfig
from cdc.config.names import inbound_integrations, inbound_topic
from cdc.core import tracing
from cdc.core.errors import BrokerUnavailable, FatalError, MappingError, first_line
from cdc.core.histogram import LatencyHistogram
from cdc.kafka.publisher import Publisher, producer_config
from mappers.entity import Version, microseconds
from mappers.inbound import InboundChange, Op, load_inbound_model

__all__ = [
    "IDEMPOTENCY_KEY_MAX",
    "InboundEndpoint",
    "InboundRejected",
    "InboundRoute",
    "InboundStats",
    "sign",
]

log = logging.getLogger("cdcsync.inbound")

IDEMPOTENCY_KEY_MAX = 200
EXTERNAL_ID_MAX = 200
# Unicode categories refused in ids and keys: controls (C0, C1, DEL), format characters
# (zero-width, bidi overrides), surrogates, private use and unassigned; line separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
PATH = "/inbound/{integration}/{entity}/{external_id}"


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class InboundRejected(FatalError):
    """A request that is not accepted; ``status`` and ``body`` are the answer."""

    def __init__(
        self, status: int, error: str, *, fields: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.fields = fields

    def response(self) -> Response:
        body: dict[str, Any] = {"error": self.error}
        if self.fields is not None:
            body["fields"] = self.fields
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        if self.status == 503:
            headers = {"Retry-After": "1"}
        return JSONResponse(body, status_code=self.status, headers=headers)


class InboundRoute:
    """Authentication and validation for one integration: pure, no I/O."""

    def __init__(self, name: str, config: InboundConfig) -> None:
        self.name = name
        self.config = config
        self.model: type[BaseModel] = load_inbound_model(config.model)
        self._secret = None if config.secret is None else config.secret.get_secret_value()
        self._token = None if config.token is None else config.token.get_secret_value()

    def authenticate(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise 401 unless the body's signature or the bearer token is right."""
        if self._secret is not None:
            given = headers.get("x-signature", "")
            if given and hmac.compare_digest(
                given.encode(), sign(self._secret.encode(), body).encode()
            ):
                return
        if self._token is not None:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), self._token.encode()
            ):
                return
        wanted = " or ".join(
            what
            for what, configured in (
                ("X-Signature: sha256=<HMAC-SHA256 of the body>", self._secret),
                ("Authorization: Bearer <token>", self._token),
            )
            if configured is not None
        )
        raise InboundRejected(401, f"{self.name}: missing or wrong credentials (send {wanted})")

    def parse(
        self,
        *,
        method: str,
        entity: str,
        external_id: str,
        headers: Mapping[str, str],
        body: bytes,
        now_us: int,
    ) -> InboundChange:
        """The change a request describes, or ``InboundRejected`` (400/404/422)."""
        cfg = self.config
        if entity != cfg.entity:
            raise InboundRejected(404, f"{self.name} accepts entity {cfg.entity!r}, not {entity!r}")
        if not external_id or len(external_id) > EXTERNAL_ID_MAX:
            raise InboundRejected(400, f"external id: 1 to {EXTERNAL_ID_MAX} characters")
        bad = _unprintable(external_id)
        if bad is not None:
            raise InboundRejected(400, f"external id: {bad}")
        key = headers.get("idempotency-key", "").strip()
        if not key or len(key) > IDEMPOTENCY_KEY_MAX:
            raise InboundRejected(
                400, f"Idempotency-Key header: required, 1 to {IDEMPOTENCY_KEY_MAX} characters"
            )
        bad = _unprintable(key)
        if bad is not None:
            raise InboundRejected(400, f"Idempotency-Key header: {bad}")
        base = _base_version(headers.get("x-cdcsync-base-version"))
        data = _json_object(body, optional=method == "DELETE")
        problems = _unstorable_text(data)
        if problems:
            summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
            raise InboundRejected(422, f"invalid {entity}: {summary}", fields=problems)
        if method == "DELETE":
            fields: dict[str, Any] = {}
            raw = data.get(cfg.version_field)
            if raw is not None:
                fields[cfg.version_field] = raw
            unknown = sorted(set(data) - {cfg.version_field})
            if unknown:
                raise InboundRejected(
                    422,
                    f"invalid {entity} delete: a delete body holds only {cfg.version_field!r}",
                    fields=[{"field": name, "message": "not allowed"} for name in unknown],
                )
            version_us = now_us if raw is None else self._version(raw, entity, now_us=now_us)
            op: Op = "delete"
        else:
            try:
                model = self.model.model_validate(data)
            except ValidationError as exc:
                problems = [
                    {
                        "field": ".".join(str(p) for p in err["loc"]) or "(body)",
                        "message": err["msg"],
                    }
                    for err in exc.errors(include_input=False, include_url=False)
                ]
                summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
                raise InboundRejected(
                    422, f"invalid {entity}: {summary}", fields=problems
                ) from None
            fields = model.model_dump(mode="json")
            raw = getattr(model, cfg.version_field, None)
            if raw is None:
                raise InboundRejected(
                    422,
                    f"invalid {entity}: version field {cfg.version_field!r} is required",
                    fields=[{"field": cfg.version_field, "message": "required"}],
                )
            version_us = self._version(raw, entity, now_us=now_us)
            op = "upsert"
        return InboundChange(
            integration=self.name,
            entity=entity,
            external_id=external_id,
            op=op,
            version_us=version_us,
            idempotency_key=key,
            received_at_us=now_us,
            fields=fields,
            base_version=base,
        )

    def _version(self, raw: object, entity: str, *, now_us: int) -> int:
        field_name = self.config.version_field
        try:
            version = microseconds(raw, column=field_name)
        except MappingError as exc:
            raise InboundRejected(
                422, f"invalid {entity}: {exc}", fields=[{"field": field_name, "message": str(exc)}]
            ) from None
        limit = self.config.max_future_s
        if limit is not None and version > now_us + int(limit * 1_000_000):
            message = f"more than {limit:g}s in the future (is the sender's clock right?)"
            raise InboundRejected(
                422,
                f"invalid {entity}: {field_name}: {message}",
                fields=[{"field": field_name, "message": message}],
            )
        return version


def _base_version(raw: str | None) -> str | None:
    """The ``X-Cdcsync-Base-Version`` header: the ``X-Cdcsync-Version-Bytes`` of the last
    write of ours the sender held when it made the change ("" or "none": none yet)."""
    if raw is None:
        return None
    text = raw.strip().lower()
    if text in ("", "none"):
        return ""
    try:
        Version.from_bytes(bytes.fromhex(text))
    except (ValueError, struct.error):
        raise InboundRejected(
            400,
            "X-Cdcsync-Base-Version header: not the hex of an X-Cdcsync-Version-Bytes value",
        ) from None
    return text


def _unprintable(text: str) -> str | None:
    """Why ``text`` cannot be an id (a control, surrogate or line-separator character)."""
    for index, char in enumerate(text):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return f"character {index + 1} is U+{ord(char):04X}, a control character"
    return None


def _unstorable_text(value: Any, path: str = "") -> list[dict[str, str]]:
    """Each string (or object key) in ``value`` that the source database cannot store."""
    problems: list[dict[str, str]] = []
    if isinstance(value, str):
        if "\x00" in value:
            problems.append({"field": path or "(body)", "message": "contains NUL (U+0000)"})
        elif any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            problems.append({"field": path or "(body)", "message": "contains a lone surrogate"})
    elif isinstance(value, dict):
        for name, item in value.items():
            where = f"{path}.{name}" if path else str(name)
            problems.extend(_unstorable_text(name, where + " (name)"))
            problems.extend(_unstorable_text(item, where))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems.extend(_unstorable_text(item, f"{path}.{index}" if path else str(index)))
    return problems


def raw_path_segment(scope: Mapping[str, Any], index: int) -> str | None:
    """Segment ``index`` of the request's raw path, percent-decoded as strict UTF-8.

    The server's decoded path turns invalid UTF-8 into U+FFFD, so that ``%ff%fe`` and
    ``%fe%ff`` would name the same id; this raises ``InboundRejected`` (400) instead.
    None when the server gave no raw path.
    """
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes | bytearray):
        return None
    segments = bytes(raw).split(b"?", 1)[0].split(b"/")
    try:
        return unquote_to_bytes(segments[index]).decode("utf-8")
    except IndexError:
        return None
    except UnicodeDecodeError as exc:
        raise InboundRejected(
            400, f"external id: not valid UTF-8 (byte {exc.start + 1} of the decoded id)"
        ) from None


def _json_object(body: bytes, *, optional: bool) -> dict[str, Any]:
    if not body.strip():
        if optional:
            return {}
        raise InboundRejected(400, "body: a JSON object is required")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InboundRejected(400, f"body: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InboundRejected(400, "body: must be a JSON object")
    return data


@dataclass
class InboundStats:
    """Counters of the endpoint, per integration."""

    accepted: int = 0
    rejected: dict[int, int] = field(default_factory=dict)
    accept_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


class _Enqueuer:
    """An acks=all idempotent producer whose deliveries can be awaited."""

    def __init__(self, config: Config) -> None:
        kafka = config.kafka
        props: dict[str, Any] = {"linger.ms": 1}
        props.update(kafka.client_properties())
        props["delivery.timeout.ms"] = kafka.delivery_timeout_ms
        self._config = config
        self._publisher = Publisher(producer_config(kafka.bootstrap_servers, props))
        self._ready: set[str] = set()
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None

    async def enqueue(
        self, topic: str, key: bytes, value: bytes, *, timeout_s: float
    ) -> tuple[int, int]:
        """Produce one record and wait for Kafka's acknowledgement: (partition, offset)."""
        if topic not in self._ready:
            kafka = self._config.kafka
            await asyncio.to_thread(
                self._publisher.ensure_topics,
                [topic],
                partitions=kafka.topic_partitions,
                replication_factor=kafka.topic_replication_factor,
            )
            self._ready.add(topic)
        self._start_poller()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, int]] = loop.create_future()

        def delivered(err: Any, msg: Any) -> None:
            loop.call_soon_threadsafe(_settle, done, err, msg)

        # The request's trace (cdc.core.tracing), continued by the inbound apply.
        self._publisher.produce(topic, key, value, delivered, headers=tracing.kafka_headers())
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            raise BrokerUnavailable(
                f"{topic}: no acknowledgement from Kafka within {timeout_s:g}s"
            ) from None

    def _start_poller(self) -> None:
        if self._poller is None:
            self._poller = threading.Thread(
                target=self._poll, name="cdcsync-inbound-producer", daemon=True
            )
            self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._publisher.poll(0.05)

    def close(self) -> None:
        self._closed.set()
        if self._poller is not None:
            self._poller.join(5)
        self._publisher.flush(5)


def _settle(done: asyncio.Future[tuple[int, int]], err: Any, msg: Any) -> None:
    if done.done():
        return
    if err is not None:
        done.set_exception(BrokerUnavailable(f"Kafka refused the record: {err}"))
    else:
        done.set_result((int(msg.partition()), int(msg.offset())))


class InboundEndpoint:
    """The inbound routes of the admin API; see the module docstring."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.routes_by_name = {
            name: InboundRoute(name, cfg) for name, cfg in inbound_integrations(config).items()
        }
        self.stats = {name: InboundStats() for name in self.routes_by_name}
        self._enqueuer: _Enqueuer | None = None

    @classmethod
    def from_config(cls, config: Config) -> InboundEndpoint | None:
        """An endpoint when some integration accepts inbound changes, else None."""
        return cls(config) if inbound_integrations(config) else None

    def routes(self) -> list[Route]:
        return [Route(PATH, self.handle, methods=["POST", "PUT", "DELETE"])]

    async def handle(self, request: Request) -> Response:
        started = time.monotonic()
        name = request.path_params["integration"]
        route = self.routes_by_name.get(name)
        if route is None:
            return InboundRejected(
                404, f"integration {name!r} does not accept inbound changes"
            ).response()
        stats = self.stats[name]
        try:
            with tracing.server_span(f"inbound {name}", request.headers):
                change = await self._accept(request, route)
        except InboundRejected as exc:
            stats.rejected[exc.status] = stats.rejected.get(exc.status, 0) + 1
            if exc.status >= 500:
                log.warning("%s: inbound change not accepted: %s", name, exc.error)
            return exc.response()
        stats.accepted += 1
        stats.accept_latency.observe_us(int((time.monotonic() - started) * 1_000_000))
        return JSONResponse(
            {"accepted": True, "idempotency_key": change.idempotency_key}, status_code=202
        )

    async def _accept(self, request: Request, route: InboundRoute) -> InboundChange:
        limit = route.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise InboundRejected(413, f"body larger than {limit} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise InboundRejected(413, f"body larger than {limit} bytes")
        headers = {k.lower(): v for k, v in request.headers.items()}
        route.authenticate(headers, body)
        external_id = raw_path_segment(request.scope, -1)
        change = route.parse(
            method=request.method,
            entity=request.path_params["entity"],
            external_id=request.path_params["external_id"] if external_id is None else external_id,
            headers=headers,
            body=body,
            now_us=time.time_ns() // 1000,
        )
        if self._enqueuer is None:
            self._enqueuer = _Enqueuer(self.config)
        try:
            await self._enqueuer.enqueue(
                inbound_topic(self.config, route.name),
                change.partition_key,
                change.to_json(),
                timeout_s=route.config.enqueue_timeout_s,
            )
        except BrokerUnavailable as exc:
            raise InboundRejected(
                503, f"not accepted, retry with the same Idempotency-Key: {first_line(exc)}"
            ) from None
        return change

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "accepted": s.accepted,
                "rejected": {str(k): v for k, v in sorted(s.rejected.items())},
                "accept_latency_p99_s": s.accept_latency.quantile_s(0.99),
            }
            for name, s in self.stats.items()
        }

    def close(self) -> None:
        if self._enqueuer is not None:
            with contextlib.suppress(Exception):
                self._enqueuer.close()
            self._enqueuer = None
