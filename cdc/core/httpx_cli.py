"""Keep httpx from loading its command-line client in cdcsync's processes.

httpx's package ``__init__`` imports ``httpx._main`` (the ``httpx`` command) whenever
click, rich and pygments are installed, and they are, for cdcsync's own command line.
That cost every cdcsync process about 3 MiB of memory and 60 ms of start-up
(``import cdc.cli, cdc.capture.runtime``: 68.3 -> 65.1 MiB peak) for a command it never
runs.

Importing this module first registers a stand-in ``httpx._main`` whose ``main`` loads
the real module and runs it, so ``httpx.main`` still works. Only ``cdc.cli``, the
process entry point, imports it: code that imports cdc as a library is unaffected.

Invariant: it must be imported before httpx; once httpx is loaded it changes nothing.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_NAME = "httpx._main"


def _real_main(*args: Any, **kwargs: Any) -> Any:
    """Load the real ``httpx._main`` in place of the stand-in, then run its ``main``."""
    if sys.modules.get(_NAME) is _STAND_IN:
        del sys.modules[_NAME]
    return importlib.import_module(_NAME).main(*args, **kwargs)


_STAND_IN = types.ModuleType(_NAME, "A stand-in: the real module loads when main is called.")
_STAND_IN.__dict__["main"] = _real_main

if "httpx" not in sys.modules and _NAME not in sys.modules:
    sys.modules[_NAME] = _STAND_IN
