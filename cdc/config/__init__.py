"""The configuration: one YAML file validated by pydantic, overridable from the environment.

Owns the models (``model``), the reusable field types (``fields``), the
reading of YAML and ``CDCSYNC_SECTION__KEY`` overrides (``sources``), the
inbound section (``inbound``) and the names derived from a configuration
(``names``: topics, groups, replication origins). Imports only ``cdc.core``.
The public names are re-exported here: ``from cdc.config import Config``.
"""

from cdc.config import model as _model
from cdc.config.model import *  # noqa: F403  (the public configuration API)

__all__ = _model.__all__
