"""The sync role: the configured integrations' workers in one process.

``Sync.run`` opens the state store and the registry client, loads each integration's
mapper and sink (configuration errors surface before anything runs), then runs one
``SyncWorker`` per integration until stopped. Integrations are independent: one can be
paused and resumed (``pause``/``resume``) without touching the others, and a transient
failure restarts only the worker it happened in.

Invariant: a configuration error (an unknown integration, a mapper that cannot be
loaded) stops the command before any record is consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from cdc.config import Config
from cdc.core.errors import ConfigError, RetryableError, first_line
from cdc.inbound.apply import InboundWorker
from cdc.state.store import StateStore
from cdc.sync.sinks import Sink, build_sink
from cdc.sync.worker import SyncWorker
from mappers.entity import Mapper
from mappers.loader import load_mapper
from schema_registry.client import RegistryClient
from schema_registry.serde import AvroDeserializer

log = logging.getLogger("cdcsync.sync")


def select_integrations(config: Config, only: Sequence[str] | None) -> list[str]:
    """The integrations to run: ``only`` (each must exist), else all enabled ones."""
    if only:
        unknown = [name for name in only if name not in config.integrations]
        if unknown:
            known = ", ".join(sorted(config.integrations)) or "none"
            raise ConfigError(f"unknown integration {unknown[0]!r} (configured: {known})")
        return list(dict.fromkeys(only))
    names = [name for name, cfg in config.integrations.items() if cfg.enabled]
    if not names:
        raise ConfigError("integrations: none configured and enabled, nothing to sync")
    return names


def load_mappers(config: Config, names: Sequence[str]) -> dict[str, Mapper]:
    return {name: load_mapper(config.integrations[name].mapper, integration=name) for name in names}


class Sync:
    """Runs sync workers; see the module docstring."""

    def __init__(
        self, config: Config, *, only: Sequence[str] | None = None, record_latency: bool = False
    ) -> None:
        self.config = config
        self.names = select_integrations(config, only)
        self.mappers = load_mappers(config, self.names)
        self.record_latency = record_latency
        self.workers: dict[str, SyncWorker] = {}
        # Integrations that accept inbound changes also apply them (cdc.inbound.apply).
        self.inbound_workers = {
            name: InboundWorker(name, config)
            for name in self.names
            if config.integrations[name].inbound is not None
        }
        self.ready = asyncio.Event()

    def pause(self, name: str) -> None:
        self._worker(name).pause()

    def resume(self, name: str) -> None:
        self._worker(name).resume()

    def _worker(self, name: str) -> SyncWorker:
        worker = self.workers.get(name)
        if worker is None:
            raise ConfigError(f"unknown integration {name!r}")
        return worker

    async def run(self, stop: asyncio.Event) -> None:
        state = await self._open_state(stop)
        if state is None:
            return
        registry = RegistryClient.from_url(
            self.config.registry.url, auth=self.config.registry.auth()
        )
        sinks: list[Sink] = []
        try:
            deserializer = AvroDeserializer(registry)
            for name in self.names:
                sink = build_sink(name, self.config, state=state)
                sinks.append(sink)
                self.workers[name] = SyncWorker(
                    name,
                    self.config,
                    mapper=self.mappers[name],
                    sink=sink,
                    state=state,
                    deserializer=deserializer,
                    record_latency=self.record_latency,
                )
            self.ready.set()
            log.info("sync running: %s", ", ".join(self.names))
            await asyncio.gather(
                *(w.run(stop) for w in self.workers.values()),
                *(w.run(stop) for w in self.inbound_workers.values()),
            )
        finally:
            for sink in sinks:
                with contextlib.suppress(Exception):
                    await sink.close()
            with contextlib.suppress(Exception):
                await registry.aclose()
            await state.close()

    async def _open_state(self, stop: asyncio.Event) -> StateStore | None:
        delay = 0.5
        while not stop.is_set():
            try:
                return await StateStore.open(
                    self.config.state_dsn().get_secret_value(), schema=self.config.state.schema_
                )
            except RetryableError as exc:
                log.warning(
                    "state store unavailable (%s); retrying in %.1fs", first_line(exc), delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 30.0)
        return None
