"""Logging set-up: human or JSON lines on stderr, secrets scrubbed, floods held back.

Invariants:
- every record passes through ``SecretScrubber``, which redacts DSN passwords and
  ``password=``/``token=`` values, and both formatters redact tracebacks the same way, so
  a secret that slips into a message or an exception text (e.g. a library's connection
  error) is never printed;
- ``RateLimit`` lets at most ``burst`` records of one kind through per ``period_s`` and
  says, on the next one it lets through, how many it held back: a library that repeats
  itself (librdkafka during a broker outage) cannot flood the log.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable, MutableMapping
from dataclasses import dataclass
from typing import Any

from cdc.core.secrets import redact_dsn

_HUMAN = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class SecretScrubber(logging.Filter):
    """Redacts credentials in the rendered message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_dsn(message)
        if clean != message:
            record.msg = clean
            record.args = None
        return True


@dataclass(slots=True)
class _Window:
    start: float
    passed: int = 0
    held: int = 0


def record_kind(record: logging.LogRecord) -> Hashable:
    """A record's kind for ``RateLimit``: logger, level, message template and first argument
    (librdkafka's facility, such as ``FAIL``: its template is the same for every line)."""
    args = record.args
    first = args[0] if isinstance(args, tuple) and args else None
    return (record.name, record.levelno, str(record.msg), str(first))


class RateLimit(logging.Filter):
    """At most ``burst`` records of a kind (``record_kind``) per ``period_s``; the first record
    let through after some were held back says how many. Thread-safe (librdkafka's lines
    arrive on whichever thread polls its client)."""

    MAX_KINDS = 1000

    def __init__(
        self,
        *,
        burst: int = 5,
        period_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.period_s = period_s
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record_kind(record)
        now = self._clock()
        with self._lock:
            window = self._windows.get(kind)
            if window is None or now - window.start >= self.period_s:
                held = 0 if window is None else window.held
                if window is None and len(self._windows) >= self.MAX_KINDS:
                    self._windows.clear()
                window = self._windows[kind] = _Window(now)
                if held:
                    record.msg = (
                        f"{record.getMessage()} ({held} more like this held back in"
                        f" {self.period_s:.0f}s)"
                    )
                    record.args = None
            if window.passed < self.burst:
                window.passed += 1
                return True
            window.held += 1
            return False


class HumanFormatter(logging.Formatter):
    """One line per record, then the traceback (redacted: exception texts carry DSNs)."""

    def __init__(self) -> None:
        super().__init__(_HUMAN)

    def formatException(self, ei: Any) -> str:
        return redact_dsn(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("lsn", "topic", "partition", "offset", "integration"):
            value = getattr(record, key, None)
            if value is not None:
                payload[key] = str(value)
        if record.exc_info:
            payload["exc"] = redact_dsn(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False)


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds fixed context (``integration=...``) to every record, merged with
    the ``extra`` of each call (``topic``, ``partition``, ``offset``, ``lsn``)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def configure(*, level: str = "INFO", fmt: str = "human") -> None:
    """Install one stderr handler on the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SecretScrubber())
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per HTTP request is noise at INFO; cdcsync logs what matters itself.
    if level.upper() == "INFO":
        logging.getLogger("httpx").setLevel(logging.WARNING)
