"""ListPodSandbox."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase
from crishim.server.sandbox_convert import to_pod_sandbox


class SandboxListMixin(ServicerBase):
    async def ListPodSandbox(
        self, request: api_pb2.ListPodSandboxRequest, context: Any
    ) -> api_pb2.ListPodSandboxResponse:
        wanted = request.filter
        items = []
        for sandbox in self.runtime.sandboxes.list():
            if wanted.id and not sandbox.id.startswith(wanted.id):
                continue
            pod = to_pod_sandbox(sandbox)
            if wanted.HasField("state") and pod.state != wanted.state.state:
                continue
            if any(sandbox.spec.labels.get(k) != v for k, v in wanted.label_selector.items()):
                continue
            items.append(pod)
        return api_pb2.ListPodSandboxResponse(items=items)
