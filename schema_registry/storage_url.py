"""``open_storage(url)``: the registry store a storage URL names (SQLite file or PostgreSQL).

Invariant: an unsupported or malformed URL is a ``ConfigError`` naming it; nothing is
created for it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from cdc.core.errors import ConfigError
from schema_registry.storage import SqliteStorage, Storage
from schema_registry.storage_pg import PostgresStorage

__all__ = ["open_storage"]


def open_storage(url: str) -> Storage:
    """Open the store named by ``sqlite:///path/file.db`` or ``postgresql://...``.

    ``sqlite:///relative.db`` is relative to the working directory and
    ``sqlite:////abs/path.db`` is absolute (SQLAlchemy's convention); the
    path's parent directory must exist. A libpq ``key=value`` connection string
    is accepted for PostgreSQL as well as a ``postgresql://`` URL.
    """
    scheme = urlsplit(url).scheme.lower()
    if "://" not in url and "=" in url:
        scheme = "postgresql"  # a libpq key=value connection string
    if scheme == "sqlite":
        if not url.lower().startswith("sqlite:///"):
            raise ConfigError(f"registry storage {url!r}: expected sqlite:///PATH")
        path = unquote(url[len("sqlite:///") :])
        if not path:
            raise ConfigError(f"registry storage {url!r}: the SQLite path is empty")
        return SqliteStorage(path)
    if scheme in ("postgresql", "postgres"):
        return PostgresStorage(url)
    raise ConfigError(
        f"registry storage: unsupported URL scheme {scheme!r}; use sqlite:///PATH or postgresql://"
    )
