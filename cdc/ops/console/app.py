"""The web console's routes: pages, htmx fragments, chart data, actions, static files.

Everything lives under ``/console`` on the admin listener:

- ``GET /console/``: the overview (capture, one row per integration, dependencies), whose
  body ``GET /console/parts/overview`` refreshes every few seconds;
- ``GET /console/integrations/{name}``: one integration: summary and health-check history
  (``.../parts/summary``), throughput and lag charts over the last hour (``.../series``,
  JSON for the charts), dead letters (``.../parts/dead-letters``), reconcile history;
- ``POST .../pause``, ``.../resume``, ``.../dead-letters/replay`` (``id=N`` or ``all=1``):
  the actions; an htmx request gets the refreshed fragment back, a plain form post a
  303 to the integration's page;
- ``GET|POST /console/login``, ``POST /console/logout``; ``/console/static/...``: the
  stylesheet, the chart script and the vendored htmx and uPlot (with their licences).

Who may do what is ``session.Sessions``'s business. Pages are server-rendered (Jinja2,
autoescaped) and served with a Content-Security-Policy that allows only this origin's
scripts and styles: no inline script, no ``eval``, nothing from another host, no framing.

Invariants: a handler reads the roles' stats and the console's samples and calls only
``Sync.pause``/``resume`` and the dead-letter replay; no response carries a secret; the
console works offline (every asset is in the package).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from cdc.config import Config
from cdc.core.circuit_breaker import CircuitState
from cdc.core.errors import first_line
from cdc.ops.console import formatting
from cdc.ops.console.dead_letters import DeadLetterDesk, ReplayBusy
from cdc.ops.console.sampler import HISTORY_S, SYNC_COUNTERS, SYNC_GAUGES, Sampler
from cdc.ops.console.session import CSRF_FIELD, Sessions, too_many_wrong_tokens

if TYPE_CHECKING:
    import asyncio

    from jinja2 import Environment

    from cdc.capture.runtime import Capture
    from cdc.sync.runtime import Sync

__all__ = ["Console"]

STATIC = Path(__file__).parent / "static"
REFRESH_S = 3
DEAD_LETTER_REFRESH_S = 10
MAX_FORM_BYTES = 4096

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it a browser sends ``Origin: null`` with same-origin POSTs.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request], Awaitable[Response]]


class Console:
    """The console of one process; ``routes()`` go on the admin listener, ``run`` samples."""

    def __init__(
        self,
        config: Config,
        *,
        capture: Capture | None,
        sync: Sync | None,
        token: bytes | None,
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self.config = config
        self.capture = capture
        self.sync = sync
        self.status = status
        self.sessions = Sessions(token)
        self.desk = DeadLetterDesk(config)
        self.sampler = Sampler(config, capture=capture, sync=sync, desk=self.desk)
        # Reconcile runs of an integration, newest first, once reconciliation exists.
        self.reconcile_history: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None

    @functools.cached_property
    def templates(self) -> Environment:
        """The page templates, made when the first page is served: jinja2 (about 2 MiB and
        16 ms) is loaded only by a process whose console is opened."""
        from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: PLC0415

        templates = Environment(
            loader=PackageLoader("cdc.ops.console", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        templates.filters.update(formatting.FILTERS)
        return templates

    def routes(self) -> list[BaseRoute]:
        page, part, action = self._page, self._part, self._action
        return [
            Mount(
                "/console",
                routes=[
                    Route("/", page(self.overview)),
                    Route("/login", self.login, methods=["GET", "POST"]),
                    Route("/logout", action(self.logout), methods=["POST"]),
                    Route("/parts/overview", part(self.overview_part)),
                    Route("/integrations/{name}", page(self.integration)),
                    Route("/integrations/{name}/parts/summary", part(self.summary_part)),
                    Route("/integrations/{name}/parts/dead-letters", part(self.dead_letters_part)),
                    Route("/integrations/{name}/series", part(self.series)),
                    Route("/integrations/{name}/pause", action(self.pause), methods=["POST"]),
                    Route("/integrations/{name}/resume", action(self.resume), methods=["POST"]),
                    Route(
                        "/integrations/{name}/dead-letters/replay",
                        action(self.replay),
                        methods=["POST"],
                    ),
                    Mount("/static", StaticFiles(directory=STATIC), name="console-static"),
                ],
            )
        ]

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop``, then let go of the console's connections."""
        try:
            await self.sampler.run(stop)
        finally:
            await self.desk.close()

    # ------------------------------------------------------------------ access

    def _throttled(self, request: Request) -> Response | None:
        """429 while the request's address is past the guessing limit, else None."""
        wait = self.sessions.retry_after(request)
        return None if wait is None else too_many_wrong_tokens(wait)

    def _page(self, handler: Handler) -> Handler:
        """A full page: a browser without a session goes to the login form."""

        async def guarded(request: Request) -> Response:
            session = self.sessions.session(request)
            if session is None and not self.sessions.authorized(request):
                target = quote(request.url.path, safe="/")
                return _secure(RedirectResponse(f"/console/login?next={target}", 303))
            fresh = session is None and not self.sessions.login_required
            if fresh:
                session = self.sessions.new_session()
            request.state.csrf = "" if session is None else self.sessions.csrf_token(session)
            response = await handler(request)
            if fresh and session is not None:
                self.sessions.set_cookie(response, request, session)
            return _secure(response)

        return guarded

    def _part(self, handler: Handler) -> Handler:
        """A fragment or chart data: 401 (htmx is sent to the login form) without access."""

        async def guarded(request: Request) -> Response:
            if not self.sessions.authorized(request):
                return _secure(
                    self._throttled(request)
                    or JSONResponse(
                        {"error": "log in to the console first"},
                        status_code=401,
                        headers={"HX-Redirect": "/console/login", "WWW-Authenticate": "Bearer"},
                    )
                )
            session = self.sessions.session(request)
            request.state.csrf = "" if session is None else self.sessions.csrf_token(session)
            return _secure(await handler(request))

        return guarded

    def _action(self, handler: Handler) -> Handler:
        """A mutation: authorized like a fragment, and CSRF-checked."""

        async def guarded(request: Request) -> Response:
            if not self.sessions.authorized(request):
                return _secure(
                    self._throttled(request)
                    or JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
                )
            form = await _form(request)
            if form is None or not self.sessions.csrf_ok(request, form.get(CSRF_FIELD)):
                return _secure(
                    JSONResponse(
                        {"error": "refused: the form's CSRF token or the origin is wrong"},
                        status_code=403,
                    )
                )
            request.state.form = form
            session = self.sessions.session(request)
            request.state.csrf = "" if session is None else self.sessions.csrf_token(session)
            return _secure(await handler(request))

        return guarded

    async def login(self, request: Request) -> Response:
        if not self.sessions.login_required:
            return _secure(RedirectResponse("/console/", 303))
        target = _local_target(request.query_params.get("next"))
        if request.method == "GET":
            return _secure(self._render("login.html", request, next=target, error=None))
        form = await _form(request)
        if (
            form is None
            or not self.sessions.origin_ok(request)
            or not self.sessions.token_matches(request, form.get("token", ""))
        ):
            wait = self.sessions.retry_after(request)
            error = "That is not the admin token of this process."
            if wait is not None:
                error = f"Too many wrong tokens from this address: try again in {wait} s."
            page = self._render("login.html", request, next=target, error=error)
            if wait is not None:
                page.status_code = 429
                page.headers["Retry-After"] = str(wait)
            return _secure(page)
        response = RedirectResponse(_local_target(form.get("next")), 303)
        self.sessions.set_cookie(response, request, self.sessions.new_session())
        return _secure(response)

    async def logout(self, _request: Request) -> Response:
        response = RedirectResponse(
            "/console/login" if self.sessions.login_required else "/console/", 303
        )
        self.sessions.clear_cookie(response)
        return response

    # ------------------------------------------------------------------ overview

    async def overview(self, request: Request) -> Response:
        return self._render("overview.html", request, **self._overview_context())

    async def overview_part(self, request: Request) -> Response:
        return self._render("_overview_body.html", request, **self._overview_context())

    def _overview_context(self) -> dict[str, Any]:
        status = self.status()
        capture = status.get("capture")
        if capture is not None:
            capture = {
                **capture,
                "events_per_s": self.sampler.capture_series.latest_rate("events"),
            }
        rows = [
            self._integration_row(name, counters)
            for name, counters in sorted(status.get("integrations", {}).items())
        ]
        dependencies = {
            name: (history[-1] if history else None)
            for name, history in status.get("dependencies", {}).items()
        }
        return {
            "capture": capture,
            "integrations": rows,
            "dependencies": dependencies,
            "configured": sorted(self.config.integrations),
            "sampled_at": time.time(),
        }

    def _integration_row(self, name: str, counters: dict[str, Any]) -> dict[str, Any]:
        series = self.sampler.series(name)
        latest = series.latest()
        values = {} if latest is None else latest.values
        return {
            **counters,
            "name": name,
            "state": _state(counters),
            "lag": values.get("lag"),
            "lag_error": self.sampler.errors.get(f"lag:{name}"),
            "applied_per_s": series.latest_rate("applied"),
            "records_per_s": series.latest_rate("records"),
            "dead_letters": values.get("dead_letters"),
        }

    # ------------------------------------------------------------------ one integration

    def _known(self, request: Request) -> tuple[str, dict[str, Any]] | None:
        name = request.path_params["name"]
        counters = self.status().get("integrations", {}).get(name)
        return None if counters is None else (name, counters)

    async def integration(self, request: Request) -> Response:
        found = self._known(request)
        if found is None:
            return self._not_running(request)
        name, counters = found
        rows, why = await self.desk.rows(name)
        reconcile = None if self.reconcile_history is None else await self.reconcile_history(name)
        return self._render(
            "integration.html",
            request,
            row=self._integration_row(name, counters),
            letters=rows,
            letters_error=why,
            replaying=self.desk.replaying(name),
            result=None,
            reconcile=reconcile,
            interval_s=self.sampler.interval_s,
        )

    async def summary_part(self, request: Request) -> Response:
        found = self._known(request)
        if found is None:
            return self._not_running(request)
        name, counters = found
        return self._render("_summary.html", request, row=self._integration_row(name, counters))

    async def dead_letters_part(self, request: Request) -> Response:
        found = self._known(request)
        if found is None:
            return self._not_running(request)
        return await self._dead_letters(request, found[0], result=None)

    async def _dead_letters(
        self, request: Request, name: str, *, result: dict[str, Any] | None
    ) -> Response:
        rows, why = await self.desk.rows(name)
        return self._render(
            "_dead_letters.html",
            request,
            row={"name": name},
            letters=rows,
            letters_error=why,
            replaying=self.desk.replaying(name),
            result=result,
        )

    async def series(self, request: Request) -> Response:
        name = request.path_params["name"]
        since = time.time() - HISTORY_S
        if self._known(request) is None:
            return JSONResponse({"error": f"integration {name!r} does not run here"}, 404)
        data = self.sampler.series(name).columns(
            since=since, counters=SYNC_COUNTERS, gauges=SYNC_GAUGES
        )
        return JSONResponse({"interval_s": self.sampler.interval_s, **data})

    # ------------------------------------------------------------------ actions

    async def pause(self, request: Request) -> Response:
        return await self._control(request, pause=True)

    async def resume(self, request: Request) -> Response:
        return await self._control(request, pause=False)

    async def _control(self, request: Request, *, pause: bool) -> Response:
        found = self._known(request)
        if found is None or self.sync is None:
            return self._not_running(request)
        name = found[0]
        if pause:
            self.sync.pause(name)
        else:
            self.sync.resume(name)
        if not _htmx(request):
            return RedirectResponse(f"/console/integrations/{quote(name)}", 303)
        counters = self.status()["integrations"][name]
        return self._render("_summary.html", request, row=self._integration_row(name, counters))

    async def replay(self, request: Request) -> Response:
        found = self._known(request)
        if found is None:
            return self._not_running(request)
        name = found[0]
        form: dict[str, str] = request.state.form
        ids: list[int] | None = None
        if form.get("all") != "1":
            try:
                ids = [int(form.get("id", ""))]
            except ValueError:
                return JSONResponse({"error": "say which dead letter (id) or all=1"}, 400)
        try:
            done = await self.desk.replay(name, ids)
        except ReplayBusy as exc:
            result: dict[str, Any] = {"ok": False, "message": str(exc)}
        except Exception as exc:  # shown to the operator, who asked for it
            result = {"ok": False, "message": f"replay failed: {first_line(exc)}"}
        else:
            result = {"ok": not done.failed, "message": formatting.replay_message(done)}
        if not _htmx(request):
            return RedirectResponse(f"/console/integrations/{quote(name)}", 303)
        return await self._dead_letters(request, name, result=result)

    # ------------------------------------------------------------------ rendering

    def _render(
        self, template: str, request: Request, *, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        page = self.templates.get_template(template).render(
            csrf=getattr(request.state, "csrf", ""),
            csrf_field=CSRF_FIELD,
            login_required=self.sessions.login_required,
            refresh_s=REFRESH_S,
            dead_letter_refresh_s=DEAD_LETTER_REFRESH_S,
            **context,
        )
        return HTMLResponse(page, status_code=status_code)

    def _not_running(self, request: Request) -> Response:
        name = request.path_params.get("name", "")
        running = [] if self.sync is None else sorted(self.sync.workers)
        return self._render(
            "not_running.html", request, name=name, running=running, status_code=404
        )


def _state(counters: dict[str, Any]) -> str:
    """running, paused, circuit open or circuit half-open: what an operator asks first."""
    if counters.get("paused"):
        return "paused"
    circuit = counters.get("circuit")
    if circuit == CircuitState.OPEN.value:
        return "circuit open"
    if circuit == CircuitState.HALF_OPEN.value:
        return "circuit half-open"
    return "running"


def _htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _local_target(target: str | None) -> str:
    """Where to go after logging in: a console path of this host, never another site."""
    if target and target.startswith("/console/") and not target.startswith("/console//"):
        return target
    return "/console/"


async def _form(request: Request) -> dict[str, str] | None:
    """A small urlencoded form body (first value of each field), or None."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return None
    if content_type not in ("application/x-www-form-urlencoded", "") and body:
        return None
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return None
    return {key: values[0] for key, values in fields.items()}


def _secure(response: Response) -> Response:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response
