"""Operating the service: admin API, Prometheus metrics, status and ``cdcsync check``.

Owns what operators read and call (``admin_api``, ``metrics``, ``status``,
``check/``) and the start-up checks of the long-running commands
(``preflight``). It may import every runtime layer below it; only ``cli`` and
``demo`` import it.
"""
