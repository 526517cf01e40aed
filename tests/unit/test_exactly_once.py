"""The pure parts of exactly-once capture: position records and the batching policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from cdc.capture.exactly_once import BatchPolicy, ExactlyOnce, Position, positions_topic
from cdc.config import load_config
from cdc.core.errors import BrokerUnavailable, ConfigError, DecodeError
from cdc.core.lsn import Lsn


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


class FakeTransactionalPublisher:
    """The calls ``ExactlyOnce`` makes per transaction; ``commit_fails`` makes commits raise."""

    def __init__(self, *, commit_fails: bool = False) -> None:
        self.commit_fails = commit_fails
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.calls.append("produce")

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return 0

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        if self.commit_fails:
            raise BrokerUnavailable("Kafka transaction commit failed: timed out")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")


def session(publisher: FakeTransactionalPublisher) -> ExactlyOnce:
    eos = ExactlyOnce(
        cast(Any, publisher), slot="s", topic="t", policy=BatchPolicy(max_events=10, max_ms=100)
    )
    eos.ensure_open(Lsn(100))  # the Kafka transaction begins with LSN 100 confirmable
    eos.sealed(Lsn(150), Lsn(160))  # a PostgreSQL transaction inside it, acknowledged by Kafka
    return eos


def test_nothing_past_an_aborted_transaction_is_confirmed() -> None:
    publisher = FakeTransactionalPublisher()
    eos = session(publisher)
    assert eos.confirmable(Lsn(160)) == Lsn(100)
    eos.abort()
    assert publisher.calls == ["begin", "abort"]
    # Its events were acknowledged, yet aborted: confirming them would lose them.
    assert eos.confirmable(Lsn(160)) == Lsn(100)


def test_a_failed_commit_confirms_nothing_past_the_transaction_nor_waits_on_an_abort() -> None:
    publisher = FakeTransactionalPublisher(commit_fails=True)
    eos = session(publisher)
    with pytest.raises(BrokerUnavailable):
        eos.commit()
    assert eos.confirmable(Lsn(160)) == Lsn(100)
    eos.abort()  # at shutdown: the coordinator did not answer the commit, so no abort call
    assert publisher.calls == ["begin", "produce", "flush", "commit"]
    assert eos.confirmable(Lsn(160)) == Lsn(100)


def test_a_committed_transaction_releases_its_position() -> None:
    eos = session(FakeTransactionalPublisher())
    eos.commit()
    assert eos.confirmable(Lsn(160)) == Lsn(160)
