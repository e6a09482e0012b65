"""Lifecycle events as the Evented PLEG consumes them (GetContainerEvents).

Events carry snapshots of the pod and its containers taken when the change happened, so a subscriber that
reads an event later still sees the state that event announced; with nobody subscribed (kubelet without
the Evented PLEG) no snapshot is taken, as deep copies are the costly part of an event. A sandbox's own
events use its id as the container id, as containerd and CRI-O do.
"""

from __future__ import annotations

import copy
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from crishim.container.model import Container
from crishim.events.bus import EventBus, Subscription
from crishim.sandbox.model import Sandbox


class EventType(enum.StrEnum):
    CREATED = "CREATED"
    STARTED = "STARTED"
    STOPPED = "STOPPED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class LifecycleEvent:
    type: EventType
    container_id: str
    sandbox_id: str
    created_at: int  # ns since the epoch
    sandbox: Sandbox | None  # None once the pod is gone
    containers: tuple[Container, ...] = field(default_factory=tuple)


# What the sandbox manager reports -> the events kubelet expects for it.
_SANDBOX_EVENTS = {
    "started": (EventType.CREATED, EventType.STARTED),
    "stopped": (EventType.STOPPED,),
    "deleted": (EventType.DELETED,),
}
_CONTAINER_EVENTS = {
    "created": EventType.CREATED,
    "started": EventType.STARTED,
    "stopped": EventType.STOPPED,
    "deleted": EventType.DELETED,
}


class LifecycleEvents:
    """Turns manager change hooks into events on one bus.

    `sandbox_lookup` and `containers_of` give the current pod and its containers; both run on the event
    loop inside the hook, so the snapshot matches the change being reported.
    """

    def __init__(self, sandbox_lookup: Callable[[str], Sandbox | None],
                 containers_of: Callable[[str], list[Container]] | None = None,
                 maxsize: int | None = None) -> None:
        self.bus: EventBus[LifecycleEvent] = EventBus(maxsize) if maxsize else EventBus()
        self._sandbox_lookup = sandbox_lookup
        self.containers_of = containers_of

    def subscribe(self) -> Subscription[LifecycleEvent]:
        return self.bus.subscribe()

    def _containers(self, sandbox_id: str) -> tuple[Container, ...]:
        if self.containers_of is None:
            return ()
        return tuple(copy.deepcopy(c) for c in self.containers_of(sandbox_id))

    def sandbox_changed(self, sandbox: Sandbox, change: str) -> None:
        """The SandboxManager.on_change hook: "started", "stopped" or "deleted"."""
        if not self.bus.subscribers:
            return
        gone = change == "deleted"
        snapshot = copy.deepcopy(sandbox)
        containers = () if gone else self._containers(sandbox.id)
        for kind in _SANDBOX_EVENTS[change]:
            self.bus.publish(LifecycleEvent(kind, sandbox.id, sandbox.id, time.time_ns(), snapshot,
                                            containers))

    def container_changed(self, container: Container, change: str) -> None:
        """The container manager's hook: "created", "started", "stopped" or "deleted"."""
        if not self.bus.subscribers:
            return
        sandbox = self._sandbox_lookup(container.sandbox_id)
        containers = self._containers(container.sandbox_id)
        if change == "deleted":
            containers = tuple(c for c in containers if c.id != container.id)
        elif all(c.id != container.id for c in containers):
            containers = (*containers, copy.deepcopy(container))
        self.bus.publish(LifecycleEvent(_CONTAINER_EVENTS[change], container.id, container.sandbox_id,
                                        time.time_ns(), copy.deepcopy(sandbox) if sandbox else None,
                                        containers))
