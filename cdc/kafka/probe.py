"""Whether Kafka answers, asked once at start before anything is created.

``probe_broker`` asks the cluster for its metadata until it answers or ``timeout_s``
passes. A broker that refuses the client (authentication, authorization, TLS) fails at
once; one that cannot be reached (refused port, unknown host, no answer) is asked again
every second until the time is up. Either way the result is ``BrokerRefused``: the
command stops with its exit code instead of creating a replication slot that would hold
WAL for a pipeline that cannot publish.

Blocking (librdkafka): run it in a thread. librdkafka's lines go through Python logging
(``client_log``) like every other client's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from cdc.core.errors import BrokerRefused
from cdc.kafka.publisher import admin_settings

__all__ = ["probe_broker"]

# librdkafka errors that asking again will not cure.
_REFUSALS = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.ILLEGAL_SASL_STATE,
        KafkaError.UNSUPPORTED_SASL_MECHANISM,
    }
)


def probe_broker(settings: Mapping[str, Any], *, timeout_s: float) -> int:
    """The number of brokers of the cluster ``settings`` name; ``BrokerRefused`` if it
    refuses the client or does not answer within ``timeout_s`` (see the module)."""
    bootstrap = settings["bootstrap.servers"]
    refused: list[KafkaError] = []
    errors: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        (refused if err.code() in _REFUSALS else errors).append(err)

    conf: dict[str, Any] = {**admin_settings(settings), "error_cb": on_error}
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        wait = max(0.1, min(1.0, deadline - time.monotonic()))
        try:
            meta = admin.list_topics(timeout=wait)
        except KafkaException as exc:
            last = exc.args[0].str() if exc.args else str(exc)
        else:
            return len(meta.brokers)
        finally:
            admin.poll(0)  # serve error_cb and librdkafka's log lines
        if refused:
            raise BrokerRefused(f"Kafka at {bootstrap} refuses the client: {refused[0].str()}")
        if time.monotonic() >= deadline:
            why = errors[-1].str() if errors else last
            raise BrokerRefused(
                f"Kafka at {bootstrap} did not answer within {timeout_s:.0f}s: {why}"
            )
