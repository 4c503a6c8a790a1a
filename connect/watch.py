"""The one blocking-query loop every Consul watch uses (consul-template's watch/ in one function).

Rules from Consul's blocking-query documentation (consul.md §1): send the last ``X-Consul-Index``
with ``wait``; a return is no promise of change; if the index goes backwards reset it to 0; never
block with index 0 twice in a row without a pause; on errors back off exponentially with jitter
instead of looping tightly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("meshgw.watch")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
# Quick returns with no change in a row before the loop slows itself down (token-bucket spirit, burst 2).
QUICK_RETURNS = 2
QUICK = 0.05


class WatchError(Exception):
    """A failed query, with a short cause for the log (never a token)."""


@dataclass
class WatchHealth:
    """Up/down state across all watches: one log line per state change, not per retry."""

    on_change: Callable[[bool], None] | None = None
    up: bool | None = None
    last_success: float = 0.0
    failing: dict[str, str] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)  # watches that have had at least one answer

    def success(self, name: str) -> None:
        self.last_success = time.time()
        self.answered.add(name)
        self.failing.pop(name, None)
        if not self.failing and self.up is not True:
            if self.up is False:
                log.info("consul reachable again: watches resumed")
            self.up = True
            if self.on_change:
                self.on_change(True)

    def failure(self, name: str, cause: str) -> None:
        first = name not in self.failing
        self.failing[name] = cause
        if self.up is not False:
            log.warning("consul unreachable (%s: %s): serving the last good state, retrying", name, cause)
            self.up = False
            if self.on_change:
                self.on_change(False)
        elif first:
            log.debug("watch %s failing too: %s", name, cause)


def backoff_delay(failures: int) -> float:
    """Capped exponential backoff with full jitter (AWS architecture blog's 'full jitter')."""
    cap = min(BACKOFF_MAX, BACKOFF_MIN * (2 ** min(failures, 10)))
    return random.uniform(cap / 2, cap)


async def blocking_watch(
    name: str,
    fetch: Callable[[int], Awaitable[tuple[int, Any]]],
    on_data: Callable[[Any], None],
    health: WatchHealth,
) -> None:
    """Run until cancelled. ``fetch(index)`` returns (X-Consul-Index, decoded data) or raises WatchError."""
    index = 0
    last: Any = object()
    failures = 0
    quick = 0
    while True:
        started = time.monotonic()
        try:
            new_index, data = await fetch(index)
        except WatchError as e:
            failures += 1
            health.failure(name, str(e))
            await asyncio.sleep(backoff_delay(failures))
            continue
        failures = 0
        health.success(name)
        if data != last:
            last = data
            on_data(data)
        # Consul never answers 0 (it rewrites 0 to 1, consul.md §0 trap 2); a server that does is not
        # "going backwards": block on 1 from then on.
        new_index = max(new_index, 1)
        if new_index < index:
            index = 0  # the index went backwards (e.g. a snapshot restore): one plain read, then block again
            continue
        changed = new_index != index
        index = new_index
        if not changed and time.monotonic() - started < QUICK:
            quick += 1
            if quick > QUICK_RETURNS:
                await asyncio.sleep(min(15.0, QUICK * 2**quick))
        else:
            quick = 0
