"""The metric families crishim exports, and the hooks the rest of the runtime calls to feed them.

One private registry (not prometheus_client's global one) so the endpoint shows crishim's metrics only and
tests can read exactly what the runtime recorded.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

import cni

REGISTRY = CollectorRegistry()

# RPCs range from sub-millisecond lookups to multi-minute pulls and pod creations.
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 240)
# A plugin call is a fork/exec: a few ms at best, up to the plugin timeout.
_CNI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_PULL_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

RPC_DURATION = Histogram(
    "crishim_rpc_duration_seconds", "Time spent serving CRI RPCs, by method and gRPC status code.",
    ["method", "code"], buckets=_RPC_BUCKETS, registry=REGISTRY)
RPC_ERRORS = Counter(
    "crishim_rpc_errors_total", "CRI RPCs that ended with a status other than OK.",
    ["method", "code"], registry=REGISTRY)
CNI_DURATION = Histogram(
    "crishim_cni_operation_duration_seconds",
    "Time one CNI plugin execution took, by network, plugin type and verb (ADD, DEL, CHECK, GC, STATUS).",
    ["network", "plugin_type", "verb"], buckets=_CNI_BUCKETS, registry=REGISTRY)
CNI_ERRORS = Counter(
    "crishim_cni_operation_errors_total", "CNI plugin executions that failed.",
    ["network", "plugin_type", "verb"], registry=REGISTRY)
PULL_DURATION = Histogram(
    "crishim_image_pull_duration_seconds", "Time taken by image pulls that succeeded.",
    buckets=_PULL_BUCKETS, registry=REGISTRY)
PULL_BYTES = Counter(
    "crishim_image_pull_bytes_total", "Bytes downloaded from registries by image pulls.",
    registry=REGISTRY)
RECOVERY_SECONDS = Gauge(
    "crishim_recovery_duration_seconds",
    "How long the last start-up took to recover the state an earlier process left.", registry=REGISTRY)


def observe_rpc(method: str, code: str, seconds: float) -> None:
    """Record one finished RPC; `code` is the gRPC status name ("OK", "NOT_FOUND", ...)."""
    RPC_DURATION.labels(method, code).observe(seconds)
    if code != "OK":
        RPC_ERRORS.labels(method, code).inc()


def observe_cni_call(call: cni.PluginCall) -> None:
    """Record one plugin execution as reported by the `cni` library's observer."""
    labels = (call.network, call.plugin_type, call.verb)
    CNI_DURATION.labels(*labels).observe(call.duration)
    if call.error is not None:
        CNI_ERRORS.labels(*labels).inc()


def observe_pull(seconds: float, size: int) -> None:
    """Record a successful pull: its duration and the bytes it downloaded (0 when all was cached)."""
    PULL_DURATION.observe(seconds)
    PULL_BYTES.inc(size)


@contextmanager
def observe_recovery() -> Iterator[None]:
    """Time the start-up recovery run inside this block."""
    start = time.perf_counter()
    try:
        yield
    finally:
        RECOVERY_SECONDS.set(time.perf_counter() - start)


StateSource = Callable[[], Iterable[str]]


class _StateCounts(Collector):
    """Counts of sandboxes and containers by state, computed at scrape time from the managers.

    Scrapes run on the event loop (see endpoint.py), so reading the managers' dicts cannot race with
    the handlers that change them.
    """

    def __init__(self) -> None:
        self.sources: dict[str, StateSource] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for objects, source in sorted(self.sources.items()):
            family = GaugeMetricFamily(f"crishim_{objects}", f"Number of {objects} crishim knows, by state.",
                                       labels=["state"])
            for state, count in sorted(Tally(source()).items()):
                family.add_metric([state], count)
            yield family


_STATE_COUNTS = _StateCounts()
REGISTRY.register(_STATE_COUNTS)


def track_states(objects: str, source: StateSource) -> None:
    """Export `crishim_<objects>{state=...}` ("sandboxes", "containers") from `source`, which yields one
    state per object."""
    _STATE_COUNTS.sources[objects] = source
