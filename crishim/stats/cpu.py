"""usage_nano_cores: the CPU rate between the previous sample of an object and the current one.

kubelet wants a rate, cgroups give a cumulative counter; like containerd we remember the last sample of
every container and pod and derive the rate from it, so the first sample of an object has no rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Samples of objects not asked about for this long are forgotten (removed containers).
FORGET_AFTER_NS = 10 * 60 * 1_000_000_000


@dataclass
class CpuRates:
    _last: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (timestamp ns, usage ns)

    def update(self, key: str, timestamp: int, usage_ns: int) -> int | None:
        """Record a sample; the rate in nano-cores since the previous one, None without one."""
        previous = self._last.get(key)
        self._last[key] = (timestamp, usage_ns)
        self._forget_before(timestamp - FORGET_AFTER_NS)
        if previous is None:
            return None
        then, used = previous
        if timestamp <= then or usage_ns < used:  # same instant, or the cgroup was recreated
            return None
        return (usage_ns - used) * 1_000_000_000 // (timestamp - then)

    def _forget_before(self, cutoff: int) -> None:
        stale = [key for key, (ts, _) in self._last.items() if ts < cutoff]
        for key in stale:
            del self._last[key]
