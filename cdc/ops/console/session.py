"""Who may see and drive the console: the admin token, a signed session cookie, CSRF tokens.

The rules are the admin API's: with ``admin.token`` set, every console page, fragment and
action needs it, like /status and pause/resume; without it the console is as open as the
API (loopback only unless ``admin.allow_unauthenticated_remote``).

A browser proves the token once, on the login form; the console then sets the cookie
``cdcsync_console``: ``ISSUED.NONCE.MAC``, with ``MAC`` an HMAC-SHA256 under a key drawn
at random when the process starts (so a restart or a new token ends every session), valid
for ``SESSION_TTL_S``. The cookie is ``HttpOnly``, ``SameSite=Strict``, scoped to
``/console`` and ``Secure`` when the request came over HTTPS; it never holds the token.
Without a token the first page view gets a session the same way, with no login.
A client may instead send ``Authorization: Bearer TOKEN`` on any console request.

Mutations (pause, resume, dead-letter replay) are POSTs that need, on top of being
authorized, a CSRF token: ``HMAC(key, "csrf" + session)``, rendered into every form (the
field ``csrf``) and into the page for htmx (the header ``X-CSRF-Token``). A request
authorized by the bearer header needs none (a browser never adds that header by itself).
A POST whose ``Origin`` header names another origin is refused in any case.

Invariants: every comparison of a secret is constant-time; no cookie, log line or page
carries the admin token; a forged, expired or foreign cookie is no session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["COOKIE", "CSRF_FIELD", "CSRF_HEADER", "SESSION_TTL_S", "Sessions"]

COOKIE = "cdcsync_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600


class Sessions:
    """Session cookies and CSRF tokens of one process; ``token`` is ``admin.token``."""

    def __init__(self, token: bytes | None, *, ttl_s: float = SESSION_TTL_S) -> None:
        self._token = token
        self._key = secrets.token_bytes(32)
        self.ttl_s = ttl_s

    @property
    def login_required(self) -> bool:
        return self._token is not None

    # ------------------------------------------------------------------ checks

    def token_matches(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(given.encode(), self._token)

    def bearer(self, request: Request) -> bool:
        """Whether the request carries ``Authorization: Bearer`` with the right token."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given)

    def session(self, request: Request) -> str | None:
        """The request's valid session cookie, or None."""
        value = request.cookies.get(COOKIE)
        if not value or value.count(".") != 2:
            return None
        issued, nonce, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac("session", f"{issued}.{nonce}")):
            return None
        try:
            age = time.time() - int(issued)
        except ValueError:
            return None
        return value if 0 <= age < self.ttl_s else None

    def authorized(self, request: Request) -> bool:
        """Whether the request may read the console (bearer token or session)."""
        if self._token is None:
            return True
        return self.bearer(request) or self.session(request) is not None

    def csrf_ok(self, request: Request, submitted: str | None) -> bool:
        """Whether a POST may change something: same origin, and bearer or a CSRF token that
        belongs to its session."""
        if not self.origin_ok(request):
            return False
        if self._token is not None and self.bearer(request):
            return True
        session = self.session(request)
        if session is None or not submitted:
            return False
        return hmac.compare_digest(submitted, self.csrf_token(session))

    @staticmethod
    def origin_ok(request: Request) -> bool:
        """Whether the request's ``Origin``, when it has one, is the console's own."""
        origin = request.headers.get("origin")
        return origin is None or _same_origin(origin, request)

    # ------------------------------------------------------------------ issuing

    def new_session(self) -> str:
        body = f"{int(time.time())}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac('session', body)}"

    def csrf_token(self, session: str) -> str:
        return self._mac("csrf", session)

    def set_cookie(self, response: Response, request: Request, session: str) -> None:
        response.set_cookie(
            COOKIE,
            session,
            max_age=int(self.ttl_s),
            path="/console",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def clear_cookie(response: Response) -> None:
        response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")

    def _mac(self, purpose: str, body: str) -> str:
        return hmac.new(self._key, f"{purpose}:{body}".encode(), hashlib.sha256).hexdigest()


def _same_origin(origin: str, request: Request) -> bool:
    """Whether ``Origin`` names the host the request was sent to (scheme, host and port)."""
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
