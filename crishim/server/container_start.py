"""StartContainer: only a CREATED container starts; unknown ids are NOT_FOUND."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class ContainerStartMixin(ServicerBase):
    async def StartContainer(self, request: api_pb2.StartContainerRequest,
                             context: Any) -> api_pb2.StartContainerResponse:
        await self.runtime.containers.start(request.container_id)
        return api_pb2.StartContainerResponse()
