"""Replay requests: how offsets and times given on the command line are read and checked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cdc.core.errors import ReplayError
from cdc.kafka.replay_plan import ReplayRequest, TopicOffset, parse_timestamp


def test_a_topic_partition_offset_is_read_from_the_right() -> None:
    assert TopicOffset.parse("app.public.orders:2:1200") == TopicOffset(
        "app.public.orders", 2, 1200
    )


@pytest.mark.parametrize("text", ["orders", "orders:1", "orders:x:3", ":0:1", "t:0:-1", "t:0:"])
def test_a_malformed_topic_partition_offset_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ReplayError, match="is not TOPIC:PARTITION:OFFSET"):
        TopicOffset.parse(text)


def test_a_time_without_a_zone_is_utc() -> None:
    assert parse_timestamp("2026-11-22T07:30:00") == datetime(2026, 11, 22, 7, 30, tzinfo=UTC)
    assert parse_timestamp("2026-11-22T08:30:00+01:00") == datetime(2026, 11, 22, 7, 30, tzinfo=UTC)


def test_a_request_needs_exactly_one_start_and_at_most_one_end() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ReplayError, match="exactly one"):
        ReplayRequest()
    with pytest.raises(ReplayError, match="exactly one"):
        ReplayRequest(from_beginning=True, from_timestamp=when)
    with pytest.raises(ReplayError, match="not both"):
        ReplayRequest(
            from_beginning=True,
            until_offsets=(TopicOffset("t", 0, 5),),
            until_timestamp=when,
        )
    assert ReplayRequest(from_offsets=(TopicOffset("t", 0, 5),)).from_offsets[0].offset == 5
