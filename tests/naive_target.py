"""A naive HTTP target for last-writer-wins tests: it applies whatever arrives, in arrival order.

``NaiveTarget`` is a threaded HTTP/1.1 server (``http.server``) on 127.0.0.1. Every request
to ``/{entity}/{key}`` is applied on arrival with no version check of its own: ``PUT`` or
``POST`` stores the JSON body as the entity, ``DELETE`` removes it, and the request is
appended to ``log`` (method, entity, key, the ``X-Cdcsync-Version`` header). ``state()``
is what the target holds now. Because it trusts the sink completely, the sink's ordering is
what these tests observe (a target that refused older versions itself would hide it).

``hold(predicate)`` makes the answers to matching requests wait (after they were applied)
until ``release()``; ``arrived`` is set whenever a request was applied, for tests that wait
for a marker instead of sleeping.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the target applied it."""

    method: str
    entity: str
    key: str
    version: str | None
    body: dict[str, Any] | None


class NaiveTarget:
    """See the module docstring; use as a context manager."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entities: dict[tuple[str, str], dict[str, Any]] = {}
        self.log: list[Received] = []
        self.arrived = threading.Condition(self._lock)
        self._hold: Callable[[Received], bool] | None = None
        self._released = threading.Event()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parts = self.path.strip("/").split("/")
                if len(parts) != 2:
                    self._answer(404, b"{}")
                    return
                entity, key = unquote(parts[0]), unquote(parts[1])
                body = json.loads(raw) if raw else None
                received = Received(
                    self.command, entity, key, self.headers.get("X-Cdcsync-Version"), body
                )
                held = target._apply(received)
                if held:
                    target._released.wait(30)
                self._answer(200, b"{}")

            def _answer(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_PUT = _handle
            do_POST = _handle
            do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _apply(self, received: Received) -> bool:
        with self._lock:
            entry = (received.entity, received.key)
            if received.method == "DELETE" or (received.body or {}).get("deleted") is True:
                self._entities.pop(entry, None)
            else:
                self._entities[entry] = dict(received.body or {})
            self.log.append(received)
            self.arrived.notify_all()
            return self._hold is not None and self._hold(received)

    def hold(self, predicate: Callable[[Received], bool]) -> None:
        """Answers to requests matching ``predicate`` wait (once applied) until ``release``."""
        self._released.clear()
        self._hold = predicate

    def release(self) -> None:
        self._hold = None
        self._released.set()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30) -> None:
        """Block until ``predicate(log)`` holds; raise ``TimeoutError`` otherwise."""
        with self._lock:
            if not self.arrived.wait_for(lambda: predicate(self.log), timeout):
                raise TimeoutError("the naive target did not receive what was awaited")

    def state(self, entity: str | None = None) -> dict[str, dict[str, Any]]:
        """What the target holds now: key -> fields (of one entity, or of the only one)."""
        with self._lock:
            return {
                k: dict(v) for (e, k), v in self._entities.items() if entity is None or e == entity
            }

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
