"""Latency samples, percentiles, and a bounded-concurrency driver shared by the floor and crishim runs."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

Summary = dict[str, float]


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: always one of the measured values, never an interpolation."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarise(seconds: Sequence[float]) -> Summary:
    """n, p50/p90/p99, mean and max in milliseconds."""
    if not seconds:
        return {"n": 0}
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "mean": round(sum(ms) / len(ms), 3),
        "max": round(max(ms), 3),
    }


async def drive(items: Sequence[T], concurrency: int, fn: Callable[[T], Awaitable[None]]) -> float:
    """Run `fn` over `items` with at most `concurrency` calls in flight; return the wall time in seconds."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await fn(item)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))
    return time.perf_counter() - started


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else 0.0


def combine(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge the raw rounds of one concurrency level into percentiles and rates.

    The floor and crishim run in alternating rounds so both meet the same background load: measured one
    after the other on a shared 2-core VM, their ratio moved by up to 0.3 between identical runs.
    """
    samples: dict[str, list[float]] = {}
    for one in rounds:
        for name, values in one["samples"].items():
            samples.setdefault(name, []).extend(values)
    count = sum(one["count"] for one in rounds)
    create = sum(one["create_wall_s"] for one in rounds)
    delete = sum(one["delete_wall_s"] for one in rounds)
    result: dict[str, Any] = {name: summarise(values) for name, values in samples.items()}
    result.update(create_wall_s=round(create, 3), delete_wall_s=round(delete, 3),
                  create_per_s=rate(count, create), pods_per_s=rate(count, create + delete))
    errors = [e for one in rounds for e in one.get("errors", [])]
    if any("errors" in one for one in rounds):
        result.update(errors=len(errors), error_samples=errors[:5])
    return result
