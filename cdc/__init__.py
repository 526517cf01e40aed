"""cdcsync: PostgreSQL changes to Kafka, and from Kafka to the systems a team runs.

The subpackages are the layers of the data flow; each may import only the
layers below it (checked by the import contracts in ``pyproject.toml``):

- ``core``: errors, LSN, secrets, logging, supervision, backoff, circuit breaker;
- ``config``: the YAML configuration model and its loading;
- ``kafka`` and ``state``: the Kafka clients and the PostgreSQL state store,
  shared by the roles above them;
- ``inbound``: external systems writing back (HTTP endpoint, apply worker);
- ``capture`` and ``sync``: the two roles, independent of each other;
- ``ops``: admin API, metrics, status, ``check``;
- ``cli``: the command line; ``demo``: the embedded demo and its throwaway
  servers, imported only by the command line, never by the runtime.

The top-level ``mappers`` (events to entities) and ``schema_registry`` (the
registry, its client and serde) sit above ``core`` and ``config`` and below
everything that uses them.
"""

__version__ = "0.1.0"
