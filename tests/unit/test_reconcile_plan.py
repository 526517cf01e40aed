"""Reconcile without servers: field comparison, the report and its exit codes, keyed
snapshot requests, schedules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from cdc.capture.pgoutput import Column, Relation
from cdc.capture.snapshot.plan import ProgressKey
from cdc.capture.snapshot.runner import TableShape
from cdc.capture.source_setup import TableName
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


def test_a_keyed_snapshot_request_keeps_its_keys_in_the_progress_record() -> None:
    key = ProgressKey("incremental", "snapshot-1", ("5",), (("5",), ("9",)))
    assert ProgressKey.from_json(json.loads(json.dumps(key.to_json()))) == key
    whole = ProgressKey("incremental", "snapshot-2", None)
    assert "keys" not in whole.to_json()
    assert ProgressKey.from_json(whole.to_json()) == whole
    assert ProgressKey.from_json({**key.to_json(), "keys": "5"}) is None


def test_a_keyed_chunk_reads_only_the_given_primary_keys_after_the_last_one() -> None:
    relation = Relation(
        1, "public", "t", "d", (Column(True, "a", 20, -1), Column(True, "b", 25, -1))
    )
    shape = TableShape(TableName("public", "t"), relation, (0, 1), ("bigint", "text"))
    query, params = shape.chunk_query(after=("1", "x"), limit=10, only=(("1", "y"), ("2", "z")))
    text = query.as_string(None)
    assert 'WHERE ("t"."a", "t"."b") > (CAST(%s AS bigint), CAST(%s AS text))' in text
    assert 'AND ("t"."a", "t"."b") IN (SELECT CAST(k.v->>0 AS bigint)' in text
    assert params == ["1", "x", json.dumps([["1", "y"], ["2", "z"]])]
    _, params = shape.chunk_query(after=None, limit=10, only=(("3", "w"),))
    assert params == [json.dumps([["3", "w"]])]


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
