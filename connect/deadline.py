"""Awaiting with a deadline without losing a cancellation.

Python 3.11's ``asyncio.wait_for`` returns the inner result when the inner awaitable finishes in the same loop
turn as the outer task is cancelled, and the cancellation is gone (CPython gh-86296, fixed in 3.12 by
rewriting ``wait_for`` on ``asyncio.timeout``). A watch loop that lost its cancellation that way went on to its
next blocking query, and ``meshgw`` hung at SIGTERM until Consul answered (tests/test_ops_cli.py, one run in
about ten when a watch answer and the signal crossed). ``asyncio.timeout`` keeps it (``Task.uncancel``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], seconds: float) -> T:
    """``await aw``, raising TimeoutError after ``seconds``; a cancellation of the caller always propagates."""
    async with asyncio.timeout(seconds):
        return await aw
