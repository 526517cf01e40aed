"""Log records: JSON lines with context, secrets redacted in both formats."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from cdc.core.logs import ContextLogger, RateLimit, configure

DSN = "postgresql://cdc:hunter2-secret@db.example:5432/app"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_integration_and_record_position(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(level="INFO", fmt="json")
    log = ContextLogger(logging.getLogger("cdcsync.sync"), {"integration": "crm"})
    log.warning(
        "dead-lettering", extra={"topic": "app.public.customers", "partition": 0, "offset": 42}
    )
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["integration"] == "crm"
    assert (line["topic"], line["partition"], line["offset"]) == ("app.public.customers", "0", "42")
    assert line["level"] == "warning"


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_a_dsn_password_never_reaches_the_output(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(level="INFO", fmt=fmt)
    log = logging.getLogger("cdcsync.capture")
    log.error("cannot connect to %s", DSN)
    try:
        raise ConnectionError(f"connection to {DSN} refused")
    except ConnectionError:
        log.exception("capture failed")
    err = capsys.readouterr().err
    assert "hunter2-secret" not in err
    assert "db.example" in err  # the rest of the address stays, for diagnosis


def test_a_flood_of_one_kind_is_held_back_and_counted_while_other_kinds_pass(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(level="INFO", fmt="json")
    now = [0.0]
    log = logging.getLogger("cdcsync.test.flood")
    limit = RateLimit(burst=3, period_s=60.0, clock=lambda: now[0])
    log.addFilter(limit)
    try:
        for attempt in range(1000):  # librdkafka: one line per reconnect attempt
            log.error("%s [%s] %s", "FAIL", "rdkafka#producer-1", f"connect failed ({attempt})")
        log.error("%s [%s] %s", "ERROR", "rdkafka#producer-1", "1/1 brokers are down")
        now[0] = 61.0
        log.error("%s [%s] %s", "FAIL", "rdkafka#producer-1", "connect failed (again)")
    finally:
        log.removeFilter(limit)
    lines = [json.loads(x) for x in capsys.readouterr().err.strip().splitlines()]
    messages = [line["message"] for line in lines]
    assert messages == [
        "FAIL [rdkafka#producer-1] connect failed (0)",
        "FAIL [rdkafka#producer-1] connect failed (1)",
        "FAIL [rdkafka#producer-1] connect failed (2)",
        "ERROR [rdkafka#producer-1] 1/1 brokers are down",
        "FAIL [rdkafka#producer-1] connect failed (again) (997 more like this held back in 60s)",
    ]
