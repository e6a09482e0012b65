"""The streaming forms of the list RPCs: the same answer as the unary list, sent in pages.

Each reuses its unary sibling (same filters, same conversion), so the two forms cannot drift apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase

# Items per streamed message: far below gRPC's 4 MiB default even for verbose pods.
PAGE_SIZE = 100

T = TypeVar("T")


def pages(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[i:i + PAGE_SIZE] for i in range(0, len(items), PAGE_SIZE)]


class ListStreamingMixin(ServicerBase):
    ListPodSandbox: Callable[[api_pb2.ListPodSandboxRequest, Any],
                             Awaitable[api_pb2.ListPodSandboxResponse]]
    ListContainers: Callable[[api_pb2.ListContainersRequest, Any],
                             Awaitable[api_pb2.ListContainersResponse]]
    ListContainerStats: Callable[[api_pb2.ListContainerStatsRequest, Any],
                                 Awaitable[api_pb2.ListContainerStatsResponse]]
    ListPodSandboxStats: Callable[[api_pb2.ListPodSandboxStatsRequest, Any],
                                  Awaitable[api_pb2.ListPodSandboxStatsResponse]]
    ListPodSandboxMetrics: Callable[[api_pb2.ListPodSandboxMetricsRequest, Any],
                                    Awaitable[api_pb2.ListPodSandboxMetricsResponse]]

    async def StreamPodSandboxes(self, request: api_pb2.StreamPodSandboxesRequest,
                                 context: Any) -> AsyncIterator[api_pb2.StreamPodSandboxesResponse]:
        listed = await self.ListPodSandbox(api_pb2.ListPodSandboxRequest(filter=request.filter), context)
        for page in pages(listed.items):
            yield api_pb2.StreamPodSandboxesResponse(pod_sandboxes=page)

    async def StreamContainers(self, request: api_pb2.StreamContainersRequest,
                               context: Any) -> AsyncIterator[api_pb2.StreamContainersResponse]:
        listed = await self.ListContainers(api_pb2.ListContainersRequest(filter=request.filter), context)
        for page in pages(listed.containers):
            yield api_pb2.StreamContainersResponse(containers=page)

    async def StreamContainerStats(self, request: api_pb2.StreamContainerStatsRequest,
                                   context: Any) -> AsyncIterator[api_pb2.StreamContainerStatsResponse]:
        listed = await self.ListContainerStats(
            api_pb2.ListContainerStatsRequest(filter=request.filter), context)
        for page in pages(listed.stats):
            yield api_pb2.StreamContainerStatsResponse(container_stats=page)

    async def StreamPodSandboxStats(self, request: api_pb2.StreamPodSandboxStatsRequest,
                                    context: Any) -> AsyncIterator[api_pb2.StreamPodSandboxStatsResponse]:
        listed = await self.ListPodSandboxStats(
            api_pb2.ListPodSandboxStatsRequest(filter=request.filter), context)
        for page in pages(listed.stats):
            yield api_pb2.StreamPodSandboxStatsResponse(pod_sandbox_stats=page)

    async def StreamPodSandboxMetrics(
        self, request: api_pb2.StreamPodSandboxMetricsRequest, context: Any
    ) -> AsyncIterator[api_pb2.StreamPodSandboxMetricsResponse]:
        listed = await self.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest(), context)
        for page in pages(listed.pod_metrics):
            yield api_pb2.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=page)
