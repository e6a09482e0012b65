"""The idle timeout of an established streaming connection (kubelet's streaming-connection-idle-timeout,
containerd's `stream_idle_timeout`): once no frame went either way for that long, the connection is
dropped and whatever it ran is ended, so abandoned sessions do not hold descriptors and processes forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def no_traffic_hook() -> None:
    """The default `on_traffic` of a transport nobody watches."""


class IdleWatch:
    """Calls `on_idle` once `timeout` seconds pass without a `touch()` (the transports call it per frame).

    One timer per connection, re-armed only when it fires, so a touch costs an assignment.
    """

    def __init__(self, timeout: float, on_idle: Callable[[], None]) -> None:
        self.timeout = timeout
        self.on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + timeout, self._check)

    def touch(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        deadline = self._last + self.timeout
        if self._loop.time() >= deadline:
            self.on_idle()
        else:
            self._timer = self._loop.call_at(deadline, self._check)

    def stop(self) -> None:
        self._timer.cancel()
