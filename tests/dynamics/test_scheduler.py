"""Scheduler: priorities first, then round-robin across tenants, bounded queue."""

import asyncio

import pytest

from worldserve.common.errors import ResourceExhausted
from worldserve.dynamics.scheduler import Scheduler
from worldserve.dynamics.types import Priority


def test_round_robin_across_tenants():
    s: Scheduler[str] = Scheduler(max_batch_size=4, max_queue=100)
    for i in range(6):
        s.submit("noisy", f"n{i}")
    s.submit("quiet", "q0")
    s.submit("other", "o0")
    assert s.take_batch() == ["n0", "q0", "o0", "n1"]
    assert s.take_batch() == ["n2", "n3", "n4", "n5"]
    assert s.depth == 0 and s.take_batch() == []


def test_the_next_batch_starts_after_the_last_tenant_served():
    s: Scheduler[str] = Scheduler(max_batch_size=2, max_queue=100)
    for t in "abc":
        for i in range(2):
            s.submit(t, f"{t}{i}")
    assert s.take_batch() == ["a0", "b0"]
    assert s.take_batch() == ["c0", "a1"]
    assert s.take_batch() == ["b1", "c1"]


def test_interactive_before_bulk():
    s: Scheduler[str] = Scheduler(max_batch_size=3, max_queue=100)
    for i in range(3):
        s.submit("farm", f"b{i}", Priority.BULK)
    s.submit("player", "p0")
    assert s.take_batch() == ["p0", "b0", "b1"]
    assert s.take_batch() == ["b2"]


def test_bounded_queue_and_remove():
    depths = []
    s: Scheduler[str] = Scheduler(max_batch_size=8, max_queue=2, on_depth=depths.append)
    s.submit("a", "x")
    s.submit("a", "y")
    with pytest.raises(ResourceExhausted, match="2 steps waiting"):
        s.submit("b", "z")
    assert s.remove("a", "x") and not s.remove("a", "x")
    assert s.take_batch() == ["y"]
    assert depths == [1, 2, 1, 0]


async def test_wait_wakes_on_submit():
    s: Scheduler[str] = Scheduler(max_batch_size=8, max_queue=8)
    assert not await s.wait(0.01)
    waiter = asyncio.create_task(s.wait(5))
    await asyncio.sleep(0)
    s.submit("a", "x")
    assert await asyncio.wait_for(waiter, 1)
