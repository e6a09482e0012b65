"""PortForward: validate, then hand out a single-use streaming URL into the pod's network namespace."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class SandboxPortForwardMixin(ServicerBase):
    async def PortForward(
        self, request: api_pb2.PortForwardRequest, context: Any
    ) -> api_pb2.PortForwardResponse:
        url = self.runtime.streaming.port_forward_url(request.pod_sandbox_id, list(request.port))
        return api_pb2.PortForwardResponse(url=url)
