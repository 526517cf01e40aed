"""Reconcile without servers: field comparison, the report and its exit codes, keyed
snapshot requests, schedules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from cdc.config import ReconcileConfig
from cdc.ops.reconcile.report import (
    EXIT_DRIFT,
    EXIT_EQUAL,
    EXIT_FAILED,
    Drift,
    Report,
    compare_fields,
)
from cdc.ops.reconcile.runner import parse_keys
from cdc.ops.reconcile.schedule import next_run


def test_fields_that_mean_the_same_value_compare_equal_and_others_are_named() -> None:
    expected = {"amount": "10.50", "count": 3, "tags": ["a"], "name": "Ann", "phone": None}
    actual: dict[str, Any] = {"amount": "10.50", "count": 3.0, "tags": ["a"], "name": "Anne"}
    assert compare_fields(expected, actual) == ("name",)
    assert compare_fields(expected, {**actual, "phone": "1"}) == ("name", "phone")


def test_the_exit_code_says_equal_drift_or_failed() -> None:
    report = Report("crm", "http")
    assert (report.result, report.exit_code) == ("equal", EXIT_EQUAL)
    report.drifts.append(Drift("different", "contact", "7", "public.customers", ("7",), ("name",)))
    assert (report.result, report.exit_code) == ("drift", EXIT_DRIFT)
    report.error = "target down"
    assert (report.result, report.exit_code) == ("failed", EXIT_FAILED)


def test_the_report_lists_each_key_with_its_differing_fields_in_text_and_json() -> None:
    report = Report("crm", "http", started_at=datetime(2026, 1, 1, tzinfo=UTC))
    report.rows_checked = 12
    report.drifts = [
        Drift("missing", "contact", "1", "public.customers", ("1",)),
        Drift("extra", "contact", "99"),
        Drift("different", "contact", "7", "public.customers", ("7",), ("name", "email")),
    ]
    text = report.to_text()
    assert "missing   contact 1 (source public.customers 1)" in text
    assert "extra     contact 99" in text
    assert "different contact 7 (source public.customers 7): name, email" in text
    assert "crm: drift: 12 rows checked, 1 missing, 1 extra, 1 different" in text
    data = json.loads(report.to_json())
    assert (data["missing"], data["extra"], data["different"]) == (1, 1, 1)
    assert data["drift"][2]["fields"] == ["name", "email"]
    assert data["exit_code"] == EXIT_DRIFT


def test_keys_on_the_command_line_split_composite_keys_at_commas() -> None:
    assert parse_keys(["7", "1, x"]) == (("7",), ("1", "x"))


def test_a_schedule_is_every_period_or_the_next_cron_time() -> None:
    assert next_run(ReconcileConfig(every="6h"), after=100.0) == 100.0 + 6 * 3600
    assert next_run(ReconcileConfig(every="30m"), after=0.0) == 1800.0
    noon = datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    assert next_run(ReconcileConfig(cron="0 */6 * * *"), after=noon) == noon + 6 * 3600
    assert next_run(ReconcileConfig(), after=0.0) is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"every": "6 hours"}, "is not a duration"),
        ({"cron": "every day"}, "is not a cron expression"),
        ({"every": "6h", "cron": "0 * * * *"}, "either every or cron"),
    ],
)
def test_a_bad_schedule_is_a_configuration_error(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReconcileConfig(**section)
