"""Which integrations ``cdcsync sync`` runs, and the errors for naming one that is not there."""

from __future__ import annotations

from typing import Any

import pytest

from cdc.config import parse_config
from cdc.core.errors import ConfigError
from cdc.sync.runtime import load_mappers, select_integrations


def config(**integrations: Any) -> Any:
    return parse_config(
        {
            "source": {"dsn": "postgresql://cdc@db/app", "tables": ["public.customers"]},
            "kafka": {"bootstrap_servers": "localhost:9092", "topic_prefix": "app"},
            "registry": {"url": "http://localhost:8081"},
            "integrations": integrations,
        }
    )


def integration(**extra: Any) -> dict[str, Any]:
    return {
        "topics": ["app.public.customers"],
        "mapper": "mappers.examples:customer_to_contact",
        "sink": {"type": "http", "url": "http://crm.local/contacts/{key}"},
        **extra,
    }


def test_all_enabled_integrations_run_by_default() -> None:
    cfg = config(crm=integration(), desk=integration(enabled=False), bi=integration(paused=True))
    assert select_integrations(cfg, None) == ["crm", "bi"]


def test_naming_an_unknown_integration_lists_the_configured_ones() -> None:
    cfg = config(crm=integration())
    with pytest.raises(ConfigError, match=r"unknown integration 'crn' \(configured: crm\)"):
        select_integrations(cfg, ["crn"])


def test_nothing_to_sync_is_an_error() -> None:
    with pytest.raises(ConfigError, match="nothing to sync"):
        select_integrations(config(), None)


def test_a_mapper_that_cannot_be_loaded_fails_before_anything_runs() -> None:
    cfg = config(crm=integration(mapper="mappers.examples:no_such_mapper"))
    with pytest.raises(ConfigError, match="no_such_mapper"):
        load_mappers(cfg, ["crm"])
