"""Row changes to Debezium-compatible envelopes and Avro bytes.

Owns the PostgreSQL-to-Avro type mapping (``type_mapping``), the parsing of
PostgreSQL's text output (``pg_text``), the envelope and its schemas
(``envelope``), the writer that emits Avro bytes directly
(``envelope_writer``) and the transaction metadata topic's records
(``transaction_metadata``). Pure: no I/O. Imports ``cdc.core`` and the decoder's
message types.
"""
