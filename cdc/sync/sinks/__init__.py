"""Sinks: the external systems entities are written to (see ``cdc.sync.sinks.base``).

``build_sink`` picks the implementation from an integration's ``sink`` config.
"""

from __future__ import annotations

from cdc.config import Config, HttpSinkConfig, KafkaSinkConfig, PostgresSinkConfig
from cdc.state.store import StateStore
from cdc.sync.sinks.base import Outcome, Result, Sink
from cdc.sync.sinks.http import HttpSink
from cdc.sync.sinks.kafka import KafkaEntitySink
from cdc.sync.sinks.postgres import PostgresSink

__all__ = ["Outcome", "Result", "Sink", "build_sink"]


def build_sink(name: str, config: Config, *, state: StateStore) -> Sink:
    """The sink of integration ``name``, not yet started."""
    sink_config = config.integrations[name].sink
    if isinstance(sink_config, HttpSinkConfig):
        return HttpSink(name, sink_config, integration=name, state=state)
    if isinstance(sink_config, PostgresSinkConfig):
        return PostgresSink(name, sink_config, integration=name)
    assert isinstance(sink_config, KafkaSinkConfig)
    kafka = config.kafka
    props = {k: v for k, v in kafka.client_properties().items() if k != "bootstrap.servers"}
    return KafkaEntitySink(
        name,
        sink_config,
        integration=name,
        default_bootstrap=kafka.bootstrap_servers,
        producer_config=props,
        state=state,
    )
