"""PodSandboxStatus."""

import time
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase
from crishim.server.sandbox_convert import to_status, verbose_info


class SandboxStatusMixin(ServicerBase):
    async def PodSandboxStatus(
        self, request: api_pb2.PodSandboxStatusRequest, context: Any
    ) -> api_pb2.PodSandboxStatusResponse:
        sandbox = self.runtime.sandboxes.require(request.pod_sandbox_id)
        response = api_pb2.PodSandboxStatusResponse(status=to_status(sandbox), timestamp=time.time_ns())
        if request.verbose:
            response.info.update(verbose_info(sandbox))
        return response
