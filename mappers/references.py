"""``module:attribute`` references in the configuration, resolved to Python objects.

``load_callable("pkg.mod:attr.sub")`` imports ``pkg.mod`` and walks ``attr.sub``. Mappers,
declarative models and inbound models and mappers are all named this way.

Invariant: every problem (bad reference, missing module or attribute, import failure) is a
``ConfigError`` naming the reference, with a close match suggested for a misspelt attribute.
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Final

from cdc.core.errors import ConfigError

__all__ = ["load_callable"]

_REF: Final = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def load_callable(ref: str) -> object:
    """The object ``ref`` (``"pkg.mod:attr.sub"``) names; ``ConfigError`` naming ``ref``."""
    if not _REF.fullmatch(ref):
        raise ConfigError(
            f"{ref!r} is not module:attribute (e.g. myapp.mappers:customer_to_contact)"
        )
    module_name, _, path = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ConfigError(f"{ref}: no module named {missing!r}") from None
        raise ConfigError(f"{ref}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise ConfigError(
            f"{ref}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: object = module
    walked = module_name
    for part in path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            public = [name for name in dir(target) if not name.startswith("_")]
            close = difflib.get_close_matches(part, public, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{ref}: {walked!r} has no attribute {part!r}{hint}") from None
        walked = f"{walked}{'.' if ':' in walked else ':'}{part}"
    return target
