"""ListContainers: filters by id prefix, state, pod sandbox id and labels."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase
from crishim.server.container_convert import filter_from, to_container


class ContainerListMixin(ServicerBase):
    async def ListContainers(self, request: api_pb2.ListContainersRequest,
                             context: Any) -> api_pb2.ListContainersResponse:
        flt = filter_from(request.filter) if request.HasField("filter") else None
        containers = self.runtime.containers.list_containers(flt)
        return api_pb2.ListContainersResponse(containers=[to_container(c) for c in containers])
