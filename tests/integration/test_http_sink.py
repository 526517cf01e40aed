"""The HTTP sink against the real demo CRM and a real PostgreSQL state store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from pydantic import BaseModel

from cdc.config import HttpSinkConfig
from cdc.core.errors import SinkRejected, SinkUnavailable
from cdc.demo.crm import CrmServer
from cdc.demo.throwaway import free_port
from cdc.state.store import StateStore
from cdc.sync.sinks.base import Outcome, Result
from cdc.sync.sinks.http import HttpSink, HttpUnavailable, parse_retry_after
from mappers.entity import EntityDelete, EntityOp, EntityUpsert, Version
from tests.naive_target import NaiveTarget

T = TypeVar("T")
SECRET = "crm-signing-secret-123"


class Contact(BaseModel):
    name: str
    email: str | None = None


def up(key: str, lsn: int, name: str, email: str | None = None, **kw: Any) -> EntityUpsert:
    return EntityUpsert(
        "contact", key, Version.from_lsn(lsn, 0), Contact(name=name, email=email), **kw
    )


def rm(key: str, lsn: int) -> EntityDelete:
    return EntityDelete("contact", key, Version.from_lsn(lsn, 0))


@pytest.fixture
def crm() -> Iterator[CrmServer]:
    with CrmServer(secret=SECRET) as server:
        yield server


def sink_config(crm_url: str, **overrides: Any) -> HttpSinkConfig:
    spec: dict[str, Any] = {
        "type": "http",
        "url": crm_url + "/contacts/{key}",
        "secret": SECRET,
        "external_id_field": "id",
        "health_url": crm_url + "/health",
        "headers": {"Authorization": "Bearer header-token-456", "X-Team": "sales"},
    }
    spec.update(overrides)
    return HttpSinkConfig.model_validate(spec)


def with_sink(
    dsn: str,
    config: HttpSinkConfig,
    body: Callable[[HttpSink, StateStore], Awaitable[T]],
    *,
    integration: str = "crm",
) -> T:
    async def main() -> T:
        async with await StateStore.open(dsn) as state:
            sink = HttpSink("crm", config, integration=integration, state=state)
            await sink.start()
            try:
                return await body(sink, state)
            finally:
                await sink.close()

    return asyncio.run(main())


def stats(crm: CrmServer) -> dict[str, int]:
    return httpx.get(crm.url + "/_stats").json()  # type: ignore[no-any-return]


def fields(crm: CrmServer) -> dict[str, dict[str, Any]]:
    return {k: c.fields for k, c in crm.store.contacts().items()}


def test_upserts_and_deletes_are_applied_and_their_versions_saved(
    pg_dsn: str, crm: CrmServer
) -> None:
    async def body(sink: HttpSink, state: StateStore) -> None:
        ops: list[EntityOp] = [up("1", 10, "Ada", "ada@x"), up("2", 11, "Bob"), rm("2", 12)]
        assert await sink.apply(ops) == [Outcome.APPLIED] * 3
        assert await state.versions("crm", "contact", keys=["1", "2"]) == {
            "1": (Version.from_lsn(10, 0), False),
            "2": (Version.from_lsn(12, 0), True),
        }

    with_sink(pg_dsn, sink_config(crm.url), body)
    assert fields(crm) == {"1": {"name": "Ada", "email": "ada@x"}}


def test_replaying_a_batch_sends_no_request_and_reports_duplicates(
    pg_dsn: str, crm: CrmServer
) -> None:
    ops: list[EntityOp] = [up("1", 10, "Ada"), up("2", 11, "Bob"), rm("1", 12)]

    async def body(sink: HttpSink, state: StateStore) -> None:
        await sink.apply(ops)
        before = stats(crm)["requests"]
        assert await sink.apply(ops) == [Outcome.OLDER, Outcome.DUPLICATE, Outcome.DUPLICATE]
        assert await sink.apply([up("2", 5, "ancient")]) == [Outcome.OLDER]
        assert stats(crm)["requests"] == before

    with_sink(pg_dsn, sink_config(crm.url), body)
    assert fields(crm) == {"2": {"name": "Bob", "email": None}}


def test_a_delete_is_not_undone_by_an_older_upsert_arriving_later(
    pg_dsn: str, crm: CrmServer
) -> None:
    async def body(sink: HttpSink, state: StateStore) -> None:
        assert await sink.apply([up("1", 10, "Ada"), rm("1", 30)]) == [Outcome.APPLIED] * 2
        assert await sink.apply([up("1", 20, "late")]) == [Outcome.OLDER]
        assert await sink.apply([rm("9", 40), up("9", 35, "x")]) == [
            Outcome.APPLIED,
            Outcome.OLDER,
        ]

    with_sink(pg_dsn, sink_config(crm.url), body)
    assert fields(crm) == {}


def test_the_target_holding_a_newer_write_makes_an_upsert_older_and_unsaved(
    pg_dsn: str, crm: CrmServer
) -> None:
    with_sink(pg_dsn, sink_config(crm.url), lambda sink, _: sink.apply([up("1", 50, "new")]))

    async def body(sink: HttpSink, state: StateStore) -> None:
        assert await sink.apply([up("1", 40, "stale")]) == [Outcome.OLDER]
        assert await state.versions("other", "contact", keys=["1"]) == {}

    with_sink(pg_dsn, sink_config(crm.url), body, integration="other")
    assert fields(crm) == {"1": {"name": "new", "email": None}}


def test_a_server_error_raises_sink_unavailable_with_retry_after_and_a_retry_applies(
    pg_dsn: str, crm: CrmServer
) -> None:
    crm.store.set_faults(status=503, count=1, retry_after=3)

    async def body(sink: HttpSink, state: StateStore) -> None:
        with pytest.raises(HttpUnavailable) as caught:
            await sink.apply([up("1", 10, "Ada")])
        assert isinstance(caught.value, SinkUnavailable)
        assert caught.value.retry_after_s == 3.0
        assert "503" in str(caught.value)
        assert await sink.apply([up("1", 10, "Ada")]) == [Outcome.APPLIED]

    with_sink(pg_dsn, sink_config(crm.url), body)
    assert fields(crm) == {"1": {"name": "Ada", "email": None}}


def test_throttling_raises_sink_unavailable(pg_dsn: str, crm: CrmServer) -> None:
    crm.store.set_faults(status=429, count=5)

    async def body(sink: HttpSink, state: StateStore) -> None:
        with pytest.raises(SinkUnavailable) as caught:
            await sink.apply([up("1", 10, "Ada")])
        assert getattr(caught.value, "retry_after_s", None) is None

    with_sink(pg_dsn, sink_config(crm.url), body)


def test_a_refused_key_is_rejected_in_its_slot_while_the_others_apply(
    pg_dsn: str, crm: CrmServer
) -> None:
    crm.store.set_faults(reject_keys=["42"], status=400)

    async def body(sink: HttpSink, state: StateStore) -> None:
        results = await sink.apply([up("1", 10, "Ada"), up("42", 11, "Bad"), up("3", 12, "Cy")])
        assert results[0] is Outcome.APPLIED
        assert isinstance(results[1], SinkRejected)
        assert "400" in str(results[1])
        assert "'42'" in str(results[1])
        assert results[2] is Outcome.APPLIED
        saved = await state.versions("crm", "contact", keys=["1", "42", "3"])
        assert sorted(saved) == ["1", "3"]

    with_sink(pg_dsn, sink_config(crm.url), body)
    assert sorted(fields(crm)) == ["1", "3"]


def test_a_wrong_secret_is_refused_by_the_server_and_not_shown_in_the_error(
    pg_dsn: str, crm: CrmServer
) -> None:
    config = sink_config(crm.url, secret="not-the-right-secret")

    async def body(sink: HttpSink, state: StateStore) -> None:
        [result] = await sink.apply([up("1", 10, "Ada")])
        assert isinstance(result, SinkRejected)
        assert "401" in str(result)
        assert "not-the-right-secret" not in str(result)
        assert "header-token-456" not in str(result)

    with_sink(pg_dsn, config, body)
    assert fields(crm) == {}
    assert stats(crm)["rejected"] == 1


def test_the_targets_id_is_recorded_in_the_identity_map(pg_dsn: str, crm: CrmServer) -> None:
    async def body(sink: HttpSink, state: StateStore) -> dict[str, str]:
        await sink.apply([up("a", 10, "Ada"), up("b", 11, "Bob")])
        return await state.external_ids("crm", "contact", keys=["a", "b"])

    ids = with_sink(pg_dsn, sink_config(crm.url), body)
    assert ids == {key: crm.store.contacts()[key].id for key in ("a", "b")}
    assert sorted(ids.values()) == ["crm-1", "crm-2"]


def test_unavailable_fields_are_not_sent_so_the_target_keeps_them(
    pg_dsn: str, crm: CrmServer
) -> None:
    placeholder = "__debezium_unavailable_value"

    async def body(sink: HttpSink, state: StateStore) -> None:
        await sink.apply([up("1", 10, "Ada", "ada@example.com")])
        toast = up("1", 20, "Ada L.", placeholder, unavailable=frozenset({"email"}))
        assert await sink.apply([toast]) == [Outcome.APPLIED]

    with_sink(pg_dsn, sink_config(crm.url), body)
    assert fields(crm) == {"1": {"name": "Ada L.", "email": "ada@example.com"}}


def test_many_versions_of_many_keys_end_with_each_keys_newest(pg_dsn: str, crm: CrmServer) -> None:
    ops: list[EntityOp] = []
    for round_ in range(3):
        for k in range(40):
            lsn = 100 + round_ * 100 + k
            ops.append(
                rm(str(k), lsn) if round_ == 1 and k % 4 == 0 else up(str(k), lsn, f"r{round_}")
            )

    async def body(sink: HttpSink, state: StateStore) -> None:
        assert await sink.apply(ops) == [Outcome.APPLIED] * len(ops)

    with_sink(pg_dsn, sink_config(crm.url), body)
    assert fields(crm) == {str(k): {"name": "r2", "email": None} for k in range(40)}
    assert stats(crm)["older"] == 0


def test_keys_and_entities_are_url_quoted(pg_dsn: str, crm: CrmServer) -> None:
    async def body(sink: HttpSink, state: StateStore) -> list[Any]:
        return await sink.apply([up("a/b c?", 10, "Odd")])

    assert with_sink(pg_dsn, sink_config(crm.url), body) == [Outcome.APPLIED]
    assert fields(crm) == {"a/b c?": {"name": "Odd", "email": None}}


def test_probe_follows_the_health_url(pg_dsn: str, crm: CrmServer) -> None:
    async def body(sink: HttpSink, state: StateStore) -> None:
        await sink.probe()
        crm.store.set_faults(status=500, count=1)
        with pytest.raises(SinkUnavailable):
            await sink.probe()
        await sink.probe()

    with_sink(pg_dsn, sink_config(crm.url), body)


def test_an_unreachable_target_raises_sink_unavailable_without_credentials(pg_dsn: str) -> None:
    url = f"http://user:url-pass-789@127.0.0.1:{free_port()}"
    config = sink_config(url, timeout_s=2.0)

    async def body(sink: HttpSink, state: StateStore) -> None:
        with pytest.raises(SinkUnavailable) as caught:
            await sink.apply([up("1", 10, "Ada")])
        assert "url-pass-789" not in str(caught.value)
        with pytest.raises(SinkUnavailable) as probed:
            await sink.probe()
        assert "url-pass-789" not in str(probed.value)
        assert await state.versions("crm", "contact", keys=["1"]) == {}

    with_sink(pg_dsn, config, body)


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert (
        parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now)
        == 30.0
    )
    assert (
        parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    )
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_a_replay_beside_the_live_worker_never_sends_an_older_version_after_a_newer(
    pg_dsn: str,
) -> None:
    """Issue 16.3: check, send and save are atomic per key. The live worker's v30 reached
    the naive target (which trusts whatever arrives); a replay of v20 running beside it
    must wait for the key and then skip v20, not send it after v30."""

    async def waiting_for_a_key_lock() -> bool:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            row = await cur.fetchone()
            return row is not None and row[0] > 0

    async def main(target: NaiveTarget) -> Result:
        config = HttpSinkConfig.model_validate(
            {"type": "http", "url": target.url + "/contact/{key}"}
        )
        async with (
            await StateStore.open(pg_dsn, schema="lww_replay") as live_state,
            await StateStore.open(pg_dsn, schema="lww_replay") as replay_state,
        ):
            live = HttpSink("crm", config, integration="crm", state=live_state)
            replay = HttpSink("crm", config, integration="crm", state=replay_state)
            await live.start()
            await replay.start()
            try:
                target.hold(lambda received: True)
                live_call = asyncio.create_task(live.apply([up("1", 30, "newer")]))
                await asyncio.to_thread(target.wait_for, lambda log: len(log) == 1)
                replay_call = asyncio.create_task(replay.apply([up("1", 20, "older")]))
                while len(target.log) < 2 and not await waiting_for_a_key_lock():
                    await asyncio.sleep(0.02)
                target.release()
                assert await live_call == [Outcome.APPLIED]
                [outcome] = await replay_call
                return outcome
            finally:
                await live.close()
                await replay.close()

    with NaiveTarget() as target:
        outcome = asyncio.run(main(target))
        assert target.state("contact") == {"1": {"name": "newer", "email": None}}
        assert [r.body["name"] for r in target.log if r.body] == ["newer"]
    assert outcome is Outcome.OLDER
