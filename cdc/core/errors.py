"""The project's exceptions, split by what the caller can do about them.

::

    CdcsyncError                      base of everything cdcsync raises
    +-- ConfigError                   the configuration is wrong; fix it and restart (fatal)
    +-- RetryableError                transient; retrying the same operation may succeed
    |   +-- SourceUnavailable         PostgreSQL unreachable / connection lost
    |   +-- BrokerUnavailable         Kafka unreachable / delivery timed out
    |   +-- RegistryUnavailable       schema registry unreachable or answered 5xx
    |   +-- SinkUnavailable           a sink's target is down or throttling
    |   +-- RelationPending           a mapper needs a related entity not yet synced
    +-- FatalError                    retrying will not help; stop and tell the operator
        +-- SourceSetupError          wal_level, privileges, slot in use, unknown table...
        +-- SourceRefused             authentication failed, unknown role or database (exit 3)
        +-- BrokerRefused             Kafka unreachable or refusing at start (exit 4)
        +-- DecodeError               a replication message could not be decoded
        +-- SchemaError               a derived schema is invalid or was rejected
        |   +-- IncompatibleSchemaError   the registry rejected a schema change (names columns)
        +-- RegistryError             the registry answered a 4xx (carries error_code)
        |   +-- RegistryRefused       it refuses the credentials, 401/403 (exit 5)
        +-- MappingError              a mapper failed on an event (dead-letterable)
        +-- SinkRejected              a sink refused an entity for good (dead-letterable)
        +-- ReplayError               a replay cannot be served as asked (range, partition)

Library exceptions (psycopg, confluent_kafka, httpx) are translated at the
edges with ``raise ... from``; code in the middle only sees these classes.
Messages never contain secrets: DSNs are shown without passwords.

``exit_code`` is the status a command exits with when the error stops it (the
table in the README): 1 by default, 2 for configuration, 3 to 5 for what a
server refuses for good.
"""

from __future__ import annotations


class CdcsyncError(Exception):
    """Base class of every error cdcsync raises."""

    exit_code: int = 1


class ConfigError(CdcsyncError):
    """The configuration is invalid; the message names the key and the reason."""

    exit_code = 2


class RetryableError(CdcsyncError):
    """A transient failure: the same operation may succeed if retried."""


class SourceUnavailable(RetryableError):
    """The source database is unreachable or the connection was lost."""


class BrokerUnavailable(RetryableError):
    """Kafka is unreachable or a delivery timed out."""


class RegistryUnavailable(RetryableError):
    """The schema registry is unreachable or answered with a server error."""


class SinkUnavailable(RetryableError):
    """A sink's target is down, timing out or throttling."""


class RelationPending(RetryableError):
    """A mapper refers to a related entity whose external id is not known yet.

    The event waits and is retried; it is never dropped or dead-lettered for this.
    """

    def __init__(self, *, integration: str, entity: str, key: str) -> None:
        super().__init__(
            f"waiting for {integration}/{entity} {key!r}: its external id is not known yet"
        )
        self.integration = integration
        self.entity = entity
        self.key = key


class FatalError(CdcsyncError):
    """Retrying will not help; the operator must act."""


class SourceSetupError(FatalError):
    """The source database is not set up for capture (wal_level, privileges, slot...)."""


class SourceRefused(FatalError):
    """The source (or state) database refuses the connection for good: authentication
    failed, the role or the database does not exist, or the role may not connect."""

    exit_code = 3


class BrokerRefused(FatalError):
    """Kafka did not answer at start, or refused the client (authentication, TLS)."""

    exit_code = 4


class DecodeError(FatalError):
    """A logical replication message could not be decoded."""


class SchemaError(FatalError):
    """A schema could not be derived, parsed or registered."""


class IncompatibleSchemaError(SchemaError):
    """The registry rejected a new schema version as incompatible."""


class RegistryError(FatalError):
    """The schema registry answered with a client error.

    ``error_code`` is Confluent's code (40401, 42201, 409...), ``status`` the HTTP status.
    """

    def __init__(self, message: str, *, error_code: int, status: int) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status = status


class RegistryRefused(RegistryError):
    """The schema registry refuses the configured credentials (HTTP 401 or 403)."""

    exit_code = 5


class MappingError(FatalError):
    """A mapper failed on an event; the event is dead-lettered, not lost."""


class SinkRejected(FatalError):
    """A sink's target refused an entity permanently (4xx other than conflicts)."""


class ReplayError(FatalError):
    """A replay request names offsets, times or partitions the topics do not have."""


def first_line(exc: BaseException) -> str:
    """The first line of a library error's text (its detail lines may quote SQL or data)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
