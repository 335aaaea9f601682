"""Waiting on a condition in tests (never on the clock): poll until it holds, fail at a deadline.

``tests/`` is on ``sys.path`` (its conftest's folder), so any test imports ``from waiting import until``."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
    """Wait (polling every 5 ms) until ``cond()`` is true; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        out = cond()
        if inspect.isawaitable(out):
            out = await out
        if out:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what or getattr(cond, '__name__', 'the condition')}")
        await asyncio.sleep(0.005)
