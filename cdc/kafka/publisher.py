"""Publishing to Kafka: an idempotent, acks=all producer.

Its delivery reports drive the checkpoint.

Invariants:
- ``enable.idempotence`` and ``acks=all`` are always on (a user property
  cannot turn them off); per-key order holds because the key picks the
  partition (murmur2, as Java clients do) and the idempotent producer keeps
  order within a partition across retries.
- Every produced message carries a callback target; the checkpoint learns of
  each acknowledgement or failure only through ``poll``, which runs on the
  caller's thread.
- Memory is bounded: the local queue is capped (``queue.buffering.max.kbytes``)
  and ``produce`` waits (serving callbacks) instead of growing.
- librdkafka's log lines go through Python logging (``client_log``), never to stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from cdc.core.errors import BrokerUnavailable, ConfigError
from cdc.kafka.client_log import with_logger

DeliveryCallback = Callable[[Any, Any], None]

_FORCED: Mapping[str, Any] = {"enable.idempotence": True, "acks": "all"}

DEFAULTS: Mapping[str, Any] = {
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.kbytes": 16384,
    "queue.buffering.max.messages": 100000,
    "partitioner": "murmur2_random",
    "max.in.flight.requests.per.connection": 5,
    "delivery.timeout.ms": 300000,
    "message.max.bytes": 20_000_000,
}

# For a producer without a transactional.id only. Connect to every broker at once: with
# sparse connections the idempotent producer found no broker up for its producer id right
# after bootstrap and waited for its 500 ms retry, so the first event of every start and
# restart took 0.5-1 s to be acknowledged. A transactional producer waits for its id in
# init_transactions anyway, and with eager connections the successor of a fenced one
# stalled at times (2 of 10 runs of test_a_producer_fenced_mid_transaction..., 0 of 10
# with librdkafka's default).
NON_TRANSACTIONAL_DEFAULTS: Mapping[str, Any] = {"enable.sparse.connections": False}


def _broken(call: str, exc: KafkaException | SystemError) -> BrokerUnavailable:
    """A producer error raised out of ``poll``/``flush`` (a fatal one: fenced, or out of
    sequence), as the retryable error that makes the caller start over with a new producer.

    confluent-kafka raises a fatal error as ``KafkaException`` from inside ``poll`` or
    ``flush``. Around one it was also seen to fail in its own code: calling a delivery
    report with that exception pending (a ``SystemError`` caused by the
    ``KafkaException``), or returning nothing without an exception (a bare
    ``SystemError``). Either way this producer is not to be trusted further.
    """
    cause = exc if isinstance(exc, KafkaException) else exc.__cause__
    if isinstance(cause, KafkaException):
        err = cause.args[0] if cause.args else None
        detail = err.str() if isinstance(err, KafkaError) else str(cause)
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return BrokerUnavailable(f"kafka producer {call} failed: {detail}")


def producer_config(bootstrap: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka settings: our defaults, then the user's properties, then the forced ones."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, **DEFAULTS}
    if "transactional.id" not in properties:
        conf.update(NON_TRANSACTIONAL_DEFAULTS)
    for key, value in properties.items():
        if key in _FORCED and str(value).lower() != str(_FORCED[key]).lower():
            raise ConfigError(f"kafka.properties.{key}: cdcsync requires {_FORCED[key]!r}")
        conf[key] = value
    conf.update(_FORCED)
    return with_logger(conf)


class Publisher:
    """A thin owner of one ``confluent_kafka.Producer``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = with_logger(config)
        self._errors: list[str] = []
        self._config.setdefault("error_cb", self._on_error)
        try:
            self._producer = Producer(self._config)
        except KafkaException as exc:
            raise ConfigError(f"kafka producer settings rejected: {exc}") from exc
        self.produced = 0

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._errors.append(f"fatal producer error: {err.str()}")

    def check(self) -> None:
        """Raise if the producer hit a fatal error (it must then be recreated)."""
        if self._errors:
            raise BrokerUnavailable(self._errors[0])

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        on_delivery: DeliveryCallback,
        *,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Queue one message; waits (serving delivery reports) while the queue is full."""
        producer = self._producer
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery, headers=headers)
                self.produced += 1
                return
            except BufferError:
                producer.poll(0.05)
                self.check()
            except KafkaException as exc:
                raise BrokerUnavailable(f"cannot produce to {topic}: {exc}") from exc

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports; returns how many were served."""
        try:
            return int(self._producer.poll(timeout))
        except (KafkaException, SystemError) as exc:
            raise _broken("poll", exc) from exc

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still outstanding."""
        try:
            return int(self._producer.flush(timeout))
        except (KafkaException, SystemError) as exc:
            raise _broken("flush", exc) from exc

    def __len__(self) -> int:
        return len(self._producer)

    def ensure_topics(
        self,
        topics: Iterable[str],
        *,
        partitions: int,
        replication_factor: int,
        timeout: float = 30,
    ) -> None:
        """Create the topics that do not exist yet (existing ones are left as they are)."""
        wanted = sorted(set(topics))
        if not wanted:
            return
        admin = AdminClient(admin_settings(self._config))
        deadline = time.monotonic() + timeout
        try:
            meta = admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(f"cannot list topics: {exc}") from exc
        missing = [t for t in wanted if t not in meta.topics]
        if not missing:
            return
        futures = admin.create_topics(
            [
                NewTopic(t, num_partitions=partitions, replication_factor=replication_factor)
                for t in missing
            ],
            request_timeout=timeout,
        )
        for topic, fut in futures.items():
            try:
                fut.result(timeout=max(1.0, deadline - time.monotonic()))
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise BrokerUnavailable(f"cannot create topic {topic}: {exc}") from exc


def admin_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of an admin client for the cluster a producer ``config`` talks to."""
    return with_logger({"bootstrap.servers": config["bootstrap.servers"], **_security(config)})


def _security(config: Mapping[str, Any]) -> dict[str, Any]:
    """The connection/security subset of a producer config, for admin clients."""
    prefixes = ("security.", "sasl.", "ssl.", "client.id", "socket.")
    return {k: v for k, v in config.items() if k.startswith(prefixes)}
