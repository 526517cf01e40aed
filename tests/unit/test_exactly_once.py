"""The pure parts of exactly-once capture: position records and the batching policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.config import load_config
from cdc.errors import ConfigError, DecodeError
from cdc.exactly_once import BatchPolicy, Position, positions_topic
from cdc.lsn import Lsn


def test_a_position_round_trips_through_its_record() -> None:
    pos = Position("cdcsync", Lsn.parse("16/B374D848"), Lsn.parse("16/B374D878"), "ab12:7")

    assert Position.decode(pos.encode()) == pos
    assert b'"commit_lsn":"16/B374D848"' in pos.encode()


@pytest.mark.parametrize(
    "record", [b"not json", b"{}", b'{"slot":"s","commit_lsn":"x","end_lsn":"0/1","txn":"t"}']
)
def test_an_unreadable_position_record_is_a_decode_error_naming_the_topic(record: bytes) -> None:
    with pytest.raises(DecodeError, match="positions topic"):
        Position.decode(record)


def test_positions_live_on_one_topic_per_prefix() -> None:
    assert positions_topic("app") == "app.cdcsync.positions"


def test_a_transaction_is_committed_when_caught_up_or_big_or_old() -> None:
    policy = BatchPolicy(max_events=100, max_ms=50)

    assert not policy.due(events=0, age_ms=1000, idle=True)  # nothing to commit
    assert policy.due(events=1, age_ms=0, idle=True)  # caught up: no reason to wait
    assert not policy.due(events=99, age_ms=49, idle=False)  # a backlog: keep batching
    assert policy.due(events=100, age_ms=0, idle=False)
    assert policy.due(events=1, age_ms=50, idle=False)


def test_batching_keys_have_defaults_and_reject_nonsense(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "source: {dsn: 'postgresql://u@h/d', tables: [public.t]}\n"
        "kafka: {bootstrap_servers: 'localhost:9092', topic_prefix: app, exactly_once: true}\n"
        "registry: {url: 'http://localhost:8081'}\n"
    )
    config = load_config(path, env={})
    assert (config.kafka.transaction_max_events, config.kafka.transaction_max_ms) == (20_000, 100)
    with pytest.raises(ConfigError, match="transaction_max_events"):
        load_config(path, env={"CDCSYNC_KAFKA__TRANSACTION_MAX_EVENTS": "0"})
