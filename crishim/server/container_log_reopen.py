"""ReopenContainerLog: kubelet renamed the log file; the container's monitor starts a new one."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class ContainerLogReopenMixin(ServicerBase):
    async def ReopenContainerLog(self, request: api_pb2.ReopenContainerLogRequest,
                                 context: Any) -> api_pb2.ReopenContainerLogResponse:
        await self.runtime.containers.reopen_log(request.container_id)
        return api_pb2.ReopenContainerLogResponse()
