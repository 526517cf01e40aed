"""A small but real HTTP "CRM": the target of the HTTP sink in tests and in ``cdcsync demo``.

``CrmServer(secret=...)`` runs the starlette app of ``create_app`` with uvicorn in a
background thread on 127.0.0.1 and a free port (``.url``); ``start()``/``stop()`` or use it
as a context manager. Contacts live in memory in a ``CrmStore`` (thread-safe).

Routes:

- ``PUT /contacts/{key}``: JSON object body; merges the fields into the contact (fields
  absent from the body are kept), assigns ``crm-<n>`` on first create and answers
  ``{"id": ..., **fields}`` (201 on create, 200 on update).
- ``DELETE /contacts/{key}``: leaves a tombstone with its version; 404 if not live.
- ``GET /contacts`` (live contacts), ``GET /contacts/{key}``, ``GET /health``.
- ``CrmStore.edit``: a change made in the CRM itself (to be posted to cdcsync's inbound
  endpoint with its ``updated_at`` and, as ``X-Cdcsync-Base-Version``, the version of
  cdcsync's it was made on). It leaves the kept cdcsync version as it is: which of an edit
  and a concurrent source write wins is decided by the database, which sends the winner.
- ``POST /_faults`` ``{"status": 500, "count": N, "retry_after": s}`` (the next N writes or
  health checks fail) or ``{"reject_keys": ["42"], "status": 400}`` (writes to those keys
  always fail); ``DELETE /_faults`` clears; ``GET /_stats`` counts requests, applied,
  duplicates, rejected, older.
- ``CrmStore.traceparents()``: the W3C ``traceparent`` of the latest writes (key, value),
  so that tests can follow a change's trace into the target.

Invariants of the writes (PUT and DELETE):

- With a secret, ``X-Signature: sha256=<HMAC-SHA256 of the body>`` is required (401).
- An ``Idempotency-Key`` seen before returns the stored response; nothing is re-applied.
- ``X-Cdcsync-Version-Bytes`` (hex of ``Version.to_bytes()``, bytewise ordered) is kept per
  contact, tombstones included: an older write gets 409 and changes nothing, an equal one
  is a duplicate. Writes without that header are applied unconditionally.
- ``check_versions=False`` (``CrmStore``, ``CrmServer``) turns the two rules above off:
  the CRM then applies every write in arrival order, trusting the sink completely, as a
  naive target does; the last-writer-wins tests use it so the sink's ordering is observed.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["Contact", "CrmServer", "CrmStats", "CrmStore", "create_app"]


@dataclass(slots=True)
class Contact:
    """A contact, or its tombstone (``deleted``), with the version of its last write."""

    key: str
    id: str
    fields: dict[str, Any]
    version: str | None
    version_bytes: bytes | None
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "id": self.id,
            "version": self.version,
            "version_bytes": None if self.version_bytes is None else self.version_bytes.hex(),
            "deleted": self.deleted,
            "fields": dict(self.fields),
        }


@dataclass(frozen=True, slots=True)
class CrmStats:
    requests: int
    applied: int
    duplicates: int
    rejected: int
    older: int


@dataclass(frozen=True, slots=True)
class Answer:
    """A response decided by the store: status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Faults:
    status: int = 500
    count: int = 0
    retry_after: str | None = None
    reject_keys: set[str] = field(default_factory=set)
    reject_status: int = 400


class CrmStore:
    """The CRM's state and write rules; every method is atomic under one lock."""

    def __init__(self, *, secret: str | None = None, check_versions: bool = True) -> None:
        self.secret = secret
        self.check_versions = check_versions
        self._lock = threading.Lock()
        self._contacts: dict[str, Contact] = {}
        self._answers: dict[str, Answer] = {}
        self._ids = itertools.count(1)
        self._faults = _Faults()
        self._counts = {"requests": 0, "applied": 0, "duplicates": 0, "rejected": 0, "older": 0}
        self._traceparents: deque[tuple[str, str]] = deque(maxlen=1000)

    # ------------------------------------------------------------- inspection

    def contacts(self) -> dict[str, Contact]:
        """Live contacts by key (copies)."""
        with self._lock:
            return {
                k: Contact(c.key, c.id, dict(c.fields), c.version, c.version_bytes, c.deleted)
                for k, c in self._contacts.items()
                if not c.deleted
            }

    def contact(self, key: str) -> Contact | None:
        """Contact ``key`` or its tombstone (a copy), None if never written."""
        with self._lock:
            c = self._contacts.get(key)
            if c is None:
                return None
            return Contact(c.key, c.id, dict(c.fields), c.version, c.version_bytes, c.deleted)

    def stats(self) -> CrmStats:
        with self._lock:
            return CrmStats(**self._counts)

    # ------------------------------------------------------------- faults

    def set_faults(
        self,
        *,
        status: int | None = None,
        count: int | None = None,
        retry_after: float | str | None = None,
        reject_keys: list[str] | None = None,
    ) -> None:
        with self._lock:
            if reject_keys is not None:
                self._faults.reject_keys = {str(k) for k in reject_keys}
                self._faults.reject_status = status or 400
            if count is not None:
                self._faults.count = count
                self._faults.status = status or 500
                self._faults.retry_after = None if retry_after is None else str(retry_after)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()

    def injected_failure(self) -> Answer | None:
        """Consume one injected failure, if any are pending."""
        with self._lock:
            return self._take_failure()

    def _take_failure(self) -> Answer | None:
        faults = self._faults
        if faults.count <= 0:
            return None
        faults.count -= 1
        headers = {} if faults.retry_after is None else {"Retry-After": faults.retry_after}
        return Answer(faults.status, {"error": "injected failure"}, headers)

    def edit(self, key: str, fields: dict[str, Any]) -> Contact | None:
        """A change made in the CRM itself (a support agent's edit): the fields are merged
        into live contact ``key``, which is returned (a copy, with the cdcsync version the
        edit was made on: the ``X-Cdcsync-Base-Version`` to post); None if it is not live.
        The caller posts the change to cdcsync's inbound endpoint."""
        with self._lock:
            held = self._contacts.get(key)
            if held is None or held.deleted:
                return None
            held.fields = {**held.fields, **fields}
            return Contact(held.key, held.id, dict(held.fields), held.version, held.version_bytes)

    def traceparents(self) -> list[tuple[str, str]]:
        """(key, traceparent) of the latest writes that carried one, oldest first."""
        with self._lock:
            return list(self._traceparents)

    def saw_traceparent(self, key: str, traceparent: str | None) -> None:
        if traceparent is not None:
            with self._lock:
                self._traceparents.append((key, traceparent))

    # ------------------------------------------------------------- writes

    def write(
        self,
        key: str,
        *,
        delete: bool,
        body: bytes,
        signature: str | None,
        idempotency_key: str | None,
        version: str | None,
        version_hex: str | None,
    ) -> Answer:
        """Apply one PUT (``delete=False``) or DELETE under the rules of the module docstring."""
        with self._lock:
            self._counts["requests"] += 1
            failure = self._take_failure()
            if failure is not None:
                return failure
            if self.secret is not None and not _signature_ok(self.secret, body, signature):
                self._counts["rejected"] += 1
                return Answer(401, {"error": "bad or missing X-Signature"})
            if key in self._faults.reject_keys:
                self._counts["rejected"] += 1
                return Answer(self._faults.reject_status, {"error": f"contact {key} refused"})
            if (
                self.check_versions
                and idempotency_key is not None
                and idempotency_key in self._answers
            ):
                self._counts["duplicates"] += 1
                return self._answers[idempotency_key]
            try:
                version_bytes = None if version_hex is None else bytes.fromhex(version_hex)
            except ValueError:
                self._counts["rejected"] += 1
                return Answer(400, {"error": "X-Cdcsync-Version-Bytes is not hex"})
            fields: dict[str, Any] = {}
            if not delete:
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                if not isinstance(parsed, dict):
                    self._counts["rejected"] += 1
                    return Answer(400, {"error": "the body must be a JSON object"})
                fields = parsed
            answer = self._apply(
                key, delete=delete, fields=fields, version=version, version_bytes=version_bytes
            )
            if idempotency_key is not None and answer.status < 300:
                self._answers[idempotency_key] = answer
            return answer

    def _apply(
        self,
        key: str,
        *,
        delete: bool,
        fields: dict[str, Any],
        version: str | None,
        version_bytes: bytes | None,
    ) -> Answer:
        held = self._contacts.get(key)
        if (
            self.check_versions
            and held is not None
            and version_bytes is not None
            and held.version_bytes is not None
        ):
            if version_bytes < held.version_bytes:
                self._counts["older"] += 1
                return Answer(409, {"error": "a newer version is stored", "version": held.version})
            if version_bytes == held.version_bytes:
                self._counts["duplicates"] += 1
                if held.deleted:
                    return Answer(404, {"id": held.id, "deleted": True})
                return Answer(200, {"id": held.id, **held.fields})
        if delete:
            if held is None:
                held = Contact(key, "", {}, version, version_bytes, deleted=True)
                self._contacts[key] = held
                return Answer(404, {"error": f"contact {key} not found"})
            was_live = not held.deleted
            held.deleted, held.fields = True, {}
            held.version, held.version_bytes = version, version_bytes
            if not was_live:
                return Answer(404, {"error": f"contact {key} not found"})
            self._counts["applied"] += 1
            return Answer(200, {"id": held.id, "deleted": True})
        created = held is None or held.deleted or not held.id
        if held is None:
            held = Contact(key, "", {}, version, version_bytes)
            self._contacts[key] = held
        if not held.id:
            held.id = f"crm-{next(self._ids)}"
        held.fields = fields if held.deleted else {**held.fields, **fields}
        held.deleted = False
        held.version, held.version_bytes = version, version_bytes
        self._counts["applied"] += 1
        return Answer(201 if created else 200, {"id": held.id, **held.fields})


def _signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    if header is None or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))


def _json(answer: Answer) -> JSONResponse:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def create_app(store: CrmStore) -> Starlette:
    """The CRM's HTTP routes over ``store`` (see the module docstring)."""

    async def write(request: Request) -> Response:
        key = request.path_params["key"]
        headers = request.headers
        store.saw_traceparent(key, headers.get("traceparent"))
        answer = store.write(
            key,
            delete=request.method == "DELETE",
            body=await request.body(),
            signature=headers.get("x-signature"),
            idempotency_key=headers.get("idempotency-key"),
            version=headers.get("x-cdcsync-version"),
            version_hex=headers.get("x-cdcsync-version-bytes"),
        )
        return _json(answer)

    async def list_contacts(request: Request) -> Response:
        return JSONResponse({"contacts": [c.to_json() for c in store.contacts().values()]})

    async def get_contact(request: Request) -> Response:
        contact = store.contact(request.path_params["key"])
        if contact is None or contact.deleted:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(contact.to_json())

    async def health(request: Request) -> Response:
        failure = store.injected_failure()
        return _json(failure) if failure is not None else JSONResponse({"status": "ok"})

    async def set_faults(request: Request) -> Response:
        try:
            spec = await request.json()
        except ValueError:
            spec = None
        if not isinstance(spec, dict):
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        store.set_faults(
            status=spec.get("status"),
            count=spec.get("count", None if "reject_keys" in spec else 1),
            retry_after=spec.get("retry_after"),
            reject_keys=spec.get("reject_keys"),
        )
        return JSONResponse({"ok": True})

    async def clear_faults(request: Request) -> Response:
        store.clear_faults()
        return JSONResponse({"ok": True})

    async def stats(request: Request) -> Response:
        s = store.stats()
        return JSONResponse(
            {
                "requests": s.requests,
                "applied": s.applied,
                "duplicates": s.duplicates,
                "rejected": s.rejected,
                "older": s.older,
            }
        )

    return Starlette(
        routes=[
            Route("/contacts", list_contacts, methods=["GET"]),
            Route("/contacts/{key:path}", write, methods=["PUT", "DELETE"]),
            Route("/contacts/{key:path}", get_contact, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/_faults", set_faults, methods=["POST"]),
            Route("/_faults", clear_faults, methods=["DELETE"]),
            Route("/_stats", stats, methods=["GET"]),
        ]
    )


class CrmServer:
    """The CRM served by uvicorn in a background thread on ``host`` and a free port."""

    def __init__(
        self, *, secret: str | None = None, host: str = "127.0.0.1", check_versions: bool = True
    ) -> None:
        self.store = CrmStore(secret=secret, check_versions=check_versions)
        self.host = host
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the CRM server is not started")
        return f"http://{self.host}:{self.port}"

    def start(self, *, timeout_s: float = 10.0) -> Self:
        if self._server is not None:
            return self
        # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
        # proto says TCP; with proto 0 every answer waited for a delayed ACK (about 40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.store),
            log_level="warning",
            lifespan="off",
            ws="none",
            http="httptools",  # a C parser: about a fifth less CPU per request than h11
            access_log=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="crm-server", daemon=True
        )
        self._socket, self._server, self._thread = sock, server, thread
        thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the CRM server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
