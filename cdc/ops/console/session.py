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

Guessing is slowed per client address: after ``MAX_WRONG_TOKENS`` wrong tokens within
``WRONG_TOKEN_WINDOW_S`` (on the login form or in a bearer header, console or admin API
alike), that address gets no token compared until the oldest of them is that old; the
answer, from the wrong token that reaches the limit on, is 429 with ``Retry-After``. A
valid session cookie still works meanwhile (it is not a guess of the token). Behind a
proxy every client shares the proxy's address, so a guesser there locks the others out
for that long too.

Invariants: every comparison of a secret is constant-time; no cookie, log line or page
carries the admin token; a forged, expired or foreign cookie is no session; an address
past the limit has no token compared at all, right or wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "MAX_WRONG_TOKENS",
    "SESSION_TTL_S",
    "WRONG_TOKEN_WINDOW_S",
    "Sessions",
    "WrongTokens",
    "too_many_wrong_tokens",
]

COOKIE = "cdcsync_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600
MAX_WRONG_TOKENS = 10
WRONG_TOKEN_WINDOW_S = 60.0
_MAX_ADDRESSES = 4096  # addresses remembered at once; the longest quiet is forgotten first


class WrongTokens:
    """Wrong tokens per client address over the last ``window_s`` seconds."""

    def __init__(
        self,
        *,
        limit: int = MAX_WRONG_TOKENS,
        window_s: float = WRONG_TOKEN_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def add(self, address: str) -> None:
        times = self._seen.pop(address, None) or deque(maxlen=self.limit)
        times.append(self._clock())
        self._seen[address] = times  # now the most recent
        while len(self._seen) > _MAX_ADDRESSES:
            self._seen.popitem(last=False)

    def wait_s(self, address: str) -> float | None:
        """Seconds until ``address`` may try a token again, or None if it may now."""
        times = self._seen.get(address)
        if times is None or len(times) < self.limit:
            return None
        left = times[0] + self.window_s - self._clock()
        return left if left > 0 else None


class Sessions:
    """Session cookies and CSRF tokens of one process; ``token`` is ``admin.token``."""

    def __init__(
        self,
        token: bytes | None,
        *,
        ttl_s: float = SESSION_TTL_S,
        wrong_tokens: WrongTokens | None = None,
    ) -> None:
        self._token = token
        self._key = secrets.token_bytes(32)
        self.ttl_s = ttl_s
        self.wrong_tokens = wrong_tokens or WrongTokens()

    @property
    def login_required(self) -> bool:
        return self._token is not None

    # ------------------------------------------------------------------ checks

    def token_matches(self, request: Request, given: str) -> bool:
        """Whether ``given`` is the token, sent by an address not past the guessing limit
        (a wrong one counts against the address)."""
        if self._token is None or self.retry_after(request) is not None:
            return False
        if hmac.compare_digest(given.encode(), self._token):
            return True
        self.wrong_tokens.add(_address(request))
        return False

    def retry_after(self, request: Request) -> int | None:
        """Whole seconds until the request's address may try a token again, or None."""
        wait = self.wrong_tokens.wait_s(_address(request))
        return None if wait is None else max(1, math.ceil(wait))

    def bearer(self, request: Request) -> bool:
        """Whether the request carries ``Authorization: Bearer`` with the right token."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(request, given)

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


def too_many_wrong_tokens(retry_after: int) -> Response:
    """The answer to an address past the guessing limit (``Sessions.retry_after``)."""
    return JSONResponse(
        {"error": f"too many wrong tokens from this address; retry in {retry_after} s"},
        status_code=429,
        headers={"Retry-After": str(retry_after)},
    )


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _same_origin(origin: str, request: Request) -> bool:
    """Whether ``Origin`` names the host the request was sent to (scheme, host and port)."""
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
