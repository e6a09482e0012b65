"""StopContainer: stop signal, `timeout` seconds, SIGKILL; idempotent, unknown ids succeed (CRI)."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.errors import InvalidArgument
from crishim.server.base import ServicerBase


class ContainerStopMixin(ServicerBase):
    async def StopContainer(self, request: api_pb2.StopContainerRequest,
                            context: Any) -> api_pb2.StopContainerResponse:
        if request.timeout < 0:
            raise InvalidArgument(f"StopContainer: negative timeout {request.timeout}")
        await self.runtime.containers.stop(request.container_id, float(request.timeout))
        return api_pb2.StopContainerResponse()
