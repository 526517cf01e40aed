"""librdkafka's own log lines, routed through Python logging.

Every Kafka client cdcsync creates (producer, consumer, admin) gets ``logger`` in its
settings (``with_logger``): confluent-kafka then queues librdkafka's lines and hands them
to ``LIBRDKAFKA`` when the client is polled, instead of librdkafka printing
``%3|...|rdkafka#producer|...`` on stderr itself. They reach the configured handler
(human or JSON lines, secrets scrubbed) as records of the logger ``cdcsync.librdkafka``,
at the level librdkafka gave them.

Invariant: ``LIBRDKAFKA`` carries a ``RateLimit`` (``cdc.core.logs``): at most
``BURST`` lines of one kind (level and facility, e.g. ``FAIL``) per ``PERIOD_S``, then a
count of those held back, so a broker outage (a line per reconnect attempt, every
client) cannot flood the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cdc.core.logs import RateLimit

BURST = 5
PERIOD_S = 60.0

LIBRDKAFKA = logging.getLogger("cdcsync.librdkafka")
LIBRDKAFKA.addFilter(RateLimit(burst=BURST, period_s=PERIOD_S))


def with_logger(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with librdkafka's lines sent to ``LIBRDKAFKA`` (see the module)."""
    return {**settings, "logger": LIBRDKAFKA}
