"""RemovePodSandbox."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class SandboxRemoveMixin(ServicerBase):
    async def RemovePodSandbox(
        self, request: api_pb2.RemovePodSandboxRequest, context: Any
    ) -> api_pb2.RemovePodSandboxResponse:
        await self.runtime.sandboxes.remove(request.pod_sandbox_id)
        return api_pb2.RemovePodSandboxResponse()
