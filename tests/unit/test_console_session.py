"""The console's sessions: signed cookies, CSRF tokens bound to a session, origin checks."""

from __future__ import annotations

import time

import pytest
from starlette.requests import Request

from cdc.ops.console.session import COOKIE, Sessions


def request(
    *, cookie: str | None = None, origin: str | None = None, bearer: str | None = None
) -> Request:
    headers = [(b"host", b"127.0.0.1:8080")]
    if cookie is not None:
        headers.append((b"cookie", f"{COOKIE}={cookie}".encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if bearer is not None:
        headers.append((b"authorization", f"Bearer {bearer}".encode()))
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "scheme": "http"}
    return Request(scope)


def test_a_session_issued_by_this_process_authorizes_and_a_tampered_one_does_not() -> None:
    sessions = Sessions(b"secret-token")
    good = sessions.new_session()
    assert sessions.authorized(request(cookie=good))
    issued, nonce, mac = good.split(".")
    assert not sessions.authorized(request(cookie=f"{int(issued) + 1}.{nonce}.{mac}"))
    assert not sessions.authorized(request(cookie=Sessions(b"secret-token").new_session()))
    assert not sessions.authorized(request())
    assert "secret-token" not in good


def test_an_expired_session_is_no_session(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = Sessions(b"t", ttl_s=60)
    cookie = sessions.new_session()
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert sessions.session(request(cookie=cookie)) is None


def test_csrf_needs_the_token_of_the_same_session_and_a_same_origin_post() -> None:
    sessions = Sessions(b"t")
    mine, other = sessions.new_session(), sessions.new_session()
    token = sessions.csrf_token(mine)
    assert sessions.csrf_ok(request(cookie=mine), token)
    assert sessions.csrf_ok(request(cookie=mine, origin="http://127.0.0.1:8080"), token)
    assert not sessions.csrf_ok(request(cookie=mine), None)
    assert not sessions.csrf_ok(request(cookie=other), token)
    assert not sessions.csrf_ok(request(cookie=mine, origin="http://evil.example"), token)
    assert not sessions.csrf_ok(request(cookie=mine, origin="null"), token)


def test_a_bearer_token_needs_no_csrf_token_but_still_a_same_origin() -> None:
    sessions = Sessions(b"t")
    assert sessions.csrf_ok(request(bearer="t"), None)
    assert not sessions.csrf_ok(request(bearer="wrong"), None)
    assert not sessions.csrf_ok(request(bearer="t", origin="http://evil.example"), None)


def test_without_an_admin_token_reading_is_open_but_actions_still_need_csrf() -> None:
    sessions = Sessions(None)
    assert sessions.authorized(request())
    session = sessions.new_session()
    assert not sessions.csrf_ok(request(cookie=session), None)
    assert sessions.csrf_ok(request(cookie=session), sessions.csrf_token(session))
