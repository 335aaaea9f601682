"""Scheduler: a deadline queue for interactive steps, per-tenant fair queues for the rest.

Interactive items (Play, Steps with a frame deadline) wait in one queue ordered by deadline
(earliest first, then arrival). Normal and bulk items wait in one queue per (priority, tenant). A
batch takes interactive items first, then normal, then bulk; within normal and bulk it goes
round-robin across tenants, one item per tenant per turn, so a tenant with a thousand queued steps
gets no more of a batch than a tenant with one. The next batch starts with the tenant after the
last one served. ``take_batch(limit)`` lets the engine keep batches short while steps someone
waits on (interactive or normal) are about: a step arriving during a batch waits for it to end. ``max_queue`` bounds the
items waiting in one replica: beyond it ``submit`` raises RESOURCE_EXHAUSTED at once (no
unbounded memory, no unbounded wait).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from worldserve.common.errors import ResourceExhausted
from worldserve.dynamics.engine.types import Priority

T = TypeVar("T")


QUEUE_FULL_RETRY_S = 0.5  # the RetryInfo of a full queue's refusal


class Scheduler(Generic[T]):
    def __init__(self, max_batch_size: int, max_queue: int, on_depth: Callable[[int], None] | None = None):
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._urgent: list[tuple[float, int, str, T]] = []  # heap: (deadline, arrival, tenant, item)
        self._seq = itertools.count()
        self._queues: dict[Priority, collections.OrderedDict[str, collections.deque[T]]] = {
            p: collections.OrderedDict() for p in Priority if p != Priority.INTERACTIVE
        }
        self._depth = 0
        self._wake = asyncio.Event()
        self._on_depth = on_depth or (lambda n: None)
        self.last_waiting = float("-inf")
        """``time.monotonic()`` of the last submit of a step someone waits on (interactive or
        normal: not bulk)."""

    @property
    def depth(self) -> int:
        """Items waiting."""
        return self._depth

    def submit(self, tenant: str, item: T, priority: Priority = Priority.NORMAL, deadline: float | None = None) -> None:
        """Queue ``item``; an interactive one is ordered by ``deadline`` (any clock, one per
        scheduler; None: after every item that has one)."""
        if self._depth >= self.max_queue:
            raise ResourceExhausted(
                f"dynamics queue is full ({self._depth} steps waiting); retry later", retry_after_s=QUEUE_FULL_RETRY_S
            )
        if priority == Priority.INTERACTIVE:
            heapq.heappush(
                self._urgent, (float("inf") if deadline is None else deadline, next(self._seq), tenant, item)
            )
        else:
            self._queues[priority].setdefault(tenant, collections.deque()).append(item)
        if priority != Priority.BULK:
            self.last_waiting = time.monotonic()
        self._depth += 1
        self._on_depth(self._depth)
        self._wake.set()

    def remove(self, tenant: str, item: T) -> bool:
        """Withdraw a waiting item (its caller gave up); False if it already left the queue."""
        for k, entry in enumerate(self._urgent):
            if entry[3] is item:
                self._urgent.pop(k)
                heapq.heapify(self._urgent)
                self._depth -= 1
                self._on_depth(self._depth)
                return True
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

    def take_batch(self, limit: int | None = None) -> list[T]:
        """Up to ``limit`` (at most ``max_batch_size``) items: interactive ones by deadline, then
        normal, then bulk, each round-robin across tenants."""
        cap = self.max_batch_size if limit is None else max(1, min(limit, self.max_batch_size))
        batch: list[T] = []
        while self._urgent and len(batch) < cap:
            batch.append(heapq.heappop(self._urgent)[3])
        for queues in self._queues.values():
            while queues and len(batch) < cap:
                order = list(queues)
                served = 0
                for tenant in order:
                    q = queues[tenant]
                    batch.append(q.popleft())
                    served += 1
                    if not q:
                        del queues[tenant]
                    if len(batch) >= cap:
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
