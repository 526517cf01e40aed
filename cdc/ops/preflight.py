"""What ``cdcsync run``, ``capture`` and ``sync`` ask before any role starts.

A server that refuses for good stops the command with one line and the error's exit code
(README, "Exit codes"), before capture creates its publication or slot and before sync
joins a consumer group:

- the source database (capture) and the state store (sync) refusing the connection:
  authentication failed, unknown role or database, no LOGIN or CONNECT
  (``SourceRefused``, exit 3);
- Kafka not answering within ``BROKER_START_S``, or refusing the client
  (``BrokerRefused``, exit 4);
- the schema registry refusing the credentials, 401 or 403 (``RegistryRefused``, exit 5).

What may pass (a database or registry that is unreachable or restarting) is logged as a
warning and left to the roles, which retry with the reason in the log, ``/ready`` and
``status``. When several servers refuse, the first of source, Kafka, registry is reported.
Invariant: read-only, like ``cdcsync check``: nothing is created anywhere.
"""

from __future__ import annotations

import asyncio
import logging

from cdc.capture import source_setup
from cdc.config import Config
from cdc.core.errors import (
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
    RetryableError,
    first_line,
)
from cdc.kafka.probe import probe_broker
from schema_registry.client import RegistryClient, RetryPolicy

__all__ = ["BROKER_START_S", "preflight"]

log = logging.getLogger("cdcsync.start")

BROKER_START_S = 10.0
"""How long Kafka may take to answer at start before the command gives up (exit 4)."""

_REGISTRY_TIMEOUT_S = 5.0


async def preflight(config: Config, *, capture: bool, sync: bool) -> None:
    """Raise the error of the first server that refuses for good (see the module)."""
    dsns = [config.source.dsn.get_secret_value()] if capture else []
    if sync:
        dsns.append(config.state_dsn().get_secret_value())
    results = await asyncio.gather(
        *(_database(dsn) for dsn in dict.fromkeys(dsns)),
        asyncio.to_thread(probe_broker, config.kafka.client_properties(), timeout_s=BROKER_START_S),
        _registry(config),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _database(dsn: str) -> None:
    try:
        conn = await source_setup.connect(dsn)
    except RetryableError as exc:  # unreachable: the roles retry
        log.warning("%s; retrying once running", first_line(exc))
        return
    await conn.close()


async def _registry(config: Config) -> None:
    registry = config.registry
    if registry.is_embedded:
        return
    client = RegistryClient.from_url(
        str(registry.url),
        auth=registry.auth(),
        timeout=_REGISTRY_TIMEOUT_S,
        retry=RetryPolicy(attempts=1),
    )
    try:
        await client.get_compatibility()
    except RegistryUnavailable as exc:
        log.warning("%s; retrying once running", first_line(exc))
    except RegistryRefused:
        raise
    except RegistryError:
        pass  # another client error (a registry without GET /config) is not a refusal
    finally:
        await client.aclose()
