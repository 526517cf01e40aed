from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from cdc.core.gcfreeze import freeze_when_ready


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_start_up_objects_are_frozen_once_the_roles_are_ready() -> None:
    class StartUpState:
        pass

    async def main() -> None:
        kept = [StartUpState() for _ in range(1000)]
        ready = asyncio.Event()
        freezing = asyncio.create_task(freeze_when_ready(ready.is_set, asyncio.Event()))
        await asyncio.sleep(0.3)
        assert gc.get_freeze_count() == 0  # not before the roles are ready
        ready.set()
        await freezing
        assert gc.get_freeze_count() >= len(kept)
        # A full collection now leaves the start-up objects alone.
        assert not any(isinstance(o, StartUpState) for o in gc.get_objects(generation=2))

    asyncio.run(main())


def test_nothing_is_frozen_when_stopping_before_ready() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        freezing = asyncio.create_task(freeze_when_ready(lambda: False, stop))
        await asyncio.sleep(0.15)
        stop.set()
        await freezing
        assert gc.get_freeze_count() == 0

    asyncio.run(main())
