"""A publish/subscribe bus whose publishers never wait.

Each subscriber gets its own bounded queue. Publishing only appends to those queues; a subscriber whose
queue is full has fallen too far behind to be given a consistent picture, so it is cut off: its stream
ends with SubscriberLagged, and the client (kubelet's Evented PLEG) reconnects and relists.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_QUEUE = 1000


class SubscriberLagged(Exception):
    """The subscriber did not keep up and missed events."""


class Subscription(Generic[T]):
    """One subscriber's view: an async iterator of the events published since it subscribed."""

    def __init__(self, bus: EventBus[T], maxsize: int) -> None:
        self._bus = bus
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.lagged = False

    @property
    def pending(self) -> int:
        return len(self._items)

    def _offer(self, item: T) -> bool:
        """Queue `item`; False when the queue is full, which marks the subscriber as lagged."""
        if len(self._items) >= self.maxsize:
            self.lagged = True
            self._wakeup.set()
            return False
        self._items.append(item)
        self._wakeup.set()
        return True

    def close(self) -> None:
        """End the stream after what is already queued; idempotent."""
        self._bus._unsubscribe(self)
        self._closed = True
        self._wakeup.set()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        try:
            while True:
                if self._items:
                    yield self._items.popleft()
                elif self.lagged:
                    raise SubscriberLagged(
                        f"event subscriber fell {self.maxsize} events behind and was dropped; "
                        "subscribe again and relist")
                elif self._closed:
                    return
                else:
                    self._wakeup.clear()
                    await self._wakeup.wait()
        finally:
            self.close()


class EventBus(Generic[T]):
    def __init__(self, maxsize: int = DEFAULT_QUEUE) -> None:
        self.maxsize = maxsize
        self._subscribers: list[Subscription[T]] = []

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, maxsize: int | None = None) -> Subscription[T]:
        sub = Subscription(self, maxsize or self.maxsize)
        self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription[T]) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    def publish(self, item: T) -> None:
        """Hand `item` to every subscriber without waiting; laggards are dropped."""
        for sub in list(self._subscribers):
            if not sub._offer(item):
                log.warning("dropping an event subscriber that fell behind",
                            extra={"queued": sub.pending})
                self._unsubscribe(sub)
