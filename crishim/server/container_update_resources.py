"""UpdateContainerResources: new cgroup limits for a created or running container."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase
from crishim.server.container_convert import resources_from


class ContainerUpdateResourcesMixin(ServicerBase):
    async def UpdateContainerResources(self, request: api_pb2.UpdateContainerResourcesRequest,
                                       context: Any) -> api_pb2.UpdateContainerResourcesResponse:
        await self.runtime.containers.update_resources(request.container_id,
                                                       resources_from(request.linux, "linux"))
        return api_pb2.UpdateContainerResourcesResponse()
