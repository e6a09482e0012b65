"""ContainerStatus: state, times, exit code and reason as conmon recorded them."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase
from crishim.server.container_convert import to_status, verbose_info


class ContainerStatusMixin(ServicerBase):
    async def ContainerStatus(self, request: api_pb2.ContainerStatusRequest,
                              context: Any) -> api_pb2.ContainerStatusResponse:
        container = await self.runtime.containers.status(request.container_id)
        image_ref = self.runtime.images.digested_ref(container.image_id, container.spec.image)
        response = api_pb2.ContainerStatusResponse(status=to_status(container, image_ref))
        if request.verbose:
            response.info.update(verbose_info(container))
        return response
