"""``cdcsync check``: configuration, connectivity, privileges and health, in plain words.

Owns the findings and report (``report``), the source checks (``source``)
and the checks of Kafka, the registry, the state store, sinks and inbound
(``services``). Only reads; never creates anything.
"""
