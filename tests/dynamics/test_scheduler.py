"""Scheduler: interactive steps by deadline, then normal, then bulk, round-robin across tenants;
bounded queue; batches cut to a limit."""

import asyncio

import pytest

from worldserve.common.errors import ResourceExhausted
from worldserve.dynamics.engine.scheduler import Scheduler
from worldserve.dynamics.engine.types import Priority


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


def test_interactive_before_normal_before_bulk():
    s: Scheduler[str] = Scheduler(max_batch_size=3, max_queue=100)
    for i in range(3):
        s.submit("farm", f"b{i}", Priority.BULK)
    s.submit("agent", "n0")
    s.submit("player", "p0", Priority.INTERACTIVE, deadline=5.0)
    assert s.take_batch() == ["p0", "n0", "b0"]
    assert s.take_batch() == ["b1", "b2"]


def test_interactive_steps_go_earliest_deadline_first_whatever_the_tenant():
    s: Scheduler[str] = Scheduler(max_batch_size=8, max_queue=100)
    s.submit("noisy", "late", Priority.INTERACTIVE, deadline=9.0)
    s.submit("noisy", "none", Priority.INTERACTIVE)  # no deadline: after every one that has one
    s.submit("quiet", "soon", Priority.INTERACTIVE, deadline=2.0)
    s.submit("noisy", "soon-too", Priority.INTERACTIVE, deadline=2.0)  # a tie: arrival order
    assert s.take_batch() == ["soon", "soon-too", "late", "none"]


def test_a_limit_cuts_the_batch_and_interactive_items_can_be_withdrawn():
    s: Scheduler[str] = Scheduler(max_batch_size=8, max_queue=100)
    for i in range(4):
        s.submit("farm", f"n{i}")
    s.submit("p", "p0", Priority.INTERACTIVE, deadline=1.0)
    s.submit("p", "p1", Priority.INTERACTIVE, deadline=2.0)
    assert s.remove("p", "p0") and not s.remove("p", "p0")
    assert s.take_batch(limit=2) == ["p1", "n0"]
    assert s.take_batch(limit=0) == ["n1"]  # at least one
    assert s.take_batch(limit=100) == ["n2", "n3"] and s.depth == 0


def test_bounded_queue_and_remove():
    depths = []
    s: Scheduler[str] = Scheduler(max_batch_size=8, max_queue=2, on_depth=depths.append)
    s.submit("a", "x")
    s.submit("a", "y")
    with pytest.raises(ResourceExhausted, match="2 steps waiting") as e:
        s.submit("b", "z")
    assert e.value.retry_after_s and e.value.retry_after_s > 0  # RetryInfo: nothing was applied
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


def test_only_steps_someone_waits_on_mark_the_scheduler_busy():
    s: Scheduler[str] = Scheduler(max_batch_size=8, max_queue=100)
    s.submit("farm", "b0", Priority.BULK)
    assert s.last_waiting == float("-inf")  # bulk alone: the engine keeps full batches
    s.submit("agent", "n0")
    assert s.last_waiting > 0
