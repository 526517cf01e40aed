"""A Confluent-compatible schema registry: REST server, storage, compatibility, client, serde.

The server's domain (``storage``, ``compatibility``, ``service``) knows nothing
of HTTP; ``server`` is a thin layer of routes over it. ``client`` and ``serde``
are what capture uses to register schemas and frame Avro payloads in the
Confluent wire format.
"""
