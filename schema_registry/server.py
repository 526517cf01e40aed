"""The registry's REST API (Confluent Schema Registry compatible): thin starlette routes, ``serve``.

The routes only translate HTTP to ``RegistryService`` calls and back. Choices
that follow Confluent's behaviour as real clients rely on it:

- routing uses the RAW request path, split on ``/`` and each segment
  percent-decoded, so a subject may contain ``/`` sent as ``%2F``;
- content negotiation as Confluent's (Jersey's) does it: the answer's type is
  the best of ``application/vnd.schemaregistry.v1+json`` (qs 1),
  ``application/vnd.schemaregistry+json`` (qs 0.9) and ``application/json``
  (qs 0.5) for the request's ``Accept`` (client q first, then qs); no
  ``Accept`` or ``*/*`` gets the first; an ``Accept`` none of them satisfies
  is 406 / 406. A request body's ``Content-Type`` must be one of those three
  or ``application/octet-stream`` (or absent), else 415 / 415;
- errors are exactly ``{"error_code": int, "message": str}``: the service's
  Confluent codes (HTTP 404 for 404xx, 422 for 422xx, 409, 500 for 50001);
  a body that is not JSON is HTTP 400 / error_code 400 (Confluent's JSON
  parse mapper); valid JSON of the wrong shape (not an object, a ``schema``
  that is not a string, an ``id`` that is not a number) is 422 / 422
  (Confluent's JSON mapping mapper); a missing or empty ``schema`` is 42201;
  an id in the path that is not a number is 404 / 404 (Jersey's answer for
  an unconvertible path parameter); a body over ``max_body_bytes`` is 413 / 413,
  an unknown route 404 / 404, a known path with another method 405 / 405;
- query booleans compare case-insensitively with ``true``;
- optional HTTP basic auth: a missing or wrong ``Authorization`` answers 401
  with ``WWW-Authenticate``; credentials are compared in constant time and
  never logged;
- storage calls are blocking and run in starlette's thread pool.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

from schema_registry.schemas import AVRO, Reference
from schema_registry.service import (
    RegistryService,
    RegistryServiceError,
    SchemaInfo,
    SchemaRequest,
    VersionInfo,
)
from schema_registry.storage_url import open_storage

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


class HttpProblem(Exception):
    """An error answered before reaching the service (bad body, auth, size, route)."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class Raw:
    """A response body sent as is (the ``.../schema`` endpoints answer the bare schema)."""

    text: str


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler sees: the service, the decoded path parameters, query and JSON body."""

    service: RegistryService
    params: tuple[str, ...]
    query: dict[str, str]
    body: Any

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").strip().lower() == "true"

    def body_object(self) -> dict[str, Any]:
        if not isinstance(self.body, dict):
            raise HttpProblem(422, 422, "The request body must be a JSON object")
        return self.body

    def schema_request(self) -> SchemaRequest:
        body = self.body_object()
        text = body.get("schema")
        if text is not None and not isinstance(text, str):
            raise HttpProblem(422, 422, "'schema' must be a JSON string holding the schema")
        if not text or not text.strip():
            raise RegistryServiceError(
                "Invalid schema: the 'schema' field is missing or empty",
                error_code=42201,
                status=422,
            )
        return SchemaRequest(
            schema=text,
            schema_type=_optional_str(body.get("schemaType")),
            references=_references(body.get("references")),
            schema_id=_optional_int(body.get("id"), "id"),
            version=_optional_int(body.get("version"), "version"),
        )


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _optional_int(value: object, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise HttpProblem(422, 422, f"'{name}' must be an integer")
    return value if value > 0 else None


def _references(value: object) -> tuple[Reference, ...]:
    if value is None:
        return ()
    try:
        assert isinstance(value, list)
        return tuple(Reference(str(r["name"]), str(r["subject"]), int(r["version"])) for r in value)
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise RegistryServiceError(
            "Invalid schema: 'references' must be a list of {name, subject, version}",
            error_code=42201,
            status=422,
        ) from exc


def _version(info: VersionInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "subject": info.subject,
        "version": info.version,
        "id": info.schema_id,
        "schema": info.schema,
    }
    if info.schema_type != AVRO:
        out["schemaType"] = info.schema_type
    if info.references:
        out["references"] = [r.to_json() for r in info.references]
    return out


def _schema(info: SchemaInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"schema": info.schema}
    if info.schema_type != AVRO:
        out["schemaType"] = info.schema_type
    if info.references:
        out["references"] = [r.to_json() for r in info.references]
    return out


def _schema_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise HttpProblem(404, 404, "HTTP 404 Not Found") from None


# ------------------------------------------------------------------ handlers (blocking)


def root(c: Call) -> object:
    return {}


def schema_types(c: Call) -> object:
    return ["JSON", "AVRO"]


def contexts(c: Call) -> object:
    return ["."]


def schema_by_id(c: Call) -> object:
    return _schema(c.service.schema_by_id(_schema_id(c.params[0])))


def raw_schema_by_id(c: Call) -> object:
    return Raw(c.service.schema_by_id(_schema_id(c.params[0])).schema)


def versions_of_id(c: Call) -> object:
    rows = c.service.versions_of_schema(_schema_id(c.params[0]), deleted=c.flag("deleted"))
    return [{"subject": r.subject, "version": r.version} for r in rows]


def subjects_of_id(c: Call) -> object:
    return c.service.subjects_of_schema(_schema_id(c.params[0]), deleted=c.flag("deleted"))


def _int_param(c: Call, name: str, default: int) -> int:
    text = c.query.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise HttpProblem(404, 404, f"HTTP 404 Not Found: {name} must be an integer") from None


def list_schemas(c: Call) -> object:
    infos = c.service.list_schemas(
        prefix=c.query.get("subjectPrefix", ""),
        deleted=c.flag("deleted"),
        latest_only=c.flag("latestOnly"),
        offset=_int_param(c, "offset", 0),
        limit=_int_param(c, "limit", -1),
    )
    return [_version(info) for info in infos]


def list_subjects(c: Call) -> object:
    return c.service.subjects(
        prefix=c.query.get("subjectPrefix", ""),
        deleted=c.flag("deleted"),
        deleted_only=c.flag("deletedOnly"),
    )


def list_versions(c: Call) -> object:
    return c.service.versions(c.params[0], deleted=c.flag("deleted"))


def get_version(c: Call) -> object:
    return _version(c.service.get_version(c.params[0], c.params[1], deleted=c.flag("deleted")))


def raw_version_schema(c: Call) -> object:
    return Raw(c.service.get_version(c.params[0], c.params[1], deleted=c.flag("deleted")).schema)


def referenced_by(c: Call) -> object:
    return c.service.referenced_by(c.params[0], c.params[1])


def register(c: Call) -> object:
    request = c.schema_request()
    return {"id": c.service.register(c.params[0], request, normalize=c.flag("normalize"))}


def lookup(c: Call) -> object:
    info = c.service.lookup(
        c.params[0], c.schema_request(), normalize=c.flag("normalize"), deleted=c.flag("deleted")
    )
    return _version(info)


def delete_subject(c: Call) -> object:
    return c.service.delete_subject(c.params[0], permanent=c.flag("permanent"))


def delete_version(c: Call) -> object:
    return c.service.delete_version(c.params[0], c.params[1], permanent=c.flag("permanent"))


def _compatibility(c: Call, spec: str | None) -> object:
    result = c.service.test_compatibility(c.params[0], c.schema_request(), spec=spec)
    out: dict[str, Any] = {"is_compatible": result.compatible}
    if c.flag("verbose"):
        out["messages"] = list(result.messages)
    return out


def compatibility_version(c: Call) -> object:
    return _compatibility(c, c.params[1])


def compatibility_all(c: Call) -> object:
    return _compatibility(c, None)


def _subject(c: Call) -> str | None:
    return c.params[0] if c.params else None


def get_config(c: Call) -> object:
    level = c.service.get_config(_subject(c), default_to_global=c.flag("defaultToGlobal"))
    return {"compatibilityLevel": level.value}


def put_config(c: Call) -> object:
    body = c.body_object()
    value = body.get("compatibility", body.get("compatibilityLevel"))
    level = c.service.set_config(_subject(c), value if isinstance(value, str) else repr(value))
    return {"compatibility": level.value}


def delete_config(c: Call) -> object:
    return {"compatibilityLevel": c.service.delete_config(_subject(c)).value}


def get_mode(c: Call) -> object:
    return {"mode": c.service.get_mode(_subject(c), default_to_global=c.flag("defaultToGlobal"))}


def put_mode(c: Call) -> object:
    value = c.body_object().get("mode")
    mode = value if isinstance(value, str) else repr(value)
    return {"mode": c.service.set_mode(_subject(c), mode, force=c.flag("force"))}


def delete_mode(c: Call) -> object:
    return {"mode": c.service.delete_mode(_subject(c))}


Handler = Callable[[Call], object]
V = "*"  # a path parameter
ROUTES: list[tuple[str, tuple[str, ...], Handler]] = [
    ("GET", (), root),
    ("GET", ("schemas",), list_schemas),
    ("GET", ("schemas", "types"), schema_types),
    ("GET", ("contexts",), contexts),
    ("GET", ("schemas", "ids", V), schema_by_id),
    ("GET", ("schemas", "ids", V, "schema"), raw_schema_by_id),
    ("GET", ("schemas", "ids", V, "versions"), versions_of_id),
    ("GET", ("schemas", "ids", V, "subjects"), subjects_of_id),
    ("GET", ("subjects",), list_subjects),
    ("POST", ("subjects", V), lookup),
    ("DELETE", ("subjects", V), delete_subject),
    ("GET", ("subjects", V, "versions"), list_versions),
    ("POST", ("subjects", V, "versions"), register),
    ("GET", ("subjects", V, "versions", V), get_version),
    ("DELETE", ("subjects", V, "versions", V), delete_version),
    ("GET", ("subjects", V, "versions", V, "schema"), raw_version_schema),
    ("GET", ("subjects", V, "versions", V, "referencedby"), referenced_by),
    ("POST", ("compatibility", "subjects", V, "versions", V), compatibility_version),
    ("POST", ("compatibility", "subjects", V, "versions"), compatibility_all),
    ("GET", ("config",), get_config),
    ("PUT", ("config",), put_config),
    ("DELETE", ("config",), delete_config),
    ("GET", ("config", V), get_config),
    ("PUT", ("config", V), put_config),
    ("DELETE", ("config", V), delete_config),
    ("GET", ("mode",), get_mode),
    ("PUT", ("mode",), put_mode),
    ("DELETE", ("mode",), delete_mode),
    ("GET", ("mode", V), get_mode),
    ("PUT", ("mode", V), put_mode),
    ("DELETE", ("mode", V), delete_mode),
]
_WITH_BODY = {register, lookup, compatibility_version, compatibility_all, put_config, put_mode}


def match(method: str, segments: list[str]) -> tuple[Handler, tuple[str, ...]]:
    """The handler and path parameters for a request, or ``HttpProblem`` 404 / 405."""
    if segments and segments[0] == "associations":
        raise HttpProblem(404, 40401, "Associations are not supported by this registry")
    path_known = False
    for verb, pattern, handler in ROUTES:
        if len(pattern) != len(segments):
            continue
        if not all(p in (V, s) for p, s in zip(pattern, segments, strict=True)):
            continue
        path_known = True
        if verb == method or (verb == "GET" and method == "HEAD"):
            params = tuple(s for p, s in zip(pattern, segments, strict=True) if p == V)
            return handler, params
    if path_known:
        raise HttpProblem(405, 405, "HTTP 405 Method Not Allowed")
    raise HttpProblem(404, 404, "HTTP 404 Not Found")


# What the registry answers in, with Jersey's quality-of-source, best first.
PRODUCES = (
    (MEDIA_TYPE, 1.0),
    ("application/vnd.schemaregistry+json", 0.9),
    ("application/json", 0.5),
)
CONSUMES = frozenset({*(t for t, _ in PRODUCES), "application/octet-stream"})


def negotiate(accept: str | None) -> str | None:
    """The media type to answer in for this ``Accept`` header, or None (406)."""
    if accept is None or not accept.strip():
        return MEDIA_TYPE
    best: tuple[float, float, int] | None = None
    chosen = None
    for item in accept.split(","):
        kind, *params = (p.strip() for p in item.split(";"))
        kind = kind.lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0 or "/" not in kind:
            continue
        major = kind.split("/")[0]
        for produced, qs in PRODUCES:
            if kind == produced:
                exact = 2
            elif kind == f"{major}/*" and produced.startswith(f"{major}/"):
                exact = 1
            elif kind == "*/*":
                exact = 0
            else:
                continue
            score = (q, qs, exact)
            if best is None or score > best:
                best, chosen = score, produced
    return chosen


def _json(status: int, content: object, media_type: str = MEDIA_TYPE) -> Response:
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type=media_type)


def _error(status: int, error_code: int, message: str, media_type: str = MEDIA_TYPE) -> Response:
    response = _json(status, {"error_code": error_code, "message": message}, media_type)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="schema-registry"'
    return response


def _segments(raw_path: bytes) -> list[str]:
    text = raw_path.decode("latin-1")
    return [unquote(part, errors="strict") for part in text.strip("/").split("/") if part != ""]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpProblem(413, 413, f"Request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpProblem(413, 413, f"Request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_body(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HttpProblem(400, 400, f"Unparseable JSON request body: {exc}") from exc
    except RecursionError as exc:
        raise HttpProblem(400, 400, "Unparseable JSON request body: nested too deeply") from exc


def _authorizer(basic_auth: str | None) -> Callable[[Request], None]:
    if basic_auth is None:
        return lambda request: None
    if ":" not in basic_auth:
        raise ValueError("basic_auth must be USER:PASSWORD")
    expected = basic_auth.encode()

    def authorize(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = b""
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(token.strip(), validate=True)
            except ValueError:
                given = b""
        if not hmac.compare_digest(given, expected):
            raise HttpProblem(401, 401, "Unauthorized: valid basic credentials are required")

    return authorize


def create_app(
    service: RegistryService, *, basic_auth: str | None = None, max_body_bytes: int = 2_000_000
) -> Starlette:
    """The registry's ASGI application over ``service``."""
    authorize = _authorizer(basic_auth)

    async def endpoint(request: Request) -> Response:
        media_type = negotiate(request.headers.get("accept")) or MEDIA_TYPE
        try:
            authorize(request)
            if negotiate(request.headers.get("accept")) is None:
                accept = request.headers.get("accept", "")[:200]
                raise HttpProblem(406, 406, f"HTTP 406 Not Acceptable: no answer in {accept!r}")
            raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
            try:
                segments = _segments(raw_path)
            except UnicodeDecodeError as exc:
                raise HttpProblem(404, 404, "HTTP 404 Not Found") from exc
            handler, params = match(request.method, segments)
            body = None
            if handler in _WITH_BODY:
                content_type = request.headers.get("content-type", "")
                kind = content_type.split(";")[0].strip().lower()
                if kind and kind not in CONSUMES:
                    raise HttpProblem(
                        415, 415, f"HTTP 415 Unsupported Media Type: {content_type[:200]!r}"
                    )
                body = _parse_body(await _read_body(request, max_body_bytes))
            call = Call(service, params, dict(request.query_params), body)
            result = await run_in_threadpool(handler, call)
        except HttpProblem as exc:
            return _error(exc.status, exc.error_code, str(exc), media_type)
        except RegistryServiceError as exc:
            return _error(exc.status, exc.error_code, str(exc), media_type)
        except Exception:
            log.exception("registry request %s %s failed", request.method, request.url.path)
            return _error(500, 50001, "Error in the backend data store", media_type)
        if isinstance(result, Raw):
            return Response(result.text.encode(), status_code=200, media_type=media_type)
        return _json(200, result, media_type)

    app = Starlette()
    # Every path reaches ``endpoint`` (which routes on the raw path itself): a
    # starlette route pattern would not match a path holding an encoded newline.
    app.router.default = request_response(endpoint)
    return app


def serve(storage_url: str, *, host: str, port: int, basic_auth: str | None = None) -> None:
    """Serve the registry on ``host:port`` until interrupted (blocking)."""
    import uvicorn  # noqa: PLC0415

    storage = open_storage(storage_url)
    try:
        app = create_app(RegistryService(storage), basic_auth=basic_auth)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        storage.close()
