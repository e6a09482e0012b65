"""crishim's own Prometheus metrics and the `/metrics` endpoint."""

from crishim.telemetry.endpoint import MetricsServer, parse_address
from crishim.telemetry.metrics import (
    REGISTRY,
    observe_cni_call,
    observe_pull,
    observe_recovery,
    observe_rpc,
    track_states,
)

__all__ = [
    "REGISTRY",
    "MetricsServer",
    "observe_cni_call",
    "observe_pull",
    "observe_recovery",
    "observe_rpc",
    "parse_address",
    "track_states",
]
