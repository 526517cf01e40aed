"""Opt-in OpenTelemetry tracing: one trace per sampled change, from the commit to the target.

``configure(settings)`` (the ``tracing:`` section, ``cdc.config.tracing``) sets up a tracer
provider with an OTLP exporter; until it is called with ``enabled: true`` nothing here does
any work. The hops of a change and the helpers they call:

- capture (``cdc.capture.session``): ``change_sampler()`` once per session; per sampled
  change ``ChangeSampler.start`` opens one ``capture {table}`` span (commit LSN, table, op,
  xid): it starts when the change's batch was read and decoding began, marks the hand-over
  to the producer (event ``produce``) and ends at Kafka's acknowledgement (event ``ack``
  with partition and offset, or an error status); the record carries its ``traceparent``.
  One span, not three, since a sampled change's cost is mostly its spans (bench/capture.py);
- sync (``cdc.sync.worker``): ``record_context`` reads a record's headers; ``span`` wraps
  the mapping, ``applying`` the sink call (one ``apply`` span per traced record),
  ``event_span`` marks a dead letter (its ``traceparent`` goes on the dead-letter record);
  the HTTP sink adds ``traceparent`` to a request with ``inject_op``;
- inbound: ``server_span`` starts or continues (incoming ``traceparent``) a trace per request,
  ``kafka_headers`` carries it on the inbound topic, ``record_span`` continues it in the apply.

Invariants:

- No cost when off: ``ENABLED`` is False and ``change_sampler()`` is None; capture's hot
  path checks that one value per change, sync and inbound check ``ENABLED`` once per batch
  or request, and nothing is allocated, drawn or parsed.
- Sampling is decided once per change, at capture (or per inbound request without a
  parent, at the endpoint), with probability ``sampling_ratio``: a countdown drawn from the
  geometric distribution, so an unsampled change costs one decrement. Every later hop
  follows the decision carried in ``traceparent`` (a parent-based sampler); an unsampled
  change carries no header and starts no span anywhere.
- Headers follow W3C Trace Context: ``traceparent``/``tracestate`` on Kafka records (bytes)
  and on HTTP requests.
- The exporter's headers are secrets: held as ``SecretStr`` until handed to the exporter,
  never logged or shown in ``repr``; the endpoint is logged with credentials redacted.
- Tracing never stops the data path: spans are exported in the background by the SDK,
  whose failures are logged, not raised.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import SecretStr

from cdc.core.errors import ConfigError
from cdc.core.secrets import redact_dsn

if TYPE_CHECKING:  # the SDK is imported by ``configure`` only: nothing to load when off
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "ENABLED",
    "ChangeSampler",
    "TracingSettings",
    "applying",
    "change_sampler",
    "configure",
    "event_span",
    "inject_op",
    "kafka_headers",
    "record_context",
    "record_span",
    "server_span",
    "shutdown",
    "span",
]

log = logging.getLogger("cdcsync.tracing")

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
_CARRIED: Final = (TRACEPARENT, TRACESTATE)

KafkaHeaders = list[tuple[str, str | bytes | None]]
# A consumed record's headers, as confluent-kafka gives them.
RecordHeaders = Sequence[tuple[str, Any]] | Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """What ``configure`` needs (built by ``cdc.config.tracing.TracingConfig.settings``)."""

    enabled: bool = False
    sampling_ratio: float = 0.01
    service_name: str = "cdcsync"
    endpoint: str = field(default="http://localhost:4318/v1/traces", repr=False)
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    headers: Mapping[str, SecretStr] = field(default_factory=dict, repr=False)
    timeout_s: float = 10.0
    export_interval_s: float = 5.0


# The process's state: set by ``configure``, read by the helpers below.
ENABLED: bool = False
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_ratio: float = 0.0
_PROPAGATOR: Final = TraceContextTextMapPropagator()
# While a sink applies a batch: id(operation) -> the context of its record's apply span.
_OP_CONTEXTS: ContextVar[dict[int, Context] | None] = ContextVar("cdc_op_contexts", default=None)


def configure(
    settings: TracingSettings,
    *,
    exporter: SpanExporter | None = None,
    processor: SpanProcessor | None = None,
) -> None:
    """Set up (or, with ``enabled`` false, turn off) tracing for this process.

    ``exporter``/``processor`` replace the OTLP exporter and its batch processor (tests use
    the SDK's in-memory exporter with a simple processor).
    """
    global ENABLED, _provider, _tracer, _ratio
    shutdown()
    if not settings.enabled:
        return
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased  # noqa: PLC0415

    where = "the given exporter" if exporter or processor else redact_dsn(settings.endpoint)
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(ALWAYS_ON),  # roots are decided here (see the docstring)
    )
    if processor is None:
        processor = BatchSpanProcessor(
            exporter or _otlp_exporter(settings),
            schedule_delay_millis=max(1, int(settings.export_interval_s * 1000)),
        )
    provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("cdcsync")
    _ratio = settings.sampling_ratio
    ENABLED = True
    log.info(
        "tracing on: sampling %g of changes, exporting to %s (%s)",
        settings.sampling_ratio,
        where,
        settings.protocol,
    )


def shutdown() -> None:
    """Export what is pending and turn tracing off."""
    global ENABLED, _provider, _tracer
    ENABLED = False
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        with contextlib.suppress(Exception):
            provider.shutdown()


def _otlp_exporter(settings: TracingSettings) -> SpanExporter:
    headers = {name: value.get_secret_value() for name, value in settings.headers.items()}
    if settings.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found] # noqa: PLC0415
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise ConfigError(
                "tracing.exporter.protocol grpc needs the package "
                "opentelemetry-exporter-otlp-proto-grpc (or use http/protobuf)"
            ) from None
        exporter: SpanExporter = GrpcExporter(
            endpoint=settings.endpoint, headers=headers, timeout=settings.timeout_s
        )
        return exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter(endpoint=settings.endpoint, headers=headers, timeout=settings.timeout_s)


def _traceparent(span: Span) -> bytes:
    ctx = span.get_span_context()
    return b"00-%032x-%016x-%02x" % (ctx.trace_id, ctx.span_id, int(ctx.trace_flags))


# --------------------------------------------------------------------------- capture


class ChangeSampler:
    """Capture's per-session sampler and span factory; see the module docstring."""

    def __init__(self, tracer: trace.Tracer, ratio: float) -> None:
        self._tracer = tracer
        self._ratio = ratio
        self._random = random.Random()
        self._countdown = self._draw()

    def _draw(self) -> int:
        """Changes until the next sampled one (1 = the next), geometric with ``ratio``."""
        ratio = self._ratio
        if ratio >= 1.0:
            return 1
        if ratio <= 0.0:
            return 1 << 62
        return int(math.log(1.0 - self._random.random()) / math.log(1.0 - ratio)) + 1

    def due(self) -> bool:
        """Whether this change is sampled: called exactly once per change."""
        self._countdown -= 1
        if self._countdown > 0:
            return False
        self._countdown = self._draw()
        return True

    def start(
        self,
        *,
        topic: str,
        table: str,
        op: str,
        commit_lsn: object,
        xid: int,
        decoded_ns: int,
        headers: KafkaHeaders | None,
        on_delivery: Callable[[Any, Any], None],
    ) -> tuple[KafkaHeaders, Callable[[Any, Any], None]]:
        """Open the span of a sampled change: (its record headers, its delivery callback).

        The callback ends the span at Kafka's acknowledgement (or failure), then calls
        ``on_delivery``; a delete's tombstone shares it and only the first report counts.
        """
        opened = self._tracer.start_span(
            f"capture {table}",
            start_time=decoded_ns,
            kind=SpanKind.PRODUCER,
            attributes={
                "cdc.commit_lsn": str(commit_lsn),
                "cdc.table": table,
                "cdc.op": op,
                "cdc.xid": xid,
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
            },
        )
        opened.add_event("produce")
        carried: KafkaHeaders = [(TRACEPARENT, _traceparent(opened))]
        open_ = [opened]

        def delivered(err: Any, msg: Any) -> None:
            if open_:
                open_.clear()
                if err is not None:
                    opened.set_status(Status(StatusCode.ERROR, str(err)))
                else:
                    with contextlib.suppress(Exception):
                        opened.add_event(
                            "ack",
                            {
                                "messaging.destination.partition.id": str(msg.partition()),
                                "messaging.kafka.offset": int(msg.offset()),
                            },
                        )
                opened.end()
            on_delivery(err, msg)

        return (carried if headers is None else [*headers, *carried]), delivered


def change_sampler() -> ChangeSampler | None:
    """A sampler for one capture session, or None when tracing is off."""
    if not ENABLED or _tracer is None:
        return None
    return ChangeSampler(_tracer, _ratio)


# --------------------------------------------------------------------------- consumers


def record_context(headers: RecordHeaders) -> Context | None:
    """The sampled trace a Kafka record carries in its headers, else None."""
    if not ENABLED or not headers:
        return None
    carrier: dict[str, str] = {}
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        if name in _CARRIED and value is not None:
            carrier[name] = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if TRACEPARENT not in carrier:
        return None
    ctx = _PROPAGATOR.extract(carrier)
    remote = trace.get_current_span(ctx).get_span_context()
    if not remote.is_valid or not remote.trace_flags.sampled:
        return None
    return ctx


@contextlib.contextmanager
def span(
    name: str,
    parent: Context | None,
    attributes: Mapping[str, str | int] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span | None]:
    """A span under ``parent`` (current while the block runs); nothing when ``parent`` is
    None. An exception leaving the block marks the span as failed."""
    tracer = _tracer
    if parent is None or tracer is None:
        yield None
        return
    with tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=dict(attributes or {})
    ) as opened:
        yield opened


@contextlib.contextmanager
def record_span(
    name: str,
    headers: RecordHeaders,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[Span | None]:
    """``span`` continuing the trace a Kafka record carries (nothing when it carries none)."""
    with span(name, record_context(headers), attributes, kind=SpanKind.CONSUMER) as opened:
        yield opened


def event_span(
    name: str,
    headers: RecordHeaders,
    attributes: Mapping[str, str | int] | None = None,
) -> KafkaHeaders:
    """Record a moment (a dead letter) in the record's trace: the headers that continue it."""
    parent = record_context(headers)
    if parent is None or _tracer is None:
        return []
    marked = _tracer.start_span(name, context=parent, attributes=dict(attributes or {}))
    marked.end()
    return [(TRACEPARENT, _traceparent(marked))]


@contextlib.contextmanager
def applying(
    records: Iterable[tuple[Context | None, Sequence[object]]],
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[None]:
    """One ``apply`` span per traced record while a sink applies a batch.

    ``records``: (record context, the operations it mapped to). While the block runs,
    ``inject_op`` finds an operation's span; an exception marks every span as failed.
    """
    tracer = _tracer
    if not ENABLED or tracer is None:
        yield
        return
    opened: list[Span] = []
    by_op: dict[int, Context] = {}
    for parent, ops in records:
        if parent is None:
            continue
        applied = tracer.start_span(
            "apply", context=parent, attributes={**(attributes or {}), "cdc.operations": len(ops)}
        )
        opened.append(applied)
        ctx = trace.set_span_in_context(applied)
        for op in ops:
            by_op[id(op)] = ctx
    if not opened:
        yield
        return
    token = _OP_CONTEXTS.set(by_op)
    try:
        yield
    except BaseException as exc:
        for applied in opened:
            applied.record_exception(exc)
            applied.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        _OP_CONTEXTS.reset(token)
        for applied in opened:
            applied.end()


def inject_op(op: object, headers: dict[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) of ``op``'s record to an HTTP request's
    headers, when that record is traced (inside ``applying``)."""
    contexts = _OP_CONTEXTS.get()
    if contexts:
        ctx = contexts.get(id(op))
        if ctx is not None:
            _PROPAGATOR.inject(headers, context=ctx)


# --------------------------------------------------------------------------- inbound


@contextlib.contextmanager
def server_span(name: str, headers: Mapping[str, str]) -> Iterator[Span | None]:
    """A span for one inbound request: continuing the caller's ``traceparent``, or a new
    trace sampled at ``sampling_ratio``. Current while the block runs (``kafka_headers``)."""
    tracer = _tracer
    if not ENABLED or tracer is None:
        yield None
        return
    carrier = {k: headers[k] for k in _CARRIED if headers.get(k) is not None}
    if TRACEPARENT in carrier:
        parent: Context | None = _PROPAGATOR.extract(carrier)
    elif random.random() < _ratio:
        parent = Context()  # a new trace
    else:
        yield None
        return
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as opened:
        yield opened


def kafka_headers() -> KafkaHeaders | None:
    """The current trace's context as Kafka record headers; None outside a sampled span."""
    if not ENABLED:
        return None
    current = trace.get_current_span().get_span_context()
    if not current.is_valid or not current.trace_flags.sampled:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return [(name, value.encode()) for name, value in carrier.items()]
