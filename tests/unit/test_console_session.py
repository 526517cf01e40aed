"""The console's sessions: signed cookies, CSRF tokens bound to a session, origin checks,
and the limit on guessing the token."""

from __future__ import annotations

import time

import pytest
from starlette.requests import Request

from cdc.ops.console.session import COOKIE, MAX_WRONG_TOKENS, Sessions, WrongTokens


def request(
    *,
    cookie: str | None = None,
    origin: str | None = None,
    bearer: str | None = None,
    client: str = "127.0.0.1",
) -> Request:
    headers = [(b"host", b"127.0.0.1:8080")]
    if cookie is not None:
        headers.append((b"cookie", f"{COOKIE}={cookie}".encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if bearer is not None:
        headers.append((b"authorization", f"Bearer {bearer}".encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": headers,
        "scheme": "http",
        "client": (client, 50000),
    }
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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_past_the_limit_an_address_has_no_token_compared_until_its_oldest_wrong_one_ages_out() -> (
    None
):
    clock = Clock()
    sessions = Sessions(b"right", wrong_tokens=WrongTokens(limit=3, window_s=60, clock=clock))
    for _ in range(3):
        assert not sessions.bearer(request(bearer="wrong"))
        clock.now += 10
    # 30 s after the first of three: even the right token is refused, for 30 s more.
    assert sessions.retry_after(request()) == 30
    assert not sessions.bearer(request(bearer="right"))
    assert not sessions.token_matches(request(), "right")
    # A session cookie is no guess of the token: it still works meanwhile.
    assert sessions.authorized(request(cookie=sessions.new_session()))
    # Another address is not affected.
    assert sessions.bearer(request(bearer="right", client="10.0.0.9"))
    clock.now += 30.5
    assert sessions.retry_after(request()) is None
    assert sessions.bearer(request(bearer="right"))
    # Two wrong ones are still in the window: one more locks the address again.
    assert not sessions.bearer(request(bearer="wrong"))
    assert sessions.retry_after(request()) is not None


def test_no_bearer_header_and_a_right_token_do_not_count_as_guesses() -> None:
    sessions = Sessions(b"right")
    for _ in range(3 * MAX_WRONG_TOKENS):
        assert not sessions.bearer(request())
        assert sessions.bearer(request(bearer="right"))
    assert sessions.retry_after(request()) is None


def test_the_addresses_remembered_are_bounded() -> None:
    wrong = WrongTokens(limit=2, window_s=60)
    for n in range(10_000):
        wrong.add(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert len(wrong._seen) <= 4096
