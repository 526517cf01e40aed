"""An in-process registry: ``registry.url: sqlite:///PATH`` without a server to run.

``EmbeddedTransport(storage_url)`` opens the store and serves the registry's own ASGI
application (``schema_registry.server.create_app``) to an httpx client through
``httpx.ASGITransport``: no socket, no thread of its own, the same routes, validation,
compatibility checks and error codes as ``cdcsync registry serve``.
``RegistryClient.from_url("sqlite:///PATH")`` builds its client on it.

Invariants: several processes (``capture`` and ``sync`` run apart) may embed a registry on
the same SQLite file: writes are serialised by the store's writer lock (``BEGIN
IMMEDIATE``), so ids and versions are allocated once. The store is closed with the
transport.
"""

from __future__ import annotations

import httpx

from schema_registry.server import create_app
from schema_registry.service import RegistryService
from schema_registry.storage_url import open_storage

__all__ = ["EMBEDDED_BASE_URL", "EmbeddedTransport"]

# The base URL an in-process client's requests carry; nothing listens there.
EMBEDDED_BASE_URL = "http://embedded-registry"


class EmbeddedTransport(httpx.ASGITransport):
    """The registry application over the store ``storage_url`` names, in this process."""

    def __init__(self, storage_url: str) -> None:
        self._storage = open_storage(storage_url)
        super().__init__(app=create_app(RegistryService(self._storage)))

    async def aclose(self) -> None:
        await super().aclose()
        self._storage.close()
