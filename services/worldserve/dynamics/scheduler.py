"""Scheduler: per-tenant fair queues, priorities, batch formation.

Work waits in one queue per (priority, tenant). A batch takes every waiting interactive item
before any bulk one, and within a priority goes round-robin across tenants, one item per tenant
per turn, so a tenant with a thousand queued steps gets no more of a batch than a tenant with one.
The next batch starts with the tenant after the last one served. ``max_queue`` bounds the items
waiting in one replica: beyond it ``submit`` raises RESOURCE_EXHAUSTED at once (no unbounded
memory, no unbounded wait).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Generic, TypeVar

from worldserve.common.errors import ResourceExhausted
from worldserve.dynamics.types import Priority

T = TypeVar("T")


class Scheduler(Generic[T]):
    def __init__(self, max_batch_size: int, max_queue: int, on_depth: Callable[[int], None] | None = None):
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._queues: dict[Priority, collections.OrderedDict[str, collections.deque[T]]] = {
            p: collections.OrderedDict() for p in Priority
        }
        self._depth = 0
        self._wake = asyncio.Event()
        self._on_depth = on_depth or (lambda n: None)

    @property
    def depth(self) -> int:
        """Items waiting."""
        return self._depth

    def submit(self, tenant: str, item: T, priority: Priority = Priority.INTERACTIVE) -> None:
        if self._depth >= self.max_queue:
            raise ResourceExhausted(f"dynamics queue is full ({self._depth} steps waiting); retry later")
        self._queues[priority].setdefault(tenant, collections.deque()).append(item)
        self._depth += 1
        self._on_depth(self._depth)
        self._wake.set()

    def remove(self, tenant: str, item: T) -> bool:
        """Withdraw a waiting item (its caller gave up); False if it already left the queue."""
        for queues in self._queues.values():
            q = queues.get(tenant)
            if q is not None and item in q:
                q.remove(item)
                if not q:
                    del queues[tenant]
                self._depth -= 1
                self._on_depth(self._depth)
                return True
        return False

    def take_batch(self) -> list[T]:
        """Up to ``max_batch_size`` items: priorities in order, round-robin across tenants."""
        batch: list[T] = []
        for priority in Priority:
            queues = self._queues[priority]
            while queues and len(batch) < self.max_batch_size:
                order = list(queues)
                served = 0
                for tenant in order:
                    q = queues[tenant]
                    batch.append(q.popleft())
                    served += 1
                    if not q:
                        del queues[tenant]
                    if len(batch) >= self.max_batch_size:
                        break
                # the next turn starts with the tenant after the last one served
                for tenant in order[:served]:
                    if tenant in queues:
                        queues.move_to_end(tenant)
        self._depth -= len(batch)
        self._on_depth(self._depth)
        return batch

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until something is queued (True) or ``timeout_s`` passed (False)."""
        if self._depth:
            return True
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=timeout_s)
        except asyncio.TimeoutError:
            return False
        return True
