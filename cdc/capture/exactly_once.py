"""Exactly-once into Kafka (``kafka.exactly_once: true``): transactions and the positions topic.

Capture's events and its position are committed together. Several PostgreSQL
transactions are batched into one Kafka transaction, which also carries one
record on the positions topic (``{topic_prefix}.cdcsync.positions``, one
partition, compacted, keyed by slot name) naming the commit LSN of the newest
PostgreSQL transaction it contains. On start, after ``init_transactions``
(which fences a previous producer with the same ``transactional.id`` and
aborts its open transaction), the last committed position is read with
``isolation.level=read_committed`` and every PostgreSQL transaction whose
commit LSN is not newer is skipped: it is already in Kafka.

Invariants:
- A PostgreSQL transaction is never split across Kafka transactions: a Kafka
  transaction is committed only between PostgreSQL transactions. A huge
  (streamed, spooled) transaction becomes one large Kafka transaction, which
  must finish within the producer's ``transaction.timeout.ms``.
- The LSN confirmed to PostgreSQL never passes what a committed Kafka
  transaction holds: while a Kafka transaction is open, confirmation stays at
  the position confirmed when it began (``confirmable``).
- Every event carries the header ``cdcsync.txn`` naming the Kafka transaction
  that wrote it (``{session}:{n}``); the position record names it too.
- Several slots with one topic prefix share the positions topic. A slot's
  committed position behind another slot's open transaction is not yet
  visible to read_committed readers: a restart at that moment reads an older
  position and re-sends (duplicates, never losses).
- Any failure of a transactional call (fenced, fatal, abortable, timed out)
  raises ``BrokerUnavailable``: capture is torn down and restarts, and the new
  producer's ``init_transactions`` aborts whatever the old one left open.
  Aborting on the way out is only a courtesy that ends the open transaction
  sooner for read_committed readers, so it waits at most ``ABORT_TIMEOUT_S``:
  a fenced producer's abort may never be answered, and waiting the full
  transaction timeout for it would stall capture for a minute. A commit first
  waits for its events' acknowledgements (up to the transaction timeout: a
  streamed transaction can be large), then at most ``COMMIT_TIMEOUT_S`` for the
  end of the transaction, which a healthy broker answers at once; a commit that
  failed is not aborted again: the coordinator is not answering, and the next
  producer's ``init_transactions`` ends the transaction.
- After an abort or a failed commit, nothing past where that transaction began
  is confirmed: Kafka acknowledged its events, but read_committed readers never
  see them, so the slot must send them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from cdc.core.errors import BrokerUnavailable, DecodeError
from cdc.core.lsn import ZERO, Lsn
from cdc.kafka.publisher import Publisher, admin_settings

log = logging.getLogger("cdcsync.exactly_once")

TXN_HEADER = "cdcsync.txn"
_POSITIONS_SUFFIX = "cdcsync.positions"
# How far back from the end of the positions topic the first read looks (doubled until found).
_FIRST_WINDOW = 64
ABORT_TIMEOUT_S = 5.0
COMMIT_TIMEOUT_S = 10.0


def positions_topic(prefix: str) -> str:
    """The topic holding each slot's last committed position."""
    return f"{prefix}.{_POSITIONS_SUFFIX}"


@dataclass(frozen=True, slots=True)
class Position:
    """The newest PostgreSQL transaction a committed Kafka transaction holds."""

    slot: str
    commit_lsn: Lsn
    end_lsn: Lsn
    txn: str

    def encode(self) -> bytes:
        return json.dumps(
            {
                "slot": self.slot,
                "commit_lsn": str(self.commit_lsn),
                "end_lsn": str(self.end_lsn),
                "txn": self.txn,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Position:
        try:
            raw = json.loads(data)
            return cls(
                slot=str(raw["slot"]),
                commit_lsn=Lsn.parse(raw["commit_lsn"]),
                end_lsn=Lsn.parse(raw["end_lsn"]),
                txn=str(raw["txn"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DecodeError(f"unreadable record on the positions topic: {exc}") from exc


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When an open Kafka transaction is committed (always between PostgreSQL transactions)."""

    max_events: int = 20_000
    max_ms: float = 100.0

    def due(self, *, events: int, age_ms: float, idle: bool) -> bool:
        """``idle``: the replication stream had nothing more to read right now."""
        return events > 0 and (idle or events >= self.max_events or age_ms >= self.max_ms)


def _raise_broker(what: str, exc: KafkaException) -> BrokerUnavailable:
    err = exc.args[0] if exc.args else None
    detail = err.str() if isinstance(err, KafkaError) else str(exc)
    return BrokerUnavailable(f"Kafka transaction {what} failed: {detail}")


class TransactionalPublisher(Publisher):
    """A publisher whose producer has a ``transactional.id``: produce only inside a transaction."""

    @property
    def settings(self) -> dict[str, Any]:
        """The producer's librdkafka settings (secrets included: never log them)."""
        return self._config

    def init_transactions(self, timeout: float) -> None:
        try:
            self._producer.init_transactions(timeout)
        except KafkaException as exc:
            raise _raise_broker("initialisation (init_transactions)", exc) from exc

    def begin_transaction(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise _raise_broker("begin", exc) from exc

    def commit_transaction(self, timeout: float) -> None:
        try:
            self._producer.commit_transaction(timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.txn_requires_abort():
                self.abort_transaction(min(timeout, ABORT_TIMEOUT_S))
            raise _raise_broker("commit", exc) from exc

    def abort_transaction(self, timeout: float) -> None:
        try:
            self._producer.abort_transaction(timeout)
        except KafkaException as exc:
            log.warning("aborting the Kafka transaction failed: %s", exc)


class ExactlyOnce:
    """The transactional side of one capture session (one producer, one slot)."""

    def __init__(
        self,
        publisher: TransactionalPublisher,
        *,
        slot: str,
        topic: str,
        policy: BatchPolicy,
        timeout_s: float = 60.0,
    ) -> None:
        self.publisher = publisher
        self.slot = slot
        self.topic = topic
        self.policy = policy
        self.timeout_s = timeout_s
        self.session = uuid.uuid4().hex[:12]
        self.committed: Position | None = None  # the last position known to be in Kafka
        self.open = False
        self.headers: list[tuple[str, str | bytes | None]] = []
        self.txn = ""
        self.commits = 0
        self._events = 0
        self._opened_at = 0.0
        self._safe_lsn = ZERO
        # A transaction was aborted or its commit failed: this session confirms nothing past
        # where that transaction began (capture restarts after it).
        self._abandoned = False
        self._last: tuple[Lsn, Lsn] | None = None
        self._failure: str | None = None

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        """Create the positions topic, fence older producers, read the committed position."""
        await asyncio.to_thread(self._ensure_topic)
        await asyncio.to_thread(self.publisher.init_transactions, self.timeout_s)
        self.committed = await asyncio.to_thread(
            read_position, self.publisher.settings, self.topic, self.slot, self.timeout_s
        )
        if self.committed is not None:
            log.info(
                "exactly-once: transactions up to commit LSN %s are already in Kafka",
                self.committed.commit_lsn,
            )

    def _ensure_topic(self) -> None:
        admin = AdminClient(admin_settings(self.publisher.settings))
        try:
            if self.topic in admin.list_topics(timeout=self.timeout_s).topics:
                return
            fut = admin.create_topics(
                [NewTopic(self.topic, 1, 1, config={"cleanup.policy": "compact"})],
                request_timeout=self.timeout_s,
            )[self.topic]
            fut.result(timeout=self.timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerUnavailable(f"cannot create topic {self.topic}: {exc}") from exc

    # ------------------------------------------------------------------ per transaction

    def already_committed(self, commit_lsn: Lsn) -> bool:
        """Whether the PostgreSQL transaction committed at ``commit_lsn`` is already in Kafka."""
        return self.committed is not None and commit_lsn <= self.committed.commit_lsn

    def ensure_open(self, flush_lsn: Lsn) -> None:
        """Begin a Kafka transaction if none is open; ``flush_lsn``: what is confirmable now."""
        if self.open:
            return
        self.publisher.begin_transaction()
        self.open = True
        self._events = 0
        self._opened_at = time.monotonic()
        self._safe_lsn = flush_lsn
        self.txn = f"{self.session}:{self.commits + 1}"
        self.headers = [(TXN_HEADER, self.txn)]

    def event_headers(self, flush_lsn: Lsn) -> list[tuple[str, str | bytes | None]]:
        """Open a transaction if needed, count one event; the headers it must carry."""
        self.ensure_open(flush_lsn)
        self._events += 1
        return self.headers

    def sealed(self, commit_lsn: Lsn, end_lsn: Lsn) -> None:
        """A PostgreSQL transaction published inside the open Kafka transaction has ended."""
        self._last = (commit_lsn, end_lsn)

    def due(self, *, idle: bool) -> bool:
        if not self.open or self._last is None:
            return False
        age_ms = (time.monotonic() - self._opened_at) * 1000
        return self.policy.due(events=self._events, age_ms=age_ms, idle=idle)

    def confirmable(self, flush_lsn: Lsn) -> Lsn:
        """The LSN that may be confirmed: never inside an open (uncommitted) Kafka transaction,
        nor inside one that was aborted or whose commit failed (its events are not in Kafka
        for read_committed readers, although Kafka acknowledged them)."""
        guarded = self.open or self._abandoned
        return min(flush_lsn, self._safe_lsn) if guarded else flush_lsn

    def commit(self) -> None:
        """Write the position and commit (blocking: waits for every delivery)."""
        last = self._last
        if not self.open or last is None:
            return
        position = Position(self.slot, last[0], last[1], self.txn)
        self.publisher.produce(
            self.topic, self.slot.encode(), position.encode(), self._on_position_delivery
        )
        # The events first, for as long as they take (a streamed transaction can be large);
        # then only the end of the transaction is left, which a broker answers at once.
        try:
            undelivered = self.publisher.flush(self.timeout_s)
        except BrokerUnavailable:  # a fatal producer error (fenced): the next producer ends it
            self._abandoned = True
            raise
        if undelivered:
            self._abandoned = True
            raise BrokerUnavailable(
                f"{undelivered} events of Kafka transaction {self.txn} were not acknowledged"
                f" within {self.timeout_s:.0f} s"
            )
        try:
            self.publisher.commit_transaction(min(self.timeout_s, COMMIT_TIMEOUT_S))
        except BrokerUnavailable:
            # Aborted already if the error asked for it; otherwise (timed out, fenced) the
            # coordinator does not answer us: the next producer ends the transaction.
            self._abandoned = True
            raise
        if self._failure is not None:
            raise BrokerUnavailable(f"the position record was not delivered: {self._failure}")
        self.open = False
        self.committed = position
        self.commits += 1
        self._last = None

    async def finish(self, *, clean: bool) -> None:
        """At shutdown: commit the open transaction if ``clean`` (at a boundary), else abort."""
        if self.open:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.commit if clean else self.abort)

    def abort(self) -> None:
        if self.open:
            if not self._abandoned:  # a failed commit already aborted it, or cannot
                self.publisher.abort_transaction(min(self.timeout_s, ABORT_TIMEOUT_S))
            self.open = False
            self._abandoned = True
            self._last = None

    def _on_position_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None and self._failure is None:
            self._failure = str(err)


def read_position(
    settings: dict[str, Any], topic: str, slot: str, timeout: float = 30.0
) -> Position | None:
    """The newest committed position of ``slot`` (read_committed), or None if there is none.

    Reads a window at the end of the (single-partition) topic, doubling it
    until a record of the slot is found or the whole topic has been read.
    """
    consumer = Consumer(
        {
            **admin_settings(settings),
            "group.id": f"cdcsync-positions-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    key = slot.encode()
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
        window = _FIRST_WINDOW
        end = high
        while end > low:
            start = max(low, end - window)
            found = _last_of(consumer, topic, key, start=start, end=end, timeout=timeout)
            if found is not None:
                return found
            end, window = start, window * 2
        return None
    except KafkaException as exc:
        raise BrokerUnavailable(f"cannot read the positions topic {topic}: {exc}") from exc
    finally:
        consumer.close()


def _last_of(
    consumer: Consumer, topic: str, key: bytes, *, start: int, end: int, timeout: float
) -> Position | None:
    found = positions_between(consumer, topic, key, start=start, end=end, timeout=timeout)
    return found[-1] if found else None


def positions_between(
    consumer: Consumer,
    topic: str,
    key: bytes,
    *,
    start: int,
    end: int | None = None,
    timeout: float,
) -> list[Position]:
    """The positions of ``key`` at offsets ``[start, end)`` (``None``: to the end), in order.

    ``consumer`` must have ``enable.partition.eof`` on (the end is where it reports EOF).
    """
    consumer.assign([TopicPartition(topic, 0, start)])
    deadline = time.monotonic() + timeout
    found: list[Position] = []
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return found
            raise BrokerUnavailable(f"cannot read the positions topic {topic}: {err.str()}")
        offset = msg.offset()
        if end is not None and offset is not None and offset >= end:
            return found
        value = msg.value()
        if msg.key() == key and value is not None:
            found.append(Position.decode(value))
    raise BrokerUnavailable(f"reading the positions topic {topic} timed out")
