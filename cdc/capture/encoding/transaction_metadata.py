"""Debezium's transaction metadata topic (``provide.transaction.metadata``): BEGIN and END.

With ``source.provide_transaction_metadata`` on, every PostgreSQL transaction that
touched a captured table is framed on the topic ``{prefix}.transaction`` by two records,
as Debezium 3.x writes them through Confluent's AvroConverter:

- key ``io.debezium.connector.common.TransactionMetadataKey`` {``id``};
- value ``io.debezium.connector.common.TransactionMetadataValue`` {``status`` (BEGIN or
  END), ``id``, ``event_count`` (END only), ``data_collections`` (END only: one
  ``event.collection`` {``data_collection`` (``schema.table``), ``event_count``} per
  table, in the iteration order of Debezium's java.util.HashMap), ``ts_ms`` (the commit
  time)}.

Invariants:
- ``id`` is ``txId:lsn`` as Debezium's offset holds it: the LSN of the Begin message for
  BEGIN, of the Commit message for END (the events in between carry ``txId:<their LSN>``
  in their own ``transaction`` block).
- ``event_count`` counts the data events published (tombstones and skipped operations
  are not events); a transaction whose only changes were skipped still gets BEGIN and END
  with 0, as Debezium's does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from cdc.capture.encoding.pg_text import java_hashmap_order

__all__ = ["TransactionFrame", "transaction_key_schema", "transaction_value_schema"]

BEGIN: Final = "BEGIN"
END: Final = "END"


def transaction_topic(prefix: str) -> str:
    """Debezium's default ``topic.transaction`` under ``prefix``."""
    return f"{prefix}.transaction"


def transaction_key_schema() -> dict[str, Any]:
    return {
        "type": "record",
        "name": "TransactionMetadataKey",
        "namespace": "io.debezium.connector.common",
        "fields": [{"name": "id", "type": "string"}],
        "connect.version": 1,
        "connect.name": "io.debezium.connector.common.TransactionMetadataKey",
    }


def transaction_value_schema() -> dict[str, Any]:
    collection = {
        "type": "record",
        "name": "collection",
        "namespace": "event",
        "fields": [
            {"name": "data_collection", "type": "string"},
            {"name": "event_count", "type": "long"},
        ],
        "connect.version": 1,
        "connect.name": "event.collection",
    }
    return {
        "type": "record",
        "name": "TransactionMetadataValue",
        "namespace": "io.debezium.connector.common",
        "fields": [
            {"name": "status", "type": "string"},
            {"name": "id", "type": "string"},
            {"name": "event_count", "type": ["null", "long"], "default": None},
            {
                "name": "data_collections",
                "type": ["null", {"type": "array", "items": ["null", collection]}],
                "default": None,
            },
            {"name": "ts_ms", "type": "long"},
        ],
        "connect.version": 1,
        "connect.name": "io.debezium.connector.common.TransactionMetadataValue",
    }


@dataclass(slots=True)
class TransactionFrame:
    """One transaction's BEGIN, its event counts per table, and its END."""

    xid: int
    begin_lsn: int
    commit_ts_us: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def begin_id(self) -> str:
        return f"{self.xid}:{self.begin_lsn}"

    def counted(self, data_collection: str) -> None:
        """One data event of ``data_collection`` (``schema.table``) was published."""
        self.counts[data_collection] = self.counts.get(data_collection, 0) + 1

    def begin(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The BEGIN record: key and value."""
        key = {"id": self.begin_id}
        return key, {
            "status": BEGIN,
            "id": self.begin_id,
            "event_count": None,
            "data_collections": None,
            "ts_ms": self.commit_ts_us // 1000,
        }

    def end(self, commit_lsn: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The END record at the Commit message's LSN: key and value."""
        end_id = f"{self.xid}:{commit_lsn}"
        collections = [
            {"data_collection": name, "event_count": self.counts[name]}
            for name in java_hashmap_order(list(self.counts))
        ]
        return {"id": end_id}, {
            "status": END,
            "id": end_id,
            "event_count": sum(self.counts.values()),
            "data_collections": collections,
            "ts_ms": self.commit_ts_us // 1000,
        }
