"""Which asyncio event loop the facade runs on: uvloop when it is installed (its wake-ups and callbacks cost
less than the default selector loop's, which the facade pays a few times per call), else asyncio's own.
PML_UVLOOP=0 chooses asyncio's loop even when uvloop is there (bench/facade_loop.py compares the two)."""
from __future__ import annotations

import asyncio
import os
from typing import Awaitable, Callable, Optional

from common.options import as_bool


def loop_factory() -> Optional[Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop's loop constructor, or None for asyncio's default loop."""
    if not as_bool(os.environ.get("PML_UVLOOP"), True, name="PML_UVLOOP"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    return "uvloop" if loop_factory() is not None else "asyncio"


def run(main: Awaitable):
    """asyncio.run(main) on the loop chosen above."""
    factory = loop_factory()
    if factory is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
