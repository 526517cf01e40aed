"""Tracing (cdc.core.tracing): off or unsampled it leaves no header and no span; on, one
trace follows a change from capture's record headers to the HTTP request of its apply."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cdc.capture.runtime import Capture
from cdc.capture.session import CaptureSession
from cdc.config import parse_config
from cdc.core import tracing
from cdc.core.tracing import TracingSettings

CONFIG: dict[str, Any] = {
    "source": {"dsn": "postgresql://cdc@db/app", "tables": ["public.orders"]},
    "kafka": {"bootstrap_servers": "localhost:9092", "topic_prefix": "app"},
    "registry": {"url": "http://localhost:8081"},
}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    tracing.shutdown()


def _on(spans: InMemorySpanExporter, ratio: float) -> None:
    tracing.configure(
        TracingSettings(enabled=True, sampling_ratio=ratio),
        processor=SimpleSpanProcessor(spans),
    )


class _Acked:
    def offset(self) -> int:
        return 7

    def partition(self) -> int:
        return 0


def _capture_one(sampler: tracing.ChangeSampler) -> tuple[tracing.KafkaHeaders, Any]:
    delivered: list[Any] = []
    headers, callback = sampler.start(
        topic="app.public.orders",
        table="public.orders",
        op="c",
        commit_lsn="0/16B3748",
        xid=731,
        decoded_ns=1,
        headers=[("cdcsync.origin", b"x")],
        on_delivery=lambda err, msg: delivered.append((err, msg)),
    )
    return headers, (callback, delivered)


def test_tracing_off_gives_capture_no_sampler_and_records_no_trace(
    spans: InMemorySpanExporter,
) -> None:
    tracing.configure(TracingSettings(enabled=False), processor=SimpleSpanProcessor(spans))
    session = CaptureSession(Capture(parse_config(CONFIG)), "app")
    assert session.trace is None
    assert tracing.change_sampler() is None
    carried = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    assert tracing.record_context(carried) is None
    assert tracing.event_span("dead-letter", carried) == []
    with tracing.server_span("inbound crm", {"traceparent": carried[0][1].decode()}) as opened:
        assert opened is None
        assert tracing.kafka_headers() is None
    request: dict[str, str] = {}
    with tracing.applying([(None, [object()])]):
        tracing.inject_op(object(), request)
    assert request == {}
    assert spans.get_finished_spans() == ()


def test_sampling_ratio_zero_samples_no_change_and_no_request_without_a_parent(
    spans: InMemorySpanExporter,
) -> None:
    _on(spans, 0.0)
    sampler = tracing.change_sampler()
    assert sampler is not None
    assert not any(sampler.due() for _ in range(100_000))
    with tracing.server_span("inbound crm", {}) as opened:
        assert opened is None
        assert tracing.kafka_headers() is None
    assert spans.get_finished_spans() == ()


def test_sampling_ratio_picks_about_that_share_of_changes(spans: InMemorySpanExporter) -> None:
    _on(spans, 0.05)
    sampler = tracing.change_sampler()
    assert sampler is not None
    sampled = sum(sampler.due() for _ in range(40_000))
    assert 1_600 < sampled < 2_400  # 2,000 expected; 9 standard deviations either side
    assert spans.get_finished_spans() == ()  # deciding opens nothing


def test_a_sampled_change_carries_its_trace_from_the_record_to_the_http_request(
    spans: InMemorySpanExporter,
) -> None:
    _on(spans, 1.0)
    sampler = tracing.change_sampler()
    assert sampler is not None and sampler.due()
    headers, (callback, delivered) = _capture_one(sampler)
    assert headers[0] == ("cdcsync.origin", b"x")  # the change's own headers are kept
    assert spans.get_finished_spans() == ()  # open until Kafka acknowledges
    callback(None, _Acked())
    callback(None, _Acked())  # a delete's tombstone shares the callback
    assert len(delivered) == 2
    (root,) = spans.get_finished_spans()
    assert root.name == "capture public.orders"
    attributes = dict(root.attributes or {})
    assert {k: attributes[k] for k in ("cdc.commit_lsn", "cdc.table", "cdc.op", "cdc.xid")} == {
        "cdc.commit_lsn": "0/16B3748",
        "cdc.table": "public.orders",
        "cdc.op": "c",
        "cdc.xid": 731,
    }
    assert root.start_time == 1  # when decoding began
    produce, ack = root.events
    assert (produce.name, ack.name) == ("produce", "ack")
    assert (ack.attributes or {})["messaging.kafka.offset"] == 7

    # Sync: the record's context, an apply span, and the HTTP request's traceparent.
    record = tracing.record_context(headers)
    assert record is not None
    op = object()
    request: dict[str, str] = {}
    with tracing.applying([(record, [op])], {"cdc.integration": "crm"}):
        tracing.inject_op(op, request)
        tracing.inject_op(object(), other := {})
    assert other == {}
    apply = next(s for s in spans.get_finished_spans() if s.name == "apply")
    trace_id = root.context.trace_id
    assert apply.context.trace_id == trace_id
    assert apply.parent is not None and apply.parent.span_id == root.context.span_id
    version, carried_trace, parent_span, flags = request["traceparent"].split("-")
    assert (version, carried_trace) == ("00", f"{trace_id:032x}")
    assert parent_span == f"{apply.context.span_id:016x}"
    assert int(flags, 16) & 1  # sampled


def test_an_unsampled_incoming_traceparent_is_not_continued(spans: InMemorySpanExporter) -> None:
    _on(spans, 1.0)
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    assert tracing.record_context([("traceparent", unsampled.encode())]) is None
    with tracing.server_span("inbound crm", {"traceparent": unsampled}):
        assert tracing.kafka_headers() is None
    assert spans.get_finished_spans() == ()


def test_an_inbound_request_continues_the_callers_trace_onto_the_inbound_record(
    spans: InMemorySpanExporter,
) -> None:
    _on(spans, 0.0)  # the caller decided: the ratio only applies to new traces
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.server_span("inbound crm", {"traceparent": caller}):
        carried = tracing.kafka_headers()
    assert carried is not None
    with tracing.record_span("inbound apply", carried, {"cdc.integration": "crm"}):
        pass
    by_name = {s.name: s for s in spans.get_finished_spans()}
    server, apply = by_name["inbound crm"], by_name["inbound apply"]
    assert server.context.trace_id == apply.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert server.parent is not None and server.parent.span_id == 0xB7AD6B7169203331
    assert apply.parent is not None and apply.parent.span_id == server.context.span_id


def test_exporter_headers_are_secrets_in_the_config_and_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse_config(
        {
            **CONFIG,
            "tracing": {
                "enabled": True,
                "exporter": {
                    "endpoint": "http://user:hunter2@collector:4318/v1/traces",
                    "headers": {"x-plain": "plain-token-123", "authorization_env": "OTLP_AUTH"},
                },
            },
        },
        env={"OTLP_AUTH": "Bearer env-token-456"},
    )
    assert config.tracing.sampling_ratio == 0.01
    settings = config.tracing.settings()
    assert settings.headers["authorization"].get_secret_value() == "Bearer env-token-456"
    shown = repr(config) + repr(settings) + config.model_dump_json()
    with caplog.at_level(logging.DEBUG):
        tracing.configure(settings)
        tracing.shutdown()
    shown += caplog.text
    for secret in ("plain-token-123", "env-token-456", "hunter2"):
        assert secret not in shown
    assert parse_config(CONFIG).tracing.enabled is False
