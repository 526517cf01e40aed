"""The admin HTTP API served inside ``cdcsync run``, ``capture`` and ``sync``.

Endpoints (JSON unless noted):

- ``GET /health``: liveness; 200 while the event loop answers.
- ``GET /ready``: 200 when the process can do its work, else 503 with the reasons:
  capture streams from its slot, sync's workers run, Kafka and the registry answered their
  latest probe (run every ``admin.probe_interval_s``).
- ``GET /metrics``: Prometheus text format (``cdc.ops.metrics``).
- ``GET /status``: counters, positions, circuit and pause state, health-check history, the
  last scheduled reconcile run of each integration.
- ``POST /integrations/{name}/pause`` and ``/resume``: stop or restart consuming one
  integration; the others go on.
- ``POST|PUT|DELETE /inbound/{integration}/{entity}/{external_id}``: external changes
  (``cdc.inbound.endpoint``), authenticated per integration rather than by ``admin.token``.
- ``/console/``: the web console (``cdc.ops.console``), HTML for people, under the same
  token (a login form sets a session cookie); ``GET /`` redirects there.

With ``admin.token`` set, every endpoint except /health and /ready asks for
``Authorization: Bearer TOKEN`` (401 otherwise). The listener binds ``admin.listen``
(loopback by default); a port already in use is a configuration error at start, not a
silent absence, and so is a non-loopback address without ``admin.token`` unless
``admin.allow_unauthenticated_remote`` is true.

Invariants: handlers only read the roles' stats objects and call ``pause``/``resume``;
nothing here blocks the event loop; no response or log line carries a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from cdc.config import Config
from cdc.core.errors import ConfigError, FatalError, RetryableError, first_line
from cdc.core.secrets import redact_dsn
from cdc.inbound.endpoint import InboundEndpoint
from cdc.kafka.client_log import with_logger
from cdc.kafka.publisher import producer_config
from cdc.ops.console import Console
from cdc.ops.console.session import too_many_wrong_tokens
from cdc.ops.metrics import RuntimeCollector

if TYPE_CHECKING:
    from cdc.capture.runtime import Capture
    from cdc.ops.reconcile.schedule import ReconcileScheduler
    from cdc.sync.runtime import Sync

log = logging.getLogger("cdcsync.admin")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One readiness probe of a dependency."""

    at: float  # Unix time
    ok: bool
    duration_ms: float
    detail: str | None = None


class DependencyProbes:
    """Periodic reachability probes of Kafka and the schema registry, with history."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.history: dict[str, deque[ProbeResult]] = {
            "kafka": deque(maxlen=20),
            "registry": deque(maxlen=20),
        }

    def latest(self, name: str) -> ProbeResult | None:
        found = self.history[name]
        return found[-1] if found else None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.probe_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.admin.probe_interval_s)

    async def probe_all(self) -> None:
        await asyncio.gather(
            self._timed("kafka", self._kafka), self._timed("registry", self._registry)
        )

    async def _timed(self, name: str, probe: Callable[[], Awaitable[None]]) -> None:
        started = time.monotonic()
        detail: str | None = None
        try:
            await probe()
        except Exception as exc:  # any failure means "not reachable", said plainly
            detail = redact_dsn(first_line(exc))
        self.history[name].append(
            ProbeResult(time.time(), detail is None, (time.monotonic() - started) * 1000, detail)
        )

    async def _kafka(self) -> None:
        kafka = self.config.kafka
        conf = producer_config(kafka.bootstrap_servers, kafka.client_properties())
        admin_conf = {
            k: v
            for k, v in conf.items()
            if k.startswith(("bootstrap.", "security.", "sasl.", "ssl.", "client."))
        }
        client = AdminClient(with_logger(admin_conf))
        await asyncio.to_thread(client.list_topics, timeout=5)

    async def _registry(self) -> None:
        registry = self.config.registry
        if registry.embedded_storage is not None:
            return  # in-process: reachable by construction
        async with httpx.AsyncClient(timeout=5, auth=registry.auth()) as client:
            response = await client.get(str(registry.url).rstrip("/") + "/subjects")
        if response.status_code >= 400:
            raise ConnectionError(f"registry answered HTTP {response.status_code}")


class AdminApi:
    """The API's routes over the roles running in this process."""

    def __init__(
        self,
        config: Config,
        *,
        capture: Capture | None = None,
        sync: Sync | None = None,
        reconcile: ReconcileScheduler | None = None,
    ) -> None:
        self.config = config
        self.capture = capture
        self.sync = sync
        self.reconcile = reconcile
        self.probes = DependencyProbes(config)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(RuntimeCollector(capture=capture, sync=sync, reconcile=reconcile))
        token = config.admin.token
        self._token = None if token is None else token.get_secret_value().encode()
        self.port = 0
        self._sock: socket.socket | None = None
        self.inbound = InboundEndpoint.from_config(config)
        self.console = Console(
            config, capture=capture, sync=sync, token=self._token, status=self.status_document
        )
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/ready", self.ready),
                Route("/metrics", self.metrics),
                Route("/status", self.status),
                Route("/integrations/{name}/pause", self.pause, methods=["POST"]),
                Route("/integrations/{name}/resume", self.resume, methods=["POST"]),
                # Inbound changes authenticate per integration, not with the admin token.
                *(self.inbound.routes() if self.inbound is not None else []),
                Route("/", lambda _request: RedirectResponse("/console/", 303)),
                *self.console.routes(),
            ]
        )

    # ------------------------------------------------------------------ auth

    def _refusal(self, request: Request) -> Response | None:
        """None if the request may go on, else its answer: 401 without the right bearer
        token, 429 while its address is past the guessing limit (``Sessions``: the console
        and this API count wrong tokens together)."""
        sessions = self.console.sessions
        if self._token is None or sessions.bearer(request):
            return None
        wait = sessions.retry_after(request)
        if wait is not None:
            return too_many_wrong_tokens(wait)
        return JSONResponse(
            {"error": "missing or wrong bearer token"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    # ------------------------------------------------------------------ endpoints

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, _request: Request) -> Response:
        problems = list(self._not_ready())
        body = {"ready": not problems, "problems": problems}
        return JSONResponse(body, status_code=503 if problems else 200)

    def _not_ready(self) -> Iterator[str]:
        if self.capture is not None and not self.capture.stats.connected:
            why = self.capture.stats.last_error
            yield "capture is not streaming from its replication slot" + (
                f" (last error: {why})" if why else ""
            )
        if self.sync is not None and not self.sync.ready.is_set():
            yield "sync workers are not running yet"
        for name in ("kafka", "registry"):
            latest = self.probes.latest(name)
            if latest is None:
                yield f"{name}: not probed yet"
            elif not latest.ok:
                yield f"{name}: unreachable ({latest.detail})"

    async def metrics(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def status(self, request: Request) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        return JSONResponse(self.status_document())

    def status_document(self) -> dict[str, Any]:
        """The live state of this process, as /status serves it."""
        return {
            "capture": None if self.capture is None else _capture_status(self.capture),
            "integrations": {} if self.sync is None else _integrations_status(self.sync),
            "inbound": {} if self.inbound is None else self.inbound.status(),
            "reconcile": {} if self.reconcile is None else self.reconcile.status(),
            "dependencies": {
                name: [asdict(r) for r in history] for name, history in self.probes.history.items()
            },
        }

    async def pause(self, request: Request) -> Response:
        return self._control(request, pause=True)

    async def resume(self, request: Request) -> Response:
        return self._control(request, pause=False)

    def _control(self, request: Request, *, pause: bool) -> Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        name = request.path_params["name"]
        if self.sync is None or name not in self.sync.workers:
            running = [] if self.sync is None else sorted(self.sync.workers)
            return JSONResponse(
                {
                    "error": f"integration {name!r} does not run in this process",
                    "running": running,
                },
                status_code=404,
            )
        if pause:
            self.sync.pause(name)
        else:
            self.sync.resume(name)
        return JSONResponse({"integration": name, "paused": pause})

    # ------------------------------------------------------------------ serving

    def bind(self) -> None:
        """Take the listening socket now, so a busy port fails before anything starts.

        A non-loopback address without ``admin.token`` is refused (``ConfigError``) unless
        ``admin.allow_unauthenticated_remote`` says so: pause/resume and /status would be
        open to whoever reaches the address.
        """
        admin = self.config.admin
        if (
            admin.token is None
            and not admin.allow_unauthenticated_remote
            and not _loopback(admin.host)
        ):
            raise ConfigError(
                f"admin.listen: {admin.listen} is not a loopback address and admin.token "
                "is not set, which would open pause/resume and /status to the network; "
                "set admin.token, listen on 127.0.0.1, or set "
                "admin.allow_unauthenticated_remote: true"
            )
        self._sock = _bind(self.config.admin.host, self.config.admin.port)
        self.port = self._sock.getsockname()[1]
        log.info("admin API on http://%s:%d", self.config.admin.host, self.port)

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` (binding first unless ``bind`` was called)."""
        if self._sock is None:
            self.bind()
        sock = self._sock
        assert sock is not None
        server = _QuietServer(
            uvicorn.Config(
                self.app,
                log_level="warning",
                # No handlers of uvicorn's own: its records reach the configured format.
                log_config=None,
                access_log=False,
                lifespan="off",
                loop="none",
            )
        )
        probes = asyncio.create_task(self.probes.run(stop))
        console = asyncio.create_task(self.console.run(stop))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await stop.wait()
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
            console.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await console
            sock.close()
            self._sock = None
            if self.inbound is not None:
                self.inbound.close()


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the cdcsync process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only ever means this machine."""
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"admin.listen: cannot listen on {host}:{port} ({exc.strerror}); choose another "
            "address or set admin.enabled: false"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def admin_url(config: Config) -> str:
    """The base URL of the admin API of a process running ``config``."""
    host = config.admin.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.admin.port}"


async def call_admin(config: Config, method: str, path: str, *, timeout_s: float = 2.0) -> Any:
    """Call the admin API of the running process; returns the decoded JSON body.

    Raises ``AdminUnreachable`` when nothing answers and ``AdminError`` for an error status.
    """
    headers = {}
    if config.admin.token is not None:
        headers["Authorization"] = f"Bearer {config.admin.token.get_secret_value()}"
    url = admin_url(config) + path
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.request(method, url, headers=headers)
    except httpx.HTTPError as exc:
        raise AdminUnreachable(
            f"no cdcsync process answers at {admin_url(config)} ({type(exc).__name__}); "
            "is it running with this config's admin.listen?"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:200]}
    if response.status_code >= 400:
        reason = body.get("error") if isinstance(body, dict) else None
        raise AdminError(f"admin API {method} {path}: HTTP {response.status_code}: {reason}")
    return body


class AdminUnreachable(RetryableError):
    """No process answers at the configured admin address."""


class AdminError(FatalError):
    """The admin API refused a request."""


def _capture_status(capture: Capture) -> dict[str, Any]:
    s = capture.stats
    lag_bytes = max(int(s.received_lsn) - int(s.flushed_lsn), 0)
    return {
        "slot": capture.config.source.slot,
        "connected": s.connected,
        "events": s.events,
        "transactions": s.transactions,
        "tombstones": s.tombstones,
        "restarts": s.restarts,
        "skipped_transactions": s.skipped_transactions,
        "flushed_lsn": str(s.flushed_lsn) if s.flushed_lsn else None,
        "received_lsn": str(s.received_lsn) if s.received_lsn else None,
        "lag_bytes": lag_bytes,
        "lag_seconds": None if s.heartbeat_lag_ms is None else s.heartbeat_lag_ms / 1000,
        "retained_wal_bytes": s.retained_wal_bytes,
        "delivery_latency_p99_s": s.delivery_latency.quantile_s(0.99),
        "last_error": s.last_error,
        "uptime_s": round(time.time() - s.started_at, 3),
    }


def _integrations_status(sync: Sync) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, worker in sync.workers.items():
        s = worker.stats
        out[name] = {
            "group_id": worker.group_id,
            "applied": s.applied,
            "older": s.older,
            "duplicate": s.duplicate,
            "echo": s.echo,
            "rereads": s.rereads,
            "retried": s.retried,
            "dead_lettered": s.dead_lettered,
            "records": s.records,
            "tombstones": s.tombstones,
            "no_operation": s.no_operation,
            "waits": s.waits,
            "restarts": s.restarts,
            "paused": s.paused,
            "circuit": s.circuit,
            "last_version": s.last_version,
            "last_error": s.last_error,
            "apply_latency_p99_s": s.apply_latency.quantile_s(0.99),
            "checks": [asdict(c) for c in s.checks],
        }
        inbound = sync.inbound_workers.get(name)
        if inbound is not None:
            out[name]["inbound"] = asdict(inbound.stats)
    return out


__all__ = [
    "AdminApi",
    "AdminError",
    "AdminUnreachable",
    "DependencyProbes",
    "ProbeResult",
    "admin_url",
    "call_admin",
]
