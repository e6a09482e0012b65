"""RemoveContainer: a live container is killed first; unknown ids succeed."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase


class ContainerRemoveMixin(ServicerBase):
    async def RemoveContainer(self, request: api_pb2.RemoveContainerRequest,
                              context: Any) -> api_pb2.RemoveContainerResponse:
        await self.runtime.containers.remove(request.container_id)
        return api_pb2.RemoveContainerResponse()
