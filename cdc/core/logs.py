"""Logging set-up: human or JSON lines on stderr, secrets scrubbed.

Invariant: every record passes through ``SecretScrubber``, which redacts
DSN passwords and ``password=``/``token=`` values, and both formatters redact
tracebacks the same way, so a secret that slips into a message or an exception
text (e.g. a library's connection error) is never printed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
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
