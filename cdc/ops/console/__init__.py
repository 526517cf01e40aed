"""The web console on the admin listener: look before you read.

``/console/`` shows capture (slot, confirmed LSN, lag, retained WAL, events/s) and one row
per integration (state, lag, applied/s, retries, dead letters, last error), refreshing
live; ``/console/integrations/NAME`` shows one integration's throughput and lag over the
last hour, its health checks and its dead letters, and pauses, resumes and replays.

Modules: ``app`` (routes and rendering), ``session`` (who may look and act: the admin
token, session cookie, CSRF), ``sampler`` and ``series`` (the in-process history the
charts draw), ``lag`` (consumer lag), ``dead_letters`` (listing and replay),
``formatting`` (template filters); ``templates/`` and ``static/`` (the console's own
stylesheet and script, and htmx and uPlot vendored with their licences: no CDN).

Part of ``cdc.ops``: it reads the capture and sync roles and may import every runtime
layer; only ``cdc.ops.admin_api`` imports it.
"""

from cdc.ops.console.app import Console

__all__ = ["Console"]
