"""ExecSync: run a command in a running container and return its output and exit code."""

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.errors import InvalidArgument
from crishim.server.base import ServicerBase


class ContainerExecSyncMixin(ServicerBase):
    async def ExecSync(self, request: api_pb2.ExecSyncRequest,
                       context: Any) -> api_pb2.ExecSyncResponse:
        if not request.cmd:
            raise InvalidArgument("ExecSync: cmd is empty")
        result = await self.runtime.containers.exec_sync(request.container_id, list(request.cmd),
                                                         int(request.timeout))
        return api_pb2.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr,
                                        exit_code=result.exit_code)
