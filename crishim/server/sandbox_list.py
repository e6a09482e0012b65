"""ListPodSandbox."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase
from crishim.server.sandbox_convert import PodSandboxCache

_cache = PodSandboxCache()


class SandboxListMixin(ServicerBase):
    async def ListPodSandbox(
        self, request: api_pb2.ListPodSandboxRequest, context: Any
    ) -> api_pb2.ListPodSandboxResponse:
        wanted = request.filter
        state = wanted.state.state if wanted.HasField("state") else None
        selector = dict(wanted.label_selector)
        sandboxes = self.runtime.sandboxes.list()
        items = []
        for sandbox in sandboxes:
            if wanted.id and not sandbox.id.startswith(wanted.id):
                continue
            pod = _cache.get(sandbox)
            if state is not None and pod.state != state:
                continue
            if selector and any(sandbox.spec.labels.get(k) != v for k, v in selector.items()):
                continue
            items.append(pod)
        _cache.prune({s.id for s in sandboxes})
        response = api_pb2.ListPodSandboxResponse()
        response.items.extend(items)
        return response
