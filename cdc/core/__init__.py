"""Foundations every other layer uses: errors, LSN, secrets, logging, supervision, backoff.

Owns the error tree (``errors``), the ``Lsn`` value type, secret redaction,
log configuration, the restart loop of long-lived workers (``supervision``),
the one backoff policy and the circuit breaker, and the start-up heap freeze.
Imports nothing from cdcsync: it is the bottom layer.
"""
