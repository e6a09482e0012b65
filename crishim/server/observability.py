"""The stats, events, metrics and list-streaming RPC families, one module each."""

from crishim.server.container_events import ContainerEventsMixin
from crishim.server.container_stats import ContainerStatsMixin
from crishim.server.list_streaming import ListStreamingMixin
from crishim.server.metrics_rpc import MetricsMixin
from crishim.server.sandbox_stats import SandboxStatsMixin

ObservabilityMixins: tuple[type, ...] = (ContainerStatsMixin, SandboxStatsMixin, MetricsMixin,
                                         ContainerEventsMixin, ListStreamingMixin)
