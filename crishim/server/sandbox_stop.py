"""StopPodSandbox."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class SandboxStopMixin(ServicerBase):
    async def StopPodSandbox(
        self, request: api_pb2.StopPodSandboxRequest, context: Any
    ) -> api_pb2.StopPodSandboxResponse:
        await self.runtime.sandboxes.stop(request.pod_sandbox_id)
        return api_pb2.StopPodSandboxResponse()
