"""RunPodSandbox."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.errors import InvalidArgument
from crishim.server.base import ServicerBase
from crishim.server.request_check import reject_nul
from crishim.server.sandbox_convert import spec_from_request


class SandboxRunMixin(ServicerBase):
    async def RunPodSandbox(
        self, request: api_pb2.RunPodSandboxRequest, context: Any
    ) -> api_pb2.RunPodSandboxResponse:
        if not request.HasField("config") or not request.config.HasField("metadata"):
            raise InvalidArgument("config.metadata is required (name, namespace, uid)")
        reject_nul(request, "")
        spec, blob = spec_from_request(request)
        sandbox_id = await self.runtime.sandboxes.run(spec, blob)
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)
