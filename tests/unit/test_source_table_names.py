"""Which tables ``source.tables`` can name, and what the error says about the others."""

from __future__ import annotations

import pytest

from cdc.config import parse_config
from cdc.core.errors import ConfigError

BASE = {
    "kafka": {"bootstrap_servers": "localhost:9092", "topic_prefix": "app"},
    "registry": {"url": "http://localhost:8081"},
}


def _tables(*tables: str) -> list[str]:
    config = parse_config({**BASE, "source": {"dsn": "postgresql://cdc@db/app", "tables": tables}})
    return list(config.source.tables)


def _error(table: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _tables(table)
    return str(caught.value)


def test_mixed_case_names_are_taken_as_the_catalog_spells_them_quoted_or_not() -> None:
    assert _tables('public."CustomerNotes"', "Sales.Orders", '"Sales"."Refunds"') == [
        "public.CustomerNotes",
        "Sales.Orders",
        "Sales.Refunds",
    ]


def test_the_same_table_quoted_and_unquoted_is_listed_twice() -> None:
    assert "listed twice" in _error_of_both('public."Orders"', "public.Orders")


def _error_of_both(*tables: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _tables(*tables)
    return str(caught.value)


@pytest.mark.parametrize(
    "table", ['public."Customer Notes"', 'public."quo""te"', 'public."a.b"', "public.my$table"]
)
def test_a_name_that_needs_quoting_for_other_reasons_is_refused_with_the_rule(table: str) -> None:
    message = _error(table)
    assert message.startswith(f"source.tables[0]: {table!r} cannot be captured")
    assert "letters, digits and _" in message
    assert "rename the table" in message
