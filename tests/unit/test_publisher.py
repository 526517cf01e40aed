"""The producer's settings, and fatal producer errors raised out of ``poll``/``flush``
becoming retryable broker errors.

The real case (a fenced transactional producer, tests/integration/test_exactly_once.py)
depends on where the fence lands; these pin the translation itself: confluent-kafka
raises the fatal ``KafkaException`` inside ``flush`` and, with a delivery report still
due, calls that callback with the exception pending, which Python reports as a
``SystemError`` caused by the ``KafkaException``; or ``flush`` returns nothing without
an exception (a bare ``SystemError``).
"""

from __future__ import annotations

from typing import NoReturn

import pytest
from confluent_kafka import KafkaError, KafkaException

from cdc.core.errors import BrokerUnavailable, ConfigError
from cdc.kafka.publisher import Publisher, producer_config


def fenced() -> KafkaException:
    return KafkaException(
        KafkaError(KafkaError._FENCED, "This instance has been fenced", fatal=True)
    )


class RaisingProducer:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def flush(self, _timeout: float) -> NoReturn:
        raise self.error

    def poll(self, _timeout: float) -> NoReturn:
        raise self.error


def publisher_raising(error: BaseException) -> Publisher:
    publisher = Publisher(producer_config("127.0.0.1:9", {}))
    publisher._producer = RaisingProducer(error)  # type: ignore[assignment]
    return publisher


def pending_in_callback() -> SystemError:
    try:
        raise fenced()
    except KafkaException as exc:
        try:
            raise SystemError("<function f> returned a result with an exception set") from exc
        except SystemError as system_error:
            return system_error


@pytest.mark.parametrize("call", ["flush", "poll"])
def test_a_fatal_error_out_of_the_producer_is_a_retryable_broker_error(call: str) -> None:
    for error in (fenced(), pending_in_callback()):
        with pytest.raises(BrokerUnavailable, match=f"producer {call} failed: .*fenced"):
            getattr(publisher_raising(error), call)(1.0)


def test_a_system_error_without_a_cause_is_a_retryable_broker_error_too() -> None:
    # Seen from flush once a transactional producer was fenced.
    error = SystemError("<method 'flush' of 'cimpl.Producer' objects> returned NULL")
    with pytest.raises(BrokerUnavailable, match="flush failed: SystemError: <method 'flush'"):
        publisher_raising(error).flush(1.0)


def test_only_a_producer_without_a_transactional_id_connects_to_every_broker_at_once() -> None:
    assert producer_config("b:9", {})["enable.sparse.connections"] is False
    assert "enable.sparse.connections" not in producer_config("b:9", {"transactional.id": "t"})
    assert producer_config("b:9", {"enable.sparse.connections": True})["enable.sparse.connections"]


def test_idempotence_and_acks_all_cannot_be_turned_off() -> None:
    with pytest.raises(ConfigError, match=r"kafka.properties.enable.idempotence"):
        producer_config("b:9", {"enable.idempotence": False})
    assert producer_config("b:9", {"acks": "all"})["acks"] == "all"
