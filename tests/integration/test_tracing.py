"""Tracing against real servers: one trace from a source commit to the CRM's HTTP request,
and from an inbound request to its apply, exported over OTLP/HTTP by the real commands.

Capture and sync run as child processes with ``tracing.enabled`` and every change sampled;
their spans go to a tiny OTLP/HTTP receiver in the test (``OtlpReceiver``), which decodes
the exporter's protobuf requests. The CRM (``cdc.demo.crm``) records the ``traceparent`` of
every write it receives.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from cdc.core.lsn import Lsn
from cdc.inbound.endpoint import sign
from tests.integration.harness import read_log, spawn_cdcsync
from tests.integration.inbound_harness import (
    INBOUND_SECRET,
    InboundEnv,
    wait_for_endpoint,
)
from tests.integration.sync_harness import CRM_SECRET, SyncEnv

OTLP_TOKEN = "Bearer otlp-secret-token-31337"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    attributes: dict[str, Any]


class OtlpReceiver:
    """An OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf) on a free local port."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.authorizations: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._received(body, self.headers.get("authorization"))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def _received(self, body: bytes, authorization: str | None) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attributes = {
                        a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value")
                        for a in s.attributes
                    }
                    spans.append(
                        ReceivedSpan(
                            service,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.name,
                            attributes,
                        )
                    )
        with self._lock:
            self.spans.extend(spans)
            if authorization is not None:
                self.authorizations.add(authorization)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_trace(
        self, trace_id: str, done: Callable[[list[ReceivedSpan]], bool], *, timeout: float = 30
    ) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.trace(trace_id)
            if done(spans):
                return spans
            time.sleep(0.1)
        raise AssertionError(f"trace {trace_id} incomplete: {[s.name for s in spans]}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def _tracing(otlp: OtlpReceiver, service: str) -> dict[str, Any]:
    return {
        "enabled": True,
        "sampling_ratio": 1.0,
        "service_name": service,
        "exporter": {
            "endpoint": otlp.url,
            "headers": {"authorization_env": "OTLP_AUTH"},
            "export_interval_s": 0.2,
        },
    }


def _start_traced(env: InboundEnv, otlp: OtlpReceiver) -> None:
    """Capture and sync (with the CRM's inbound side) as child processes, tracing on."""
    sync_env: SyncEnv = env.sync
    workdir: Path = sync_env.capture.workdir
    secrets = {"OTLP_AUTH": OTLP_TOKEN}
    capture_config = {**sync_env.capture.config(), "tracing": _tracing(otlp, "cdcsync-capture")}
    capture_path = workdir / "capture-traced.yaml"
    capture_path.write_text(yaml.safe_dump(capture_config))
    sync_env.capture.procs.append(
        spawn_cdcsync("capture", capture_path, workdir / "capture.log", env=secrets)
    )
    sync_env.capture.wait_for_slot()
    sync_config = {**env.config(), "tracing": _tracing(otlp, "cdcsync-sync")}
    sync_path = workdir / "sync-traced.yaml"
    sync_path.write_text(yaml.safe_dump(sync_config))
    proc = spawn_cdcsync(
        "sync",
        sync_path,
        workdir / "sync.log",
        env={"CRM_SECRET": CRM_SECRET, "CRM_INBOUND_SECRET": INBOUND_SECRET, **secrets},
    )
    sync_env.sync_procs.append(proc)
    wait_for_endpoint(env, proc)


def _wait(what: str, found: Callable[[], Any], *, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_trace_links_a_source_commit_to_the_crm_request_and_an_inbound_request_to_its_apply(
    sync_env: SyncEnv, otlp: OtlpReceiver
) -> None:
    env = InboundEnv.create(sync_env)
    _start_traced(env, otlp)

    # A source commit: its xid and where its commit record lies.
    with psycopg.connect(sync_env.dsn) as conn:
        before = Lsn.parse(str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]))  # type: ignore[index]
        xid = int(conn.execute("SELECT txid_current()").fetchone()[0])  # type: ignore[index]
        conn.execute(
            "INSERT INTO customers (id, name, email, phone) VALUES (4242, 'Traced', 't@x.io', '1')"
        )
        conn.commit()
        after = Lsn.parse(str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]))  # type: ignore[index]

    seen = _wait(
        "the CRM's write of contact 4242 with a traceparent",
        lambda: [tp for key, tp in sync_env.crm.store.traceparents() if key == "4242"],
    )
    _, trace_id, parent_span_id, flags = seen[0].split("-")
    assert int(flags, 16) & 1

    def complete(spans: list[ReceivedSpan]) -> bool:
        # The CRM integration's own spans: another integration's may arrive first.
        names = {s.name for s in spans if s.attributes.get("cdc.integration") in ("crm", None)}
        return {"capture public.customers", "apply", "map"} <= names

    spans = otlp.wait_trace(trace_id, complete)
    by_name = {s.name: s for s in spans}
    commit = by_name["capture public.customers"]
    assert commit.service == "cdcsync-capture"
    assert commit.parent_span_id == ""  # the trace starts at the source commit
    assert commit.attributes["cdc.xid"] == xid % (1 << 32)
    assert commit.attributes["cdc.table"] == "public.customers"
    assert commit.attributes["cdc.op"] == "c"
    assert before < Lsn.parse(commit.attributes["cdc.commit_lsn"]) <= after
    assert commit.attributes["messaging.destination.name"].endswith(".public.customers")
    # Sync continued the trace from the record's headers: map and apply under capture's span.
    crm_spans = [s for s in spans if s.attributes.get("cdc.integration") == "crm"]
    apply = next(s for s in crm_spans if s.name == "apply")
    assert {s.service for s in crm_spans} == {"cdcsync-sync"}
    assert apply.parent_span_id == commit.span_id
    assert any(s.name == "map" and s.parent_span_id == commit.span_id for s in crm_spans)
    # ... and the CRM's request carries the apply span as its parent.
    assert parent_span_id == apply.span_id

    # A change the CRM refuses for good is dead-lettered within its trace.
    sync_env.crm.store.set_faults(reject_keys=["4343"], status=400)
    with psycopg.connect(sync_env.dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO customers (id, name, email, phone) VALUES (4343, 'Refused', 'r@x.io', '2')"
        )
    refused = _wait(
        "the CRM's refusal of contact 4343",
        lambda: [tp for key, tp in sync_env.crm.store.traceparents() if key == "4343"],
    )
    refused_trace = refused[0].split("-")[1]
    spans = otlp.wait_trace(refused_trace, lambda spans: "dead-letter" in {s.name for s in spans})
    dead = next(s for s in spans if s.name == "dead-letter")
    refused_capture = next(s for s in spans if s.name == "capture public.customers")
    assert dead.parent_span_id == refused_capture.span_id
    assert dead.attributes["cdc.integration"] == "crm"
    assert "HTTP 400" in dead.attributes["cdc.error"]

    # An inbound request carrying a caller's traceparent: the trace goes on to the apply.
    caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    contact = sync_env.crm.store.contacts()["4242"]
    body = json.dumps(
        {"name": "Traced", "email": "from-crm@x.io", "updated_at": datetime.now(UTC).isoformat()}
    ).encode()
    key = uuid.uuid4().hex
    answer = httpx.put(
        f"{env.url}/inbound/crm/contact/{contact.id}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "X-Signature": sign(INBOUND_SECRET.encode(), body),
            "traceparent": f"00-{caller_trace}-{caller_span}-01",
        },
        timeout=15,
    )
    assert answer.status_code == 202, answer.text
    assert env.wait_outcomes({key})[key] == "applied"
    inbound = otlp.wait_trace(
        caller_trace, lambda spans: {"inbound crm", "inbound apply"} <= {s.name for s in spans}
    )
    received = next(s for s in inbound if s.name == "inbound crm")
    applied = next(s for s in inbound if s.name == "inbound apply")
    assert received.parent_span_id == caller_span
    assert applied.parent_span_id == received.span_id

    # The exporter's header reached the receiver and is in no log.
    assert otlp.authorizations == {OTLP_TOKEN}
    logs = sync_env.sync_log() + read_log(sync_env.capture.workdir / "capture.log")
    assert "otlp-secret-token" not in logs
