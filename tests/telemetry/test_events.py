"""The event bus: every subscriber sees the same events in order, and a slow one never holds anyone up."""

from __future__ import annotations

import asyncio
import copy

import pytest

from crishim.container.model import Container, ContainerSpec, ContainerState
from crishim.events import EventBus, EventType, LifecycleEvents, SubscriberLagged, Subscription
from crishim.sandbox.model import Sandbox, SandboxSpec, SandboxState


async def _take(sub: Subscription[int], n: int) -> list[int]:
    got: list[int] = []
    async for item in sub:
        got.append(item)
        if len(got) == n:
            break
    sub.close()
    return got


async def test_two_subscribers_see_the_same_events_in_order() -> None:
    bus: EventBus[int] = EventBus()
    first, second = bus.subscribe(), bus.subscribe()
    readers = [asyncio.ensure_future(_take(first, 50)), asyncio.ensure_future(_take(second, 50))]
    for i in range(50):
        bus.publish(i)
        if i % 7 == 0:
            await asyncio.sleep(0)  # let the readers interleave with the publisher
    assert await asyncio.gather(*readers) == [list(range(50)), list(range(50))]
    assert bus.subscribers == 0


async def test_slow_subscriber_is_dropped_without_blocking_the_publisher() -> None:
    bus: EventBus[int] = EventBus(maxsize=10)
    fast, slow = bus.subscribe(), bus.subscribe()
    reader = asyncio.ensure_future(_take(fast, 100))
    for i in range(100):
        bus.publish(i)  # never awaits: a stuck subscriber cannot stall this loop
        await asyncio.sleep(0)
    assert await reader == list(range(100))
    assert slow.lagged and bus.subscribers == 0
    got = []
    with pytest.raises(SubscriberLagged, match="subscribe again"):
        async for item in slow:
            got.append(item)
    assert got == list(range(10))  # what it had queued before falling behind


async def test_closing_ends_the_stream() -> None:
    bus: EventBus[int] = EventBus()
    sub = bus.subscribe()
    reader = asyncio.ensure_future(_take(sub, 5))
    bus.publish(1)
    await asyncio.sleep(0)
    sub.close()
    assert await reader == [1]
    bus.publish(2)
    assert bus.subscribers == 0


def _sandbox() -> Sandbox:
    return Sandbox(id="s" * 64, spec=SandboxSpec(name="web", namespace="default", uid="u1"),
                   state=SandboxState.READY, created_at=1, dir="/nonexistent")


def _container(sandbox_id: str) -> Container:
    return Container(id="c" * 64, sandbox_id=sandbox_id, spec=ContainerSpec(name="app"), image_id="sha256:x",
                     runtime_handler="runc", dir="/nonexistent", log_path="", created_at=2)


async def test_lifecycle_events_for_a_pod_and_a_container() -> None:
    sandbox = _sandbox()
    containers: dict[str, Container] = {}
    events = LifecycleEvents(lambda sid: sandbox if sid == sandbox.id else None,
                             lambda sid: [c for c in containers.values() if c.sandbox_id == sid])
    subs = [events.subscribe(), events.subscribe()]

    events.sandbox_changed(sandbox, "started")
    c = _container(sandbox.id)
    containers[c.id] = c
    events.container_changed(c, "created")
    c.state = ContainerState.RUNNING
    events.container_changed(c, "started")
    c.state = ContainerState.EXITED
    events.container_changed(c, "stopped")
    sandbox.state = SandboxState.NOTREADY
    events.sandbox_changed(sandbox, "stopped")
    del containers[c.id]
    events.container_changed(c, "deleted")
    events.sandbox_changed(sandbox, "deleted")
    for sub in subs:
        sub.close()

    seen = [[(e.container_id[0], e.type) async for e in sub] for sub in subs]
    assert seen[0] == seen[1] == [
        ("s", EventType.CREATED), ("s", EventType.STARTED),
        ("c", EventType.CREATED), ("c", EventType.STARTED), ("c", EventType.STOPPED),
        ("s", EventType.STOPPED), ("c", EventType.DELETED), ("s", EventType.DELETED)]


async def test_events_carry_snapshots_taken_at_the_change() -> None:
    sandbox = _sandbox()
    c = _container(sandbox.id)
    events = LifecycleEvents(lambda sid: sandbox, lambda sid: [c])
    sub = events.subscribe()
    events.container_changed(c, "created")
    c.state = ContainerState.RUNNING
    events.container_changed(c, "started")
    sub.close()
    got = [e async for e in sub]
    assert [e.containers[0].state for e in got] == [ContainerState.CREATED, ContainerState.RUNNING]
    assert got[0].sandbox is not None and got[0].sandbox == copy.deepcopy(sandbox)
    assert got[0].sandbox is not sandbox
